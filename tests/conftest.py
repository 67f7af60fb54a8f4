"""Shared fixtures: tiny MNIST-format datasets written as real IDX files, and tiny-model CLI arguments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vit_lightning.data import SPLIT_FILES, write_idx


def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 images: class k is a bright 7x7 square in cell k of a 4x4 grid, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, 28, 28))
    for image, label in zip(images, labels):
        row, col = divmod(int(label), 4)
        image[row * 7:(row + 1) * 7, col * 7:(col + 1) * 7] += 180
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_dataset(folder: Path, n_train: int = 240, n_test: int = 101, gz: bool = False) -> Path:
    """The four IDX files of a tiny dataset in ``folder``."""
    suffix = ".gz" if gz else ""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = make_split(n, seed)
        image_name, label_name = SPLIT_FILES[split]
        write_idx(folder / f"{image_name}{suffix}", torch.from_numpy(images))
        write_idx(folder / f"{label_name}{suffix}", torch.from_numpy(labels))
    return folder


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A folder holding a tiny dataset's four IDX files directly (the Debian layout), gzip-compressed."""
    return write_dataset(tmp_path / "data", gz=True)


def tiny_args(data_root: Path, run_dir: Path, *extra: str) -> list[str]:
    """CLI arguments for a seconds-long run of a tiny model on ``data_root``, writing to ``run_dir``."""
    return [
        "--data.root", str(data_root), "--data.download", "false", "--data.val_size", "40",
        "--data.batch_size", "40", "--data.eval_batch_size", "32",
        "--model.tokenizer", "patch", "--model.pool", "cls",  # the origin's ViT: 16 tokens, the cheapest model
        "--model.patch_size", "7", "--model.dim", "16", "--model.depth", "1", "--model.heads", "2",
        "--trainer.accelerator", "cpu", "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1", "--trainer.default_root_dir", str(run_dir),
        *extra,
    ]


PATCH_CLS = ()  # tiny_args' own model: patch tokenizer, class token
CONV_SEQ = ("--model.tokenizer", "conv", "--model.pool", "seq", "--model.patch_size", "4")


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``exported(*model_flags)``: a tiny model trained for two epochs with those ``--model`` flags and exported with
    ``python -m vit_lightning.export`` (once per session and flags). Holds ``data`` (the tiny dataset), ``ckpt``,
    ``folder`` (the export) and ``output`` (what the export printed)."""
    import contextlib
    import io
    from types import SimpleNamespace

    from vit_lightning.cli import main as train
    from vit_lightning.export import main as export

    cache = {}

    def make(*flags: str) -> SimpleNamespace:
        if flags not in cache:
            root = tmp_path_factory.mktemp("exported")
            data = write_dataset(root / "data", gz=True)
            train(["fit", *tiny_args(data, root / "run", *flags)])
            ckpt = root / "run" / "checkpoints" / "last.ckpt"
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                export(["--ckpt_path", str(ckpt), "--output", str(root / "export")])
            cache[flags] = SimpleNamespace(data=data, ckpt=ckpt, folder=root / "export", output=printed.getvalue())
        return cache[flags]

    return make
