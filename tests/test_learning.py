"""The model learns, and every label stays with its image: tests that fail when training silently stops working.

``test_a_tiny_fit_learns_the_tiny_dataset`` reaches a validation accuracy of 1.0 here (0.79 after 4 epochs, 1.0
after 5 and 6); with the optimizer's step made a no-op (``torch.optim.AdamW.step = lambda self, closure=None:
closure()``) the same fit stays at 0.05 after 6 epochs.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer

from support import write_dataset
from vit_lightning.training.datamodule import MNISTDataModule
from vit_lightning.training.module import ViTClassifier
from vit_lightning.training.optimizers import MuonAdamW


def decode(images: torch.Tensor) -> torch.Tensor:
    """The class of each image of support.make_split, read from its pixels: the 7x7 cell of the 4x4 grid that holds
    the bright square (cells 0-9)."""
    cells = images.float().reshape(len(images), 4, 7, 4, 7).mean(dim=(2, 4)).flatten(1)  # [B, 16]
    return cells[:, :10].argmax(dim=1)


@pytest.mark.parametrize("optimizer, lr", [(torch.optim.AdamW, 1e-2), (MuonAdamW, 3e-2)])
def test_a_tiny_fit_learns_the_tiny_dataset(tmp_path, optimizer, lr):
    """A tiny model through the real Trainer, LightningModule (loss, optimizer and its parameter groups) and data
    module reaches a high validation accuracy on learnable data: chance is 0.1. (MuonAdamW: the width-16 blocks'
    matrices take Muon.)"""
    data_root = write_dataset(tmp_path / "data", n_train=340, n_test=10)
    torch.manual_seed(0)
    model = ViTClassifier(patch_size=7, dim=16, depth=1, heads=2, mlp_ratio=2.0, tokenizer="patch", pool="mean",
                          optimizer=functools.partial(optimizer, lr=lr, weight_decay=0.0),
                          lr_schedule="constant")
    data = MNISTDataModule(root=str(data_root), download=False, val_size=100, batch_size=20, augment=False)
    trainer = Trainer(accelerator="cpu", max_epochs=6, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      default_root_dir=tmp_path)
    trainer.fit(model, data)
    assert trainer.callback_metrics["val/acc"].item() >= 0.9


def test_labels_stay_with_their_images_through_split_shuffle_and_shard(tmp_path):
    data_root = write_dataset(tmp_path / "data", n_train=203, n_test=37)
    data = MNISTDataModule(root=str(data_root), download=False, val_size=41, batch_size=20, eval_batch_size=8)
    data.setup("fit")
    data.setup("test")
    for split in ("train", "val", "test"):  # the datasets themselves, after the seeded split
        images, labels = data.datasets[split].tensors
        assert torch.equal(decode(images), labels), split
    for world_size in (1, 2):
        seen = []
        for rank in range(world_size):
            data.trainer = SimpleNamespace(world_size=world_size, global_rank=rank, current_epoch=0, training=True)
            for epoch in (0, 1):
                loader = data.train_dataloader()
                loader.sampler.set_epoch(epoch)
                batches = list(loader)
                for images, labels in batches:
                    assert torch.equal(decode(images), labels)
                if epoch == 0:
                    seen += [bytes(image.numpy()) for images, _ in batches for image in images]
            for loader in (data.val_dataloader(), data.test_dataloader()):
                for images, labels in loader:
                    assert torch.equal(decode(images), labels)
        assert len(set(seen)) == len(seen) == 162 // (20 * world_size) * 20 * world_size  # disjoint shards
    data.trainer = None


@pytest.mark.parametrize("world_size", [1, 2])
def test_predict_indices_name_their_own_files(tmp_path, world_size):
    """The predict set's targets are the images' positions, which name their files (training.predictions)."""
    from PIL import Image

    from support import make_split

    images, labels = make_split(5, seed=3)
    folder = tmp_path / "images"
    folder.mkdir()
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"label{labels[index]}-{index}.png")
    data = MNISTDataModule(predict_path=str(folder), auto_invert=False)
    data.setup("predict")
    for rank in range(world_size):
        data.trainer = SimpleNamespace(world_size=world_size, global_rank=rank, current_epoch=0, training=False)
        for batch, indices in data.predict_dataloader():
            for image, index in zip(batch, indices.tolist()):
                assert data.predict_names[index].startswith(f"label{int(decode(image[None]))}-")
