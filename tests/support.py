"""What the tests share (``from support import ...``; fixtures are in conftest.py): tiny MNIST-format datasets
written as real IDX files, tiny-model CLI arguments, ``train.py`` as a subprocess, and the metrics log."""

from __future__ import annotations

from pathlib import Path

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from vit_lightning.data.idx import SPLIT_FILES, write_idx

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"


def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 images: class k is a bright 7x7 square in cell k of a 4x4 grid, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, 28, 28))
    for image, label in zip(images, labels):
        row, col = divmod(int(label), 4)
        image[row * 7:(row + 1) * 7, col * 7:(col + 1) * 7] += 180
    return images.astype(np.uint8), labels.astype(np.uint8)


def on_page(image: np.ndarray, rng: np.random.Generator, scale: int = 3, page: tuple[int, int] = (192, 256),
            paper: float = 200.0, ink: float = 30.0, noise: float = 6.0) -> np.ndarray:
    """A dataset image (uint8 ``[H, W]``, light strokes on black) as a photo of ink on paper: ``scale`` times its
    size, dark ink on a light-grey ``page`` (height, width) with noise, at a random place. uint8."""
    from PIL import Image

    height, width = image.shape
    big = Image.fromarray(image).resize((width * scale, height * scale), Image.Resampling.BILINEAR)
    strokes = np.zeros(page, dtype=np.float64)
    top, left = rng.integers(0, page[0] - height * scale + 1), rng.integers(0, page[1] - width * scale + 1)
    strokes[top:top + height * scale, left:left + width * scale] = np.asarray(big) / 255.0
    photo = paper * (1 - strokes) + ink * strokes + rng.normal(0, noise, page)
    return np.clip(photo, 0, 255).round().astype(np.uint8)


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
# every option the origin's model lacks: conv tokenizer, sequence pooling, convolutional MLPs, locality attention
CONV_SEQ = ("--model.tokenizer", "conv", "--model.pool", "seq", "--model.patch_size", "4", "--model.conv_mlp", "true",
            "--model.locality_attention", "true")


def run_train(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` in the repository, as a user runs it: one thread, no standard input."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"} if env is None else env
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=environment, stdin=subprocess.DEVNULL)


def read_metrics(run_dir: Path, name: str | None = None) -> list[dict]:
    """The rows of every ``logs/*/metrics.csv`` of a run folder (fits' ``version_N``, ``validate``, ``test``; only
    those with ``name``, if given)."""
    rows = [row for path in sorted((run_dir / "logs").glob("*/metrics.csv"))
            for row in csv.DictReader(path.open())]
    return [row for row in rows if row.get(name)] if name else rows


def logged_after_epoch(run_dir: Path, name: str, epoch: int) -> float:
    """The last value of ``name`` that a run folder's logs recorded in ``epoch``."""
    return float([row for row in read_metrics(run_dir, name) if row["epoch"] == str(epoch)][-1][name])


def user_error(capsys, *args: str) -> str:
    """Run the CLI (``train.py ARGS``) in this process, expect the one-line ``error: ...`` of a user mistake, exit
    status 1 and nothing else on stderr; return that line."""
    from vit_lightning.training.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err.strip()


def resolved(capsys, *configs: str) -> dict:
    """The complete config `train.py fit` resolves from the presets ``configs`` (after configs/default.yaml)."""
    from vit_lightning.training.cli import main
    from vit_lightning.training.presets import preset_file

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *[flag for name in configs for flag in ("--config", str(preset_file(name)))], "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)
