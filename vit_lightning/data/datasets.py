"""What the code knows about each dataset of the MNIST family: its folder name, normalisation, class names and
whether a mirror image keeps the class; and the one definition of pixel scaling and normalisation, which the data
module, export, the model folder, the demo and the tests use."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about one dataset; the model's input size and number of classes are linked to them (cli.py)."""

    folder: str  # torchvision's dataset class, and its folder under the root
    mean: float
    std: float
    classes: tuple[str, ...]
    mirror_symmetric: bool = False  # a left-right flip keeps the class: horizontal flips are a free augmentation
    image_size: int = 28
    in_channels: int = 1
    system_folder: str | None = None  # where an operating-system package installs the files, if one does


DATASETS = {
    "mnist": DatasetInfo("MNIST", 0.1307, 0.3081, tuple("0123456789")),
    "fashion_mnist": DatasetInfo(
        "FashionMNIST", 0.2860, 0.3530,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        mirror_symmetric=True, system_folder="/usr/share/datasets/fashion-mnist",  # Debian: dataset-fashion-mnist
    ),
    "kmnist": DatasetInfo("KMNIST", 0.1918, 0.3483, ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
}


def unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels ``[B, H, W]`` (or one image ``[H, W]``) to float images ``[B, 1, H, W]`` in [0, 1]: the input of
    the model folder and the exported programs."""
    return (pixels if pixels.dim() == 3 else pixels[None]).unsqueeze(1).float().div_(255.0)


def normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """[0, 1] images to the network's input, with a dataset's ``mean`` and ``std`` (:class:`DatasetInfo`)."""
    return (images - mean) / std
