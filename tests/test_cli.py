"""The real CLI end to end on a tiny dataset: fit, test, predict, resume, errors."""

import csv
import shutil
import warnings
from dataclasses import replace
from urllib.error import URLError

import pytest
import torch
import torchvision.datasets.mnist
import yaml
from PIL import Image

from support import read_metrics, resolved, tiny_args, user_error
from vit_lightning.training.cli import ViTCLI, main
from vit_lightning.data.datasets import DATASETS, normalize, unit_range
from vit_lightning.data.idx import find_idx_files, load_split
from vit_lightning.data.preprocess import prepare_image
from vit_lightning.training.module import ViTClassifier


def mnist_input(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 images as the model takes them (MNIST's normalisation)."""
    return normalize(unit_range(pixels), DATASETS["mnist"].mean, DATASETS["mnist"].std)


def test_the_model_takes_its_input_and_classes_from_the_dataset(tmp_path, monkeypatch, capsys):
    five_classes = replace(DATASETS["mnist"], classes=tuple("abcde"), image_size=14)
    monkeypatch.setitem(DATASETS, "mnist", five_classes)
    cli = ViTCLI(tiny_args(tmp_path / "data", tmp_path / "run"), run=False)
    assert (cli.model.hparams.num_classes, cli.model.hparams.image_size, cli.model.hparams.in_channels) == (5, 14, 1)
    assert cli.model.model.head.out_features == 5
    with pytest.raises(SystemExit) as exit_info:  # the dataset's facts are not settings
        main(["fit", *tiny_args(tmp_path / "data", tmp_path / "run"), "--model.num_classes", "3"])
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: --model.num_classes is the dataset's (--data.dataset), not a setting; drop it "
                           "(every option: ") and line.endswith(" fit --help)")


@pytest.mark.slow  # several seconds of training
def test_fit_test_predict_through_the_cli(data_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    main(["fit", *tiny_args(data_root, run_dir)])
    out = capsys.readouterr().out
    assert "Epoch 1/2, Train Loss: " in out and "Epoch 2/2, Train Loss: " in out and ", Accuracy: " in out

    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()
    best = [p for p in checkpoints.glob("*.ckpt") if p.name != "last.ckpt"]
    assert len(best) == 1 and best[0].name.startswith("epoch")
    metrics = read_metrics(run_dir)
    names = set(metrics[0])
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "epoch", "train/images_per_sec"} <= names
    assert any(name.startswith("lr-") for name in names)
    # the time-to-accuracy pairs: each epoch's validation accuracy beside the fit's elapsed time, growing
    elapsed = {row["epoch"]: float(row["train/elapsed_s"]) for row in read_metrics(run_dir, "train/elapsed_s")}
    accuracy = {row["epoch"]: row["val/acc"] for row in read_metrics(run_dir, "val/acc")}
    assert elapsed.keys() == accuracy.keys() == {"0", "1"} and 0 < elapsed["0"] < elapsed["1"]
    log_dir = run_dir / "logs" / "version_0"
    assert (log_dir / "config.yaml").is_file()
    # The logger gets the complete resolved CLI config, not only the module's init arguments.
    logged = yaml.safe_load((log_dir / "hparams.yaml").read_text())
    assert logged["model"]["dim"] == 16 and logged["data"]["root"] == str(data_root)
    assert logged["trainer"]["max_epochs"] == 2 and logged["seed_everything"] == 42
    assert logged["parameters"] == sum(p.numel() for p in ViTClassifier(patch_size=7, dim=16, depth=1, heads=2, mlp_ratio=2.0).parameters())
    assert "torch" in logged["versions"]
    # Pictures of the last validation epoch go to PNG files, as the CSV logger takes no images.
    assert sorted(p.name for p in (log_dir / "pictures").iterdir()) == [
        f"val_{name}_epoch001.png" for name in ("attention", "confusion_matrix", "predictions")]

    # A checkpoint alone rebuilds the model.
    model = ViTClassifier.load_from_checkpoint(checkpoints / "last.ckpt", map_location="cpu")
    assert model.hparams.dim == 16 and model.model.patch_size == 7

    # Each test adds a row to logs/test/metrics.csv, with the epoch and step of the checkpoint it evaluated.
    for ckpt in ("best", "last"):
        main(["test", *tiny_args(data_root, run_dir), "--ckpt_path", ckpt])
    tested = [torch.load(path, weights_only=True) for path in (best[0], checkpoints / "last.ckpt")]
    test_rows = read_metrics(run_dir, "test/acc")
    assert [(int(row["epoch"]), int(row["step"])) for row in test_rows] == [
        (checkpoint["epoch"], checkpoint["global_step"]) for checkpoint in tested]
    images, labels = load_split(find_idx_files(data_root, "mnist"), "test")
    for row, path in zip(test_rows, (best[0], checkpoints / "last.ckpt")):  # each the accuracy of its own checkpoint
        model = ViTClassifier.load_from_checkpoint(path, map_location="cpu").eval()
        with torch.no_grad():
            right = (model(mnist_input(images)).argmax(-1) == labels).sum().item()
        assert float(row["test/acc"]) == pytest.approx(right / len(labels), abs=1e-6)
    assert len(list(run_dir.glob("logs/test/pictures/test_confusion_matrix_epoch*.png"))) == 1

    images = tmp_path / "images"
    images.mkdir()
    for value in (0, 128, 255):
        Image.new("L", (28, 28), value).save(images / f"gray{value}.png")
    (images / "notes.txt").write_text("ignored: not an image suffix")
    output = tmp_path / "predictions.csv"
    capsys.readouterr()
    main(["predict", *tiny_args(data_root, run_dir), "--ckpt_path", str(checkpoints / "last.ckpt"),
          "--data.predict_path", str(images), "--predictions.output", str(output)])
    assert "gray128.png" in capsys.readouterr().out
    rows = list(csv.DictReader(output.open()))
    assert [row["file"] for row in rows] == ["gray0.png", "gray128.png", "gray255.png"]
    model = ViTClassifier.load_from_checkpoint(checkpoints / "last.ckpt", map_location="cpu").eval()
    pixels = torch.stack([prepare_image(Image.new("L", (28, 28), value), 28) for value in (0, 128, 255)])
    with torch.no_grad():
        probabilities = model(mnist_input(pixels)).softmax(-1)
    assert [row["class"] for row in rows] == [DATASETS["mnist"].classes[i] for i in probabilities.argmax(-1)]
    assert [float(row["confidence"]) for row in rows] == pytest.approx(probabilities.max(-1).values.tolist(), abs=1e-6)
    # Evaluations add no log folders; predict logs nothing.
    assert sorted(path.name for path in run_dir.iterdir()) == ["checkpoints", "logs"]
    assert sorted(path.name for path in (run_dir / "logs").iterdir()) == ["test", "version_0"]


@pytest.mark.slow  # several seconds of training
def test_resume_with_ckpt_path_last_continues_the_run(data_root, tmp_path):
    run_dir = tmp_path / "run"
    main(["fit", *tiny_args(data_root, run_dir)])
    first = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["epoch"] == 1
    main(["fit", *tiny_args(data_root, run_dir), "--trainer.max_epochs", "3", "--ckpt_path", "last"])
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 2
    assert resumed["global_step"] == first["global_step"] * 3 // 2
    epochs = sorted({int(row["epoch"]) for row in read_metrics(run_dir) if row.get("val/acc")})
    assert epochs == [0, 1, 2]
    # resumed from the end of an epoch: that epoch's time-to-accuracy row is kept, and time counts on
    timed = [(int(row["epoch"]), float(row["train/elapsed_s"])) for row in read_metrics(run_dir, "train/elapsed_s")]
    assert [epoch for epoch, _ in timed] == [0, 1, 2] and timed[0][1] < timed[1][1] < timed[2][1]


@pytest.mark.slow  # several seconds of training
@pytest.mark.parametrize("flags", [("--trainer.logger", "false"), ("--trainer.enable_checkpointing", "false"),
                                   ("--trainer.max_epochs", "-1", "--trainer.max_steps", "3"),
                                   ("--trainer.max_epochs", "-1", "--trainer.max_time", "00:00:00:05")],
                         ids=["no-logger", "no-checkpoints", "max-steps", "max-time"])
def test_standard_trainer_settings_train(data_root, tmp_path, flags):
    run_dir = tmp_path / "run"
    cli = ViTCLI(["fit", *tiny_args(data_root, run_dir, "--trainer.max_epochs", "1", *flags)])
    assert cli.trainer.global_step > 0
    assert (run_dir / "checkpoints").exists() == ("--trainer.enable_checkpointing" not in flags)
    assert (run_dir / "logs").exists() == ("--trainer.logger" not in flags)
    if "--trainer.max_epochs" in flags:  # the one-cycle schedule knew its length: it was going down
        rates = [float(row["lr-MuonAdamW/pg1"]) for row in read_metrics(run_dir) if row.get("lr-MuonAdamW/pg1")]
        # not "near zero": a batch slowed by a busy machine can take the last seconds of max_time after its rate
        # was logged; without a length the rate would stay at the warm-up's first value
        assert rates[-1] < 0.9 * max(rates)


@pytest.mark.slow  # several seconds of training
def test_training_shard_is_reshuffled_every_epoch(data_root, tmp_path):
    cli = ViTCLI(["fit", *tiny_args(data_root, tmp_path / "run"), "--trainer.max_epochs", "3"])
    sampler = cli.trainer.train_dataloader.sampler
    assert sampler.epoch == 2  # Lightning called set_epoch on the project's sampler every epoch
    orders = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1])


