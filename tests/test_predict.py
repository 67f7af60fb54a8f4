"""Predict is for outside images: it needs only the checkpoint and the images, uses the dataset the checkpoint was
trained on (its class names and normalisation), refuses another one in one line, writes any file name, and a closed
terminal (``| head``) loses neither a prediction file nor a fit. The checkpoint is tests/fixtures' old one (a tiny
MNIST model), so most of these tests train nothing."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from support import REPO, TESTS, make_split, tiny_args, user_error
from vit_lightning.data.datasets import DATASETS, normalize, unit_range
from vit_lightning.data.preprocess import prepare_image
from vit_lightning.errors import UserError
from vit_lightning.export import main as export
from vit_lightning.serving.checkpoints import load_checkpoint
from vit_lightning.serving.demo import main as demo
from vit_lightning.serving.model_folder import from_checkpoint
from vit_lightning.training.cli import main
from vit_lightning.training.module import ViTClassifier

OLD_CHECKPOINT = TESTS / "fixtures" / "cfd87c3" / "last.ckpt"  # a one-epoch tiny MNIST model (test_old_files.py)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Five of the tiny dataset's test images as PNG files."""
    folder = tmp_path / "images"
    folder.mkdir()
    for index, image in enumerate(make_split(5, seed=1)[0]):
        Image.fromarray(image).save(folder / f"{index}.png")
    return folder


def predict(tmp_path: Path, ckpt: Path, images: Path, *extra: str) -> list[dict]:
    """``train.py predict`` with nothing but a checkpoint and images (no dataset files anywhere); the CSV rows."""
    output = tmp_path / "predictions.csv"
    main(["predict", "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.accelerator", "cpu",
          "--data.root", str(tmp_path / "no-data-here"), "--data.download", "false", "--ckpt_path", str(ckpt),
          "--data.predict_path", str(images), "--predictions.output", str(output), *extra])
    return list(csv.DictReader(output.open(encoding="utf-8", errors="surrogateescape")))


def expected(ckpt: Path, images: Path, mean: float, std: float, classes) -> list[tuple[str, float]]:
    """Class and confidence of each image, computed here with the given normalisation and class names."""
    model = ViTClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    pixels = torch.stack([prepare_image(Image.open(path), 28) for path in sorted(images.iterdir())])
    with torch.no_grad():
        probabilities = model(normalize(unit_range(pixels), mean, std)).softmax(-1)
    return [(classes[i], p) for i, p in zip(probabilities.argmax(-1).tolist(), probabilities.max(-1).values.tolist())]


def assert_predicted(rows: list[dict], want: list[tuple[str, float]]) -> None:
    assert [row["class"] for row in rows] == [label for label, _ in want]
    assert [float(row["confidence"]) for row in rows] == pytest.approx([p for _, p in want], abs=1e-5)


def rewritten(ckpt: Path, path: Path, **changes) -> Path:
    """A copy of a checkpoint with some top-level entries replaced."""
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint.update(changes)
    torch.save(checkpoint, path)
    return path


def test_predict_needs_only_the_checkpoint_and_the_images(tmp_path, images):
    rows = predict(tmp_path, OLD_CHECKPOINT, images)
    want = expected(OLD_CHECKPOINT, images, DATASETS["mnist"].mean, DATASETS["mnist"].std, DATASETS["mnist"].classes)
    assert_predicted(rows, want)


def test_predict_and_test_take_the_dataset_from_the_checkpoint(tmp_path, images, data_root):
    # a checkpoint from before the record: its data settings name the dataset
    fashion = rewritten(OLD_CHECKPOINT, tmp_path / "fashion.ckpt", datamodule_hyper_parameters={"dataset": "fashion_mnist"})
    info = DATASETS["fashion_mnist"]
    want = expected(fashion, images, info.mean, info.std, info.classes)
    assert_predicted(predict(tmp_path, fashion, images), want)
    main(["test", *tiny_args(data_root, tmp_path / "run"), "--ckpt_path", str(fashion)])
    [row] = list(csv.DictReader((tmp_path / "run" / "logs" / "test" / "metrics.csv").open()))
    test_images, labels = make_split(101, seed=1)
    model = ViTClassifier.load_from_checkpoint(fashion, map_location="cpu").eval()
    with torch.no_grad():
        logits = model(normalize(unit_range(torch.from_numpy(test_images)), info.mean, info.std))
    assert float(row["test/acc"]) == pytest.approx((logits.argmax(-1) == torch.from_numpy(labels)).float().mean().item())

    # the record a checkpoint now carries: its class names and normalisation are the ones used
    record = {"name": "mnist", "classes": [f"digit {i}" for i in range(10)], "mean": 0.5, "std": 0.25,
              "image_size": 28, "in_channels": 1}
    recorded = rewritten(OLD_CHECKPOINT, tmp_path / "recorded.ckpt", dataset=record)
    want = expected(recorded, images, 0.5, 0.25, record["classes"])
    assert_predicted(predict(tmp_path, recorded, images), want)
    model = from_checkpoint(load_checkpoint(recorded), recorded)  # export and the demo
    assert (model.classes, model.mean, model.std) == (record["classes"], 0.5, 0.25)


