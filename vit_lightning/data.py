"""MNIST-family data: IDX files read into memory as uint8 tensors, normalised and augmented per batch on device."""

from __future__ import annotations

import gzip
import math
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vit_lightning.augment import RandomAffine
from vit_lightning.errors import UserError
from vit_lightning.preprocess import prepare_image

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm"}


@dataclass(frozen=True)
class DatasetInfo:
    folder: str  # torchvision's dataset class, and its folder under the root
    mean: float
    std: float
    classes: tuple[str, ...]
    mirror_symmetric: bool = False  # a left-right flip keeps the class: horizontal flips are a free augmentation


DATASETS = {
    "mnist": DatasetInfo("MNIST", 0.1307, 0.3081, tuple("0123456789")),
    "fashion_mnist": DatasetInfo(
        "FashionMNIST", 0.2860, 0.3530,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        mirror_symmetric=True,
    ),
    "kmnist": DatasetInfo("KMNIST", 0.1918, 0.3483, ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
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


def load_images(path: Path, size: int, auto_invert: bool = True) -> tuple[torch.Tensor, list[str], list[str]]:
    """Grayscale uint8 images ``[N, size, size]`` from an image file or a folder of them, prepared as in
    :func:`~vit_lightning.preprocess.prepare_image` (light backgrounds inverted when ``auto_invert``).

    Returns the images, their file names, and one line per file that could not be read.
    """
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise UserError(f"--data.predict_path {path} does not exist; give an image file or a folder of images")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
    images, names, failures = [], [], []
    for file in files:
        try:
            with Image.open(file) as image:
                images.append(prepare_image(image, size, auto_invert))
            names.append(str(file.relative_to(path)) if path.is_dir() else file.name)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
            failures.append(f"{file}: not a readable image ({type(e).__name__})")
    if not images:
        raise UserError(
            f"no readable images in --data.predict_path {path} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return torch.stack(images), names, failures


class InMemoryImages(Dataset):
    """uint8 images and integer targets held in memory; a whole batch is fetched with one indexing operation."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.targets[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices)
        return self.images[index], self.targets[index]


def _batch_as_is(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate for ``InMemoryImages.__getitems__``, whose batches are already stacked."""
    return batch


class ShardSampler(DistributedSampler):
    """This process's disjoint shard of a dataset.

    Training (``shuffle=True``) reshuffles every epoch from ``seed`` and drops the last ``len % world_size``
    samples so all ranks take the same number of steps. Evaluation keeps every sample exactly once: shards
    differ in length by at most one and nothing is padded, so metrics synced across ranks are exact.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=shuffle)
        if not shuffle:
            self.total_size = len(dataset)
            self.num_samples = len(range(rank, self.total_size, num_replicas))


class MNISTDataModule(LightningDataModule):
    """MNIST, Fashion-MNIST or KMNIST from IDX files, kept in memory as uint8 tensors.

    Batches leave the loader as uint8; ``on_after_batch_transfer`` converts, augments (training only) and
    normalises them on the device the model runs on. ``batch_size`` is the global batch: each of N processes
    gets ``batch_size / N`` per step, so 1 and N devices train with the same steps and learning rate.
    ``hflip=None`` flips half the training images of a mirror-symmetric dataset (Fashion-MNIST), none of the
    digits or characters. ``auto_invert`` inverts predict images with a light background (dark strokes on
    paper) to MNIST's light strokes on black.
    """

    def __init__(
        self,
        dataset: Literal["mnist", "fashion_mnist", "kmnist"] = "mnist",
        root: str = "data",
        download: bool = True,
        val_size: int | float = 5000,
        batch_size: int = 256,
        eval_batch_size: int = 1024,
        num_workers: int = 0,
        augment: bool = True,
        degrees: float = 10.0,
        translate: float = 0.1,
        scale: tuple[float, float] = (0.9, 1.1),
        hflip: float | None = None,
        seed: int = 42,
        predict_path: str | None = None,
        auto_invert: bool = True,
    ):
        super().__init__()
        if dataset not in DATASETS:
            raise UserError(f"unknown --data.dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
        for name, value, least in (("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                                   ("num_workers", num_workers, 0)):
            if value < least:
                raise UserError(f"--data.{name} must be at least {least}, got {value}")
        self.save_hyperparameters(logger=False)  # loggers get the whole CLI config (tracking.RunConfig)
        self.info = DATASETS[dataset]
        self.root = Path(root).expanduser()
        self.classes = self.info.classes
        self.num_classes = len(self.classes)
        self.image_size, self.in_channels = 28, 1
        if hflip is None:  # flip clothes, not digits or characters
            hflip = 0.5 if self.info.mirror_symmetric else 0.0
        self.augmentation = RandomAffine(degrees, translate, scale, hflip, seed=seed) if augment else None
        self.predict_names: list[str] = []
        self.datasets: dict[str, InMemoryImages] = {}

    def prepare_data(self) -> None:
        if find_idx_files(self.root, self.hparams.dataset) is not None:
            return
        root = self.root.absolute()
        location = f"{root} or {root / self.info.folder / 'raw'}"
        expected = ", ".join(name for pair in SPLIT_FILES.values() for name in pair)
        if not self.hparams.download:
            raise UserError(f"no {self.hparams.dataset} data in {location} (expected {expected}, plain or .gz); "
                            "put the files there or pass --data.root DIR (or --data.download true)")
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
                f"failed ({reason}); put the files there or pass --data.root DIR"
            ) from None

    def setup(self, stage: str) -> None:
        if stage == "predict":
            if self.hparams.predict_path is None:
                raise UserError("predict needs images: pass --data.predict_path IMAGE_OR_FOLDER")
            images, self.predict_names, failures = load_images(
                Path(self.hparams.predict_path), self.image_size, self.hparams.auto_invert)
            for failure in failures:
                print(f"skipped {failure}")
            self.datasets["predict"] = InMemoryImages(images, torch.arange(len(images)))
            return
        files = find_idx_files(self.root, self.hparams.dataset)
        if files is None:
            self.prepare_data()  # raises the one-line error (or downloads when prepare_data was skipped)
            files = find_idx_files(self.root, self.hparams.dataset)
        if stage in ("fit", "validate"):
            images, labels = load_split(files, "train", self.image_size, self.num_classes)
            train_index, val_index = self._split(len(images))
            self.datasets["train"] = InMemoryImages(images[train_index], labels[train_index])
            self.datasets["val"] = InMemoryImages(images[val_index], labels[val_index])
        if stage == "test":
            self.datasets["test"] = InMemoryImages(*load_split(files, "test", self.image_size, self.num_classes))

    def _split(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        val_size = self.hparams.val_size
        n_val = round(val_size * n) if isinstance(val_size, float) else val_size
        if not 0 < n_val < n:
            raise UserError(f"--data.val_size {val_size} leaves no training or no validation images out of {n}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.hparams.seed))
        return order[n_val:], order[:n_val]

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
            sampler=ShardSampler(dataset, world_size, rank, shuffle=train, seed=self.hparams.seed),
            drop_last=train,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            collate_fn=_batch_as_is,
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
        x = images.unsqueeze(1).float().div_(255.0)
        if train and self.augmentation is not None:
            self._reseed_augmentation()
            x = self.augmentation(x)
        return x.sub_(self.info.mean).div_(self.info.std)

    def _reseed_augmentation(self) -> None:
        """Seed the augmentation per (seed, rank, epoch), so a resumed or repeated run warps the same way."""
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        key = (epoch, self._world()[1])
        if getattr(self, "_augmentation_key", None) != key:
            self.augmentation.generator.manual_seed(self.hparams.seed + 1_000_003 * epoch + 7919 * key[1])
            self._augmentation_key = key
