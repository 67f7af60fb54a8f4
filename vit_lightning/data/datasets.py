"""What the code knows about each dataset of the MNIST family: its folder name, normalisation, class names, whether a
mirror image keeps the class and how its images were framed; and the one definition of pixel scaling and
normalisation, which the data module, export, the model folder, the demo and the tests use."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Framing:
    """How a dataset's images were cut from larger ones (:func:`vit_lightning.data.preprocess.frame`): the object's
    bounding box scaled, keeping its aspect ratio, until its longer side is ``box`` pixels of the ``image_size``
    square, then centred by its centre of mass (``by_mass``) or by its bounding box."""

    box: int
    by_mass: bool


# LeCun et al.: each NIST digit's bounding box normalised to 20x20, centred by its centre of mass in 28x28.
DIGITS = Framing(20, by_mass=True)
# zalandoresearch/fashion-mnist ("How to make it"): the product trimmed, its longest edge resized to 28, centred.
PRODUCTS = Framing(28, by_mass=False)


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about one dataset; the model's input size and number of classes are linked to them (cli.py). A
    checkpoint records those a model needs (:func:`vit_lightning.serving.checkpoints.dataset_record`)."""

    name: str  # --data.dataset
    folder: str  # torchvision's dataset class, and its folder under the root
    mean: float
    std: float
    classes: tuple[str, ...]
    mirror_symmetric: bool = False  # a left-right flip keeps the class: horizontal flips are a free augmentation
    image_size: int = 28
    in_channels: int = 1
    system_folder: str | None = None  # where an operating-system package installs the files, if one does
    framing: Framing = DIGITS


DATASETS = {
    "mnist": DatasetInfo("mnist", "MNIST", 0.1307, 0.3081, tuple("0123456789")),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", "FashionMNIST", 0.2860, 0.3530,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        mirror_symmetric=True, system_folder="/usr/share/datasets/fashion-mnist",  # Debian: dataset-fashion-mnist
        framing=PRODUCTS,
    ),
    # KMNIST's characters fill their square like Fashion-MNIST's products (how they were cut is not documented)
    "kmnist": DatasetInfo("kmnist", "KMNIST", 0.1918, 0.3483, ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
                          framing=PRODUCTS),
}


def unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels ``[B, H, W]`` (or one image ``[H, W]``) to float images ``[B, 1, H, W]`` in [0, 1]: the input of
    the model folder and the exported programs."""
    return (pixels if pixels.dim() == 3 else pixels[None]).unsqueeze(1).float().div_(255.0)


def normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """[0, 1] images to the network's input, with a dataset's ``mean`` and ``std`` (:class:`DatasetInfo`)."""
    return (images - mean) / std
