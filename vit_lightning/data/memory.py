"""Images held in memory as uint8 tensors with their targets, fetched a batch at a time, and the seeded split of a
training set into training and validation images."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from vit_lightning.errors import UserError


class InMemoryImages(Dataset):
    """uint8 images and integer targets held in memory; a whole batch is fetched with one indexing operation."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.targets[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.subset(torch.as_tensor(indices)).tensors

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images, self.targets

    def subset(self, index: torch.Tensor) -> InMemoryImages:
        """The images at ``index``, each with its own target (one index for both: they cannot come apart)."""
        return InMemoryImages(self.images[index], self.targets[index])


def batch_as_is(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate for ``InMemoryImages.__getitems__``, whose batches are already stacked."""
    return batch


def split(dataset: InMemoryImages, val_size: int | float, seed: int,
          train_subset: int | None = None) -> tuple[InMemoryImages, InMemoryImages]:
    """A seeded split into training and validation images (``val_size``: a count or a fraction): random, or with
    ``train_subset`` N the first N images for training and ``val_size`` random others for validation."""
    n = len(dataset)
    n_val = round(val_size * n) if isinstance(val_size, float) else val_size
    if not 0 < n_val < n:
        raise UserError(f"--data.val_size {val_size} leaves no training or no validation images out of {n}")
    if train_subset is not None and not 0 < train_subset <= n - n_val:
        raise UserError(f"--data.train_subset {train_subset} must be between 1 and {n - n_val} (the {n} training "
                        f"images less --data.val_size {val_size})")
    generator = torch.Generator().manual_seed(seed)
    if train_subset is not None:
        others = train_subset + torch.randperm(n - train_subset, generator=generator)[:n_val]
        return dataset.subset(torch.arange(train_subset)), dataset.subset(others)
    order = torch.randperm(n, generator=generator)
    return dataset.subset(order[n_val:]), dataset.subset(order[:n_val])