def test_a_dataset_that_contradicts_the_checkpoint_is_one_line(tmp_path, images, data_root, capsys):
    ckpt = str(OLD_CHECKPOINT)
    for subcommand in ("predict", "test", "fit"):
        for given in (["--data.dataset", "fashion_mnist"], ["--config", str(REPO / "configs" / "fashion_mnist.yaml")]):
            error = user_error(capsys, subcommand, *tiny_args(data_root, tmp_path / "run"), *given, "--ckpt_path", ckpt,
                               "--data.predict_path", str(images))
            assert error.startswith(f"error: --ckpt_path {ckpt} was trained on --data.dataset mnist, not fashion_mnist; ")
            assert ("train a new run in another --trainer.default_root_dir" in error) == (subcommand == "fit")
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(UserError, match="was trained on --data.dataset mnist, not kmnist"):
        export(["--ckpt_path", ckpt, "--output", str(tmp_path / "export"), "--data.dataset", "kmnist"])
    assert user_error(capsys, "predict", *tiny_args(data_root, tmp_path / "run"), "--data.dataset", "mnist",
                      "--ckpt_path", ckpt, "--data.predict_path", str(tmp_path / "none")).endswith("does not exist; "
                      "give an image file or a folder of images")  # repeating the checkpoint's dataset is fine


def test_another_modules_checkpoint_is_one_line_everywhere(tmp_path, images, data_root, capsys):
    foreign = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2, 2)}, "hyper_parameters": {"hidden_size": 128}}, foreign)
    message = f"--ckpt_path {foreign} is not a vit-lightning checkpoint (its model settings hidden_size are not "
    for subcommand in ("test", "predict", "fit"):
        error = user_error(capsys, subcommand, *tiny_args(data_root, tmp_path / "run"), "--ckpt_path", str(foreign),
                           "--data.predict_path", str(images))
        assert error.startswith(f"error: {message}")
    for command in (export, demo):
        with pytest.raises(UserError, match="is not a vit-lightning checkpoint"):
            command(["--ckpt_path", str(foreign), "--output", str(tmp_path / "x")] if command is export
                    else ["--ckpt_path", str(foreign)])


def test_export_and_test_fill_missing_settings_alike():
    """A checkpoint whose settings lack some architecture options: both rebuild it with the model's defaults."""
    classifier = ViTClassifier()  # dim 192, depth 6, heads 3: the defaults
    settings = {key: value for key, value in classifier.hparams.items() if key not in ("dim", "depth", "heads")}
    checkpoint = {"state_dict": classifier.state_dict(), "hyper_parameters": settings,
                  "datamodule_hyper_parameters": {"dataset": "mnist"}}
    model = from_checkpoint(checkpoint, "partial.ckpt")
    assert (model.architecture["dim"], model.architecture["depth"], model.architecture["heads"]) == (192, 6, 3)


def test_file_names_that_are_not_utf8_are_written_as_they_are(tmp_path, images, capsys):
    latin1 = os.fsdecode(b"caf\xe9.png")  # a name written by a Latin-1 system
    (images / "0.png").rename(images / latin1)
    rows = predict(tmp_path, OLD_CHECKPOINT, images)
    assert sorted(row["file"] for row in rows) == sorted(["1.png", "2.png", "3.png", "4.png", latin1])
    assert b"\ncaf\xe9.png," in (tmp_path / "predictions.csv").read_bytes()  # the name's own bytes
    assert "caf\\xe9.png" in capsys.readouterr().out


def shell(command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``command`` through bash in the repository (a real pipe); prints ``status N`` of its first part last."""
    return subprocess.run(["bash", "-c", f"{command}; echo status ${{PIPESTATUS[0]}}"], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          stdin=subprocess.DEVNULL)


@pytest.mark.slow  # starts train.py
def test_predict_into_head_writes_the_file_and_ends_cleanly(tmp_path):
    folder = tmp_path / "images" / ("a-long-folder-name-" * 12)  # 900 rows of ~240 characters: more than a pipe holds
    folder.mkdir(parents=True)
    Image.new("L", (28, 28), 0).save(folder / "000.png")
    for index in range(1, 900):
        os.link(folder / "000.png", folder / f"{index:03d}.png")
    output = tmp_path / "predictions.csv"
    result = shell(f"{sys.executable} train.py predict --trainer.default_root_dir {tmp_path / 'run'} "
                   f"--trainer.accelerator cpu --data.download false --ckpt_path {OLD_CHECKPOINT} "
                   f"--data.predict_path {tmp_path / 'images'} --predictions.output {output} | head -3")
    assert result.stdout.splitlines()[-1] == "status 0" and len(result.stdout.splitlines()) == 4, result.stdout
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr[-3000:]
    assert len(output.read_text().splitlines()) == 901


@pytest.mark.slow  # trains for seconds
def test_fit_into_head_trains_to_the_end(data_root, tmp_path):
    run = tmp_path / "run"
    result = shell(f"{sys.executable} train.py fit {' '.join(tiny_args(data_root, run))} | head -1")
    assert result.stdout.splitlines()[-1] == "status 0", result.stdout + result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr[-3000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1  # both epochs