def test_print_config_is_complete_yaml(capsys):
    config = resolved(capsys)
    assert config["model"]["dim"] == 64 and config["model"]["tokenizer"] == "conv"
    assert config["data"]["dataset"] is None  # the --ckpt_path checkpoint's, else mnist
    assert config["checkpoint"]["monitor"] == "val/acc" and config["seed_everything"] == 42
    assert "num_classes" not in config["model"]  # the dataset's, linked


def test_missing_data_root_is_one_line_after_the_download_failed(tmp_path, capsys, monkeypatch):
    def offline(url, **kwargs):  # what torchvision's download meets without a network; tests never download
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    error = user_error(capsys, "fit", "--data.root", str(tmp_path / "nonexistent"),
                      "--trainer.default_root_dir", str(tmp_path / "run"))
    assert "--data.root" in error and "train-images-idx3-ubyte" in error and "the download failed" in error
    assert not (tmp_path / "nonexistent").exists()  # nothing left behind


@pytest.mark.parametrize("ckpt, message", [("missing.ckpt", "does not exist"), ("junk.ckpt", "not a readable"),
                                           ("last", "no "), (".", "is a folder; pass a .ckpt file in it")])
def test_bad_ckpt_path_is_one_line(data_root, tmp_path, capsys, ckpt, message):
    (tmp_path / "junk.ckpt").write_bytes(b"\x00not a checkpoint")
    error = user_error(capsys, "test", *tiny_args(data_root, tmp_path / "run"), "--ckpt_path",
                      ckpt if ckpt == "last" else str(tmp_path / ckpt))
    assert message in error


