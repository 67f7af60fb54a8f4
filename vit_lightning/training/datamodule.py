"""The data module: an MNIST-family dataset held in memory as uint8 tensors, sharded between processes, normalised and
augmented per batch on the device. The file format is in :mod:`vit_lightning.data.idx`, the dataset facts in
:mod:`vit_lightning.data.datasets`, outside images for ``predict`` in :mod:`vit_lightning.data.preprocess`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vit_lightning.data.augment import RandomAffine, RandomErasing
from vit_lightning.data.datasets import DATASETS, DatasetInfo, normalize, unit_range
from vit_lightning.data.idx import SPLIT_FILES, find_idx_files, load_split
from vit_lightning.data.memory import InMemoryImages, batch_as_is, split
from vit_lightning.data.preprocess import load_images, printable
from vit_lightning.errors import UserError
from vit_lightning.training.compat import UnrepeatedDistributedSampler


def installed_hint() -> str:
    """``"; ..."`` naming the ready command for each dataset an operating-system package installed (Debian's
    Fashion-MNIST), or ``""``."""
    ready = [f"{name} is installed in {info.system_folder}: python train.py fit --data.dataset {name} "
             f"--data.root {info.system_folder}" for name, info in DATASETS.items()
             if info.system_folder and find_idx_files(Path(info.system_folder), name) is not None]
    return "".join(f"; {line}" for line in ready)


def shard_sampler(dataset: Dataset, world_size: int, rank: int, train: bool, seed: int = 0) -> DistributedSampler:
    """This process's disjoint shard of ``dataset``.

    Training reshuffles every epoch from ``seed`` (Lightning calls ``set_epoch``) and drops the last
    ``len % world_size`` samples, so all ranks take the same number of steps. Evaluation keeps every sample
    exactly once (Lightning's ``UnrepeatedDistributedSampler``: shards differ in length by at most one, nothing
    is padded), so metrics synced across ranks are exact.
    """
    if train:
        return DistributedSampler(dataset, world_size, rank, shuffle=True, seed=seed, drop_last=True)
    return UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)


class MNISTDataModule(LightningDataModule):
    """MNIST, Fashion-MNIST or KMNIST from IDX files, kept in memory as uint8 tensors.

    Batches leave the loader as uint8; ``on_after_batch_transfer`` converts, augments (training only) and
    normalises them on the device the model runs on. ``batch_size`` is the global batch: each of N processes
    gets ``batch_size / N`` per step, so 1 and N devices train with the same steps and learning rate.
    ``hflip=None`` flips half the training images of a mirror-symmetric dataset (Fashion-MNIST), none of the
    digits or characters. ``erasing`` P puts a rectangle of noise on that share of the training images, after the
    affine warp (random erasing, :class:`~vit_lightning.data.augment.RandomErasing`). ``auto_invert`` inverts
    predict images with a light background (dark strokes on paper) to MNIST's light strokes on black; ``framing``
    crops, scales and centres them as the dataset's images were (:mod:`vit_lightning.data.preprocess`).
    ``train_subset`` N trains on the first N images of the training file only (a small-data run); validation then
    draws its ``val_size`` images from the rest of the file. ``dataset=None`` is MNIST; the CLI makes it the
    checkpoint's with ``--ckpt_path``. Predict reads no dataset files, only its images.
    """

    def __init__(
        self,
        dataset: Literal["mnist", "fashion_mnist", "kmnist"] | None = None,
        root: str = "data",
        download: bool = True,
        val_size: int | float = 5000,
        train_subset: int | None = None,
        batch_size: int = 256,
        eval_batch_size: int = 1024,
        num_workers: int = 0,
        augment: bool = True,
        degrees: float = 10.0,
        translate: float = 0.1,
        scale: tuple[float, float] = (0.9, 1.1),
        hflip: float | None = None,
        erasing: float = 0.0,
        seed: int = 42,
        predict_path: str | None = None,
        auto_invert: bool = True,
        framing: bool = True,  # not "frame": Lightning's save_hyperparameters drops an argument of that name
    ):
        super().__init__()
        dataset = dataset or "mnist"
        if dataset not in DATASETS:
            raise UserError(f"unknown --data.dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
        for name, value, least in (("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                                   ("num_workers", num_workers, 0)):
            if value < least:
                raise UserError(f"--data.{name} must be at least {least}, got {value}")
        if not 0 <= seed < 2**32:
            raise UserError(f"--data.seed must be from 0 to {2**32 - 1} (as --seed_everything), got {seed}")
        self.save_hyperparameters(logger=False)  # loggers get the whole CLI config (tracking.RunConfig)
        self.info: DatasetInfo = DATASETS[dataset]  # the CLI gives it a checkpoint's recorded facts
        self.root = Path(root).expanduser()
        if hflip is None:  # flip clothes, not digits or characters
            hflip = 0.5 if self.info.mirror_symmetric else 0.0
        self.augmentation = RandomAffine(degrees, translate, scale, hflip, seed=seed) if augment else None
        self.erasing = RandomErasing(erasing, self.augmentation.generator) if augment else None
        self.predict_names: list[str] = []
        self.datasets: dict[str, InMemoryImages] = {}

    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.classes

    @property
    def num_classes(self) -> int:
        return len(self.info.classes)

    @property
    def image_size(self) -> int:
        return self.info.image_size

    @property
    def in_channels(self) -> int:
        return self.info.in_channels

    def prepare_data(self) -> None:
        if self.trainer is not None and self.trainer.predicting:  # outside images only
            return
        if find_idx_files(self.root, self.hparams.dataset) is not None:
            return
        root = self.root.absolute()
        location = f"{root} or {root / self.info.folder / 'raw'}"
        expected = ", ".join(name for pair in SPLIT_FILES.values() for name in pair)
        if not self.hparams.download:
            raise UserError(f"no {self.hparams.dataset} data in {location} (expected {expected}, plain or .gz); "
                            f"put the files there or pass --data.root DIR (or --data.download true){installed_hint()}")
        import torchvision.datasets

        created = not self.root.exists()
        try:
            getattr(torchvision.datasets, self.info.folder)(str(self.root), train=True, download=True)
        except Exception as e:  # noqa: BLE001 - any download failure becomes the same one-line error
            if created:
                shutil.rmtree(self.root, ignore_errors=True)
            reason = str(e).strip().splitlines()[-1][:120] if str(e).strip() else type(e).__name__
            raise UserError(
                f"no {self.hparams.dataset} data in {location} (expected {expected}, plain or .gz) and the download "
                f"failed ({reason}); put the files there or pass --data.root DIR{installed_hint()}"
            ) from None

    def setup(self, stage: str) -> None:
        if stage == "predict":
            if self.hparams.predict_path is None:
                raise UserError("predict needs images: pass --data.predict_path IMAGE_OR_FOLDER")
            images, self.predict_names, failures = load_images(
                Path(self.hparams.predict_path), self.image_size, self.hparams.auto_invert,
                self.info.framing if self.hparams.framing else None)
            for failure in failures:
                print(f"skipped {printable(failure)}")
            self.datasets["predict"] = InMemoryImages(images, torch.arange(len(images)))  # targets: Predictions.index
            return
        files = find_idx_files(self.root, self.hparams.dataset)
        if files is None:
            self.prepare_data()  # raises the one-line error (or downloads when prepare_data was skipped)
            files = find_idx_files(self.root, self.hparams.dataset)
        if stage in ("fit", "validate"):
            training_set = InMemoryImages(*load_split(files, "train", self.image_size, self.num_classes))
            self.datasets["train"], self.datasets["val"] = split(
                training_set, self.hparams.val_size, self.hparams.seed, self.hparams.train_subset)
        if stage == "test":
            self.datasets["test"] = InMemoryImages(*load_split(files, "test", self.image_size, self.num_classes))

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, split: str, batch_size: int, train: bool) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"call setup() for the {split!r} split first")
        world_size, rank = self._world()
        dataset = self.datasets[split]
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=shard_sampler(dataset, world_size, rank, train, self.hparams.seed),
            drop_last=train,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            collate_fn=batch_as_is,
            pin_memory=torch.cuda.is_available(),
        )

    def _per_device(self, batch_size: int) -> int:
        world_size, _ = self._world()
        if batch_size % world_size:
            raise UserError(
                f"--data.batch_size {batch_size} is the global batch and must divide evenly between "
                f"{world_size} processes; choose a multiple of {world_size}"
            )
        return batch_size // world_size

    def train_dataloader(self) -> DataLoader:
        per_device = self._per_device(self.hparams.batch_size)
        n_train = len(self.datasets.get("train", ()))
        if n_train // self._world()[0] < per_device:  # whole batches only: not one training step
            raise UserError(
                f"{n_train} training images (after --data.val_size {self.hparams.val_size}) do not fill one batch of "
                f"--data.batch_size {self.hparams.batch_size}; lower --data.val_size or --data.batch_size"
            )
        return self._loader("train", per_device, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.hparams.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.eval_batch_size, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.hparams.eval_batch_size, train=False)

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int):
        if isinstance(batch, torch.Tensor):  # the model summary's example input: already model-ready
            return batch
        images, targets = batch
        return self.transform(images, train=self.trainer is not None and self.trainer.training), targets

    def transform(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 ``[B, H, W]`` to normalised float ``[B, 1, H, W]``, randomly warped when ``train``."""
        x = unit_range(images)
        if train and self.augmentation is not None:
            self._reseed_augmentation()
            x = self.erasing(self.augmentation(x))
        return normalize(x, self.info.mean, self.info.std)

    def _reseed_augmentation(self) -> None:
        """Seed the augmentation per (seed, rank, epoch), so a resumed or repeated run warps the same way."""
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        key = (epoch, self._world()[1])
        if getattr(self, "_augmentation_key", None) != key:
            self.augmentation.generator.manual_seed(self.hparams.seed + 1_000_003 * epoch + 7919 * key[1])
            self._augmentation_key = key
