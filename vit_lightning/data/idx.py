"""The IDX file format of MNIST and its siblings (plain or ``.gz``): reading and writing, finding a dataset's four
files, and loading a split with the checks that name the file at fault."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import torch

from vit_lightning.data.datasets import DATASETS
from vit_lightning.errors import UserError

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (plain or ``.gz``) into a uint8 tensor of the shape in its header."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except PermissionError:
        raise UserError(f"{path} cannot be read (permission denied); make it readable") from None
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read {path}: {e}; replace it with a good copy") from None
    if not data:
        raise UserError(f"{path} is empty; replace it with a good copy")
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or not 1 <= data[3] <= 4:
        raise UserError(f"{path} is not an IDX file of unsigned bytes (magic {data[:4].hex()}); replace it")
    header = 4 + 4 * data[3]
    if len(data) < header:
        raise UserError(f"{path} is truncated inside its header; replace it with a good copy")
    shape = struct.unpack(f">{data[3]}I", data[4:header])
    if len(data) - header != math.prod(shape):
        raise UserError(
            f"{path} is corrupt: its header says shape {shape} ({math.prod(shape)} bytes) "
            f"but it holds {len(data) - header} bytes; replace it with a good copy"
        )
    if math.prod(shape) == 0:  # frombuffer refuses an empty buffer
        return torch.zeros(shape, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def write_idx(path: Path, array: torch.Tensor) -> Path:
    """Write a uint8 tensor as an IDX file (gzip-compressed when the name ends in ``.gz``); inverse of read_idx."""
    header = bytes([0, 0, 0x08, array.dim()]) + struct.pack(f">{array.dim()}I", *array.shape)
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:
        f.write(header + array.to(torch.uint8).contiguous().numpy().tobytes())
    return path


def find_idx_files(root: Path, dataset: str) -> dict[str, Path] | None:
    """The four IDX files, plain or ``.gz``, directly in ``root`` or in torchvision's ``root/<Name>/raw``.

    Returns ``None`` when neither folder holds any of them; raises when a folder holds only some.
    """
    wanted = [name for pair in SPLIT_FILES.values() for name in pair]
    for folder in (root, root / DATASETS[dataset].folder / "raw"):
        found = {}
        for name in wanted:
            candidates = [folder / name, folder / f"{name}.gz"]
            path = next((p for p in candidates if p.is_file()), None)
            if path is not None:
                found[name] = path
        if len(found) == len(wanted):
            return found
        if found:
            missing = ", ".join(sorted(set(wanted) - set(found)))
            raise UserError(f"{folder} is missing {missing} (plain or .gz); add them or point --data.root elsewhere")
    return None


def load_split(files: dict[str, Path], split: str, image_size: int = 28,
               num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images ``[N, H, W]`` and int64 labels ``[N]`` of the ``train`` or ``test`` split, checked: at
    least one image, ``image_size`` square, labels in ``0..num_classes-1``."""
    image_name, label_name = SPLIT_FILES[split]
    images, labels = read_idx(files[image_name]), read_idx(files[label_name])
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise UserError(
            f"{files[image_name]} and {files[label_name]} do not match: images {tuple(images.shape)}, "
            f"labels {tuple(labels.shape)}; replace them with a matching pair"
        )
    if len(images) == 0:
        raise UserError(f"{files[image_name]} holds no images; replace it with a good copy")
    if tuple(images.shape[1:]) != (image_size, image_size):
        raise UserError(f"{files[image_name]} holds {images.shape[1]}x{images.shape[2]} images, not "
                        f"{image_size}x{image_size}; replace it with a file of this dataset")
    if int(labels.max()) >= num_classes:
        raise UserError(f"{files[label_name]} holds label {int(labels.max())}, outside the dataset's {num_classes} "
                        f"classes (0-{num_classes - 1}); replace it with a good copy")
    return images, labels.long()