@pytest.mark.slow  # several seconds of training
def test_default_architecture_fits_tests_with_flips_and_draws_its_attention(data_root, tmp_path, capsys):
    """The default config's conv tokenizer and sequence pooling through the CLI: pictures (attention rollout over
    the pooling weights), a checkpoint that rebuilds it, and test-time flips given to ``test`` only."""
    run_dir = tmp_path / "run"
    default_model = ["--model.tokenizer", "conv", "--model.patch_size", "4", "--model.pool", "seq"]
    main(["fit", *tiny_args(data_root, run_dir, *default_model)])
    pictures = run_dir / "logs" / "version_0" / "pictures"
    assert (pictures / "val_attention_epoch001.png").is_file()
    model = ViTClassifier.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    assert (model.hparams.tokenizer, model.hparams.pool) == ("conv", "seq") and not model.test_time_flip

    losses = {}
    for flip in ("false", "true"):
        main(["test", *tiny_args(data_root, run_dir, *default_model), "--ckpt_path", "last",
              "--model.test_time_flip", flip])
        losses[flip] = [float(row["test/loss"]) for row in read_metrics(run_dir) if row.get("test/loss")][-1]
    assert losses["false"] != losses["true"]  # the flag reached the model although the checkpoint does not hold it


@pytest.mark.slow  # several seconds of training
def test_ckpt_path_best_is_found_in_a_copied_run_folder(data_root, tmp_path):
    original, copy = tmp_path / "run", tmp_path / "copy"
    main(["fit", *tiny_args(data_root, original, "--trainer.max_epochs", "1")])
    shutil.copytree(original, copy)
    shutil.rmtree(original)  # last.ckpt still names the original folder's best checkpoint
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["test", *tiny_args(data_root, copy), "--ckpt_path", "best"])
    # Lightning warns that the checkpoint callback's record stays behind: irrelevant to a test, so not restored
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    assert len([row for row in read_metrics(copy) if row.get("test/acc")]) == 1
    assert not original.exists()


@pytest.mark.slow  # a second of training
def test_a_checkpoint_older_than_an_architecture_option_tests_and_resumes_as_trained(data_root, tmp_path, capsys):
    """Options added since a checkpoint was written (conv_mlp, stem_channels) are absent from it: it is rebuilt with
    the model's defaults (the architecture it had), not with today's default config (which turns conv_mlp on)."""
    run_dir = tmp_path / "run"
    conv = ("--model.tokenizer", "conv", "--model.pool", "seq", "--model.patch_size", "4", "--model.dim", "16")
    main(["fit", *tiny_args(data_root, run_dir, *conv, "--model.conv_mlp", "false", "--trainer.max_epochs", "1")])
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    for option in ("conv_mlp", "stem_channels"):
        del checkpoint["hyper_parameters"][option]
    torch.save(checkpoint, last)
    assert yaml.safe_load(open("configs/default.yaml"))["model"]["conv_mlp"] is True
    main(["test", *tiny_args(data_root, run_dir, *conv), "--ckpt_path", "last"])  # conv_mlp: not given
    assert "test/acc" in capsys.readouterr().out
    main(["fit", *tiny_args(data_root, run_dir, *conv, "--trainer.max_epochs", "2"), "--ckpt_path", "last"])
    assert "Epoch 2/2" in capsys.readouterr().out
