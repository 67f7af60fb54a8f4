"""Bad input through the CLI: one line saying what is wrong and how to fix it, a non-zero exit, nothing written."""

import contextlib
import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from support import REPO, tiny_args, user_error, write_dataset
from vit_lightning.training.cli import main
from vit_lightning.data.idx import read_idx, write_idx
from vit_lightning.errors import UserError



@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny dataset and a run folder holding a one-epoch model's checkpoints."""
    root = tmp_path_factory.mktemp("trained")
    data_root = write_dataset(root / "data", gz=True)
    main(["fit", *tiny_args(data_root, root / "run", "--trainer.max_epochs", "1")])
    return data_root, root / "run"


@pytest.mark.parametrize("flag, value, message", [("--model.dimm", "16", "unrecognized arguments: --model.dimm"),
                                                  ("--trainer.max_epochs", "abc", "trainer.max_epochs")])
def test_unknown_key_or_wrong_type_is_a_parser_error(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--trainer.default_root_dir", str(tmp_path / "run"), flag, value])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert message in stderr and "Traceback" not in stderr
    assert not (tmp_path / "run").exists()


def test_some_data_files_missing_are_named(tmp_path, capsys):
    data_root = write_dataset(tmp_path / "data")
    (data_root / "t10k-labels-idx1-ubyte").unlink()
    error = user_error(capsys, "fit", *tiny_args(data_root, tmp_path / "run"))
    assert "missing t10k-labels-idx1-ubyte" in error and "--data.root" in error


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("damage", ["magic", "size"])
def test_corrupt_idx_file_is_named(tmp_path, capsys, gz, damage):
    data_root = write_dataset(tmp_path / "data", gz=gz)
    path = data_root / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    data = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    data = b"\x00\x00\x0d\x03" + data[4:] if damage == "magic" else data[:-28 * 28]
    path.write_bytes(gzip.compress(data) if gz else data)
    error = user_error(capsys, "fit", *tiny_args(data_root, tmp_path / "run"))
    assert str(path) in error and ("not an IDX file" if damage == "magic" else "is corrupt") in error
    assert "replace it" in error


@contextlib.contextmanager
def without_root():
    """Run the block as an ordinary user (uid 65534) when the tests run as root, who may read any file."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_an_idx_file_without_read_permission_says_so(tmp_path):
    path = write_idx(tmp_path / "train-labels-idx1-ubyte", torch.zeros(3, dtype=torch.uint8))
    path.chmod(0)
    with without_root(), pytest.raises(UserError) as error:
        read_idx(path)
    assert str(error.value) == f"{path} cannot be read (permission denied); make it readable"


@pytest.mark.parametrize("content, problem", [("", "is empty"), ("# settings to come\n", "is empty"),
                                              ("- 1\n- 2\n", "holds no settings")])
def test_a_config_file_without_settings_is_one_line(data_root, tmp_path, capsys, content, problem):
    config = tmp_path / "settings.yaml"
    config.write_text(content)
    error = user_error(capsys, "fit", "--config", str(config), *tiny_args(data_root, tmp_path / "run"))
    assert error == f"error: --config {config} {problem}; give YAML `option: value` lines, as in configs/quick.yaml"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, message", [(["--model.patch_size", "5"], "not divisible by patch_size=5"),
                                            (["--model.heads", "3"], "dim=16 is not divisible by heads=3")])
def test_impossible_model_settings_are_one_line(data_root, tmp_path, capsys, flags, message):
    error = user_error(capsys, "fit", *tiny_args(data_root, tmp_path / "run", *flags))
    assert message in error and "choose" in error
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_impossible_model_settings_in_a_real_process(data_root, tmp_path):
    result = subprocess.run([sys.executable, "train.py", "fit", *tiny_args(data_root, tmp_path / "run"),
                             "--model.patch_size", "5"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: image_size=28 is not divisible by patch_size=5")


def test_checkpoint_of_another_architecture_is_one_line(trained, tmp_path, capsys):
    data_root, run_dir = trained
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    del checkpoint["hyper_parameters"]  # as from a model that does not save them: the CLI's settings apply
    other = tmp_path / "other.ckpt"
    torch.save(checkpoint, other)
    for subcommand in ("test", "fit"):
        error = user_error(capsys, subcommand, *tiny_args(data_root, tmp_path / "run", "--model.dim", "32"),
                           "--ckpt_path", str(other))
        assert f"--ckpt_path {other} does not fit this model" in error
        assert "(16,) in the checkpoint but (32,) in the model" in error and "--model settings" in error


def test_predict_reports_bad_files_and_predicts_the_good_ones(trained, tmp_path, capsys):
    data_root, run_dir = trained
    images = tmp_path / "images"
    images.mkdir()
    Image.new("L", (28, 28), 200).save(images / "good.png")
    (images / "broken.png").write_bytes(b"not an image")
    output = tmp_path / "predictions.csv"
    main(["predict", *tiny_args(data_root, run_dir), "--ckpt_path", "last", "--data.predict_path", str(images),
          "--predictions.output", str(output)])
    assert f"skipped {images / 'broken.png'}: not a readable image" in capsys.readouterr().out
    assert [line.split(",")[0] for line in output.read_text().splitlines()] == ["file", "good.png"]

    (images / "good.png").unlink()
    for path in (images, images / "broken.png"):
        error = user_error(capsys, "predict", *tiny_args(data_root, run_dir), "--ckpt_path", "last",
                           "--data.predict_path", str(path))
        assert f"no readable images in --data.predict_path {path}" in error


def test_unwritable_output_locations_fail_before_anything_runs(trained, tmp_path, capsys):
    data_root, run_dir = trained
    blocker = tmp_path / "a_file"
    blocker.write_text("a file, not a folder")
    error = user_error(capsys, "fit", *tiny_args(data_root, blocker / "run"))
    assert error == (f"error: --trainer.default_root_dir: cannot create {blocker / 'run'} because {blocker} is a "
                     "file; choose another location")
    predict = ["predict", *tiny_args(data_root, run_dir), "--ckpt_path", "last", "--data.predict_path", str(tmp_path)]
    error = user_error(capsys, *predict, "--predictions.output", str(blocker / "out.csv"))
    assert error.startswith("error: --predictions.output: cannot create")
    error = user_error(capsys, *predict, "--predictions.output", str(tmp_path))
    assert error.startswith(f"error: --predictions.output {tmp_path} is a folder")
    assert blocker.read_text() == "a file, not a folder"


@pytest.mark.parametrize("subcommand, flags, trained_with", [
    ("fit", ["--model.dim", "32"], "--model.dim 16, not --model.dim 32"),
    ("fit", ["--model.optimizer.init_args.lr", "0.1"], "lr 0.003, not --model.optimizer.init_args.lr 0.1"),
    ("fit", ["--model.lr_schedule", "warmup_cosine"], "--model.lr_schedule onecycle, not --model.lr_schedule warmup_cosine"),
    ("test", ["--model.depth", "2"], "--model.depth 1, not --model.depth 2"),
])
def test_model_flags_that_contradict_the_checkpoint_are_refused(trained, tmp_path, capsys, subcommand, flags,
                                                                trained_with):
    data_root, run_dir = trained
    before = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    error = user_error(capsys, subcommand, *tiny_args(data_root, run_dir, *flags), "--ckpt_path", "last")
    assert error.startswith(f"error: --ckpt_path {run_dir / 'checkpoints' / 'last.ckpt'} was trained with ")
    assert trained_with in error and "drop these flags" in error
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == before


def test_training_only_flags_do_not_stop_an_evaluation(trained, tmp_path):
    data_root, run_dir = trained
    main(["test", *tiny_args(data_root, tmp_path / "out", "--model.optimizer.init_args.lr", "0.1"),
          "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])
    assert (tmp_path / "out" / "logs" / "test" / "metrics.csv").is_file()


def test_a_training_set_smaller_than_one_batch_is_one_line(data_root, tmp_path, capsys):
    error = user_error(capsys, "fit", *tiny_args(data_root, tmp_path / "run", "--data.val_size", "210"))
    assert error == ("error: 30 training images (after --data.val_size 210) do not fill one batch of "
                     "--data.batch_size 40; lower --data.val_size or --data.batch_size")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("subcommand, images, labels, message", [
    ("fit", torch.zeros(240, 20, 20), torch.zeros(240), "train-images-idx3-ubyte holds 20x20 images, not 28x28"),
    ("fit", torch.zeros(240, 28, 28), torch.full((240,), 12), "train-labels-idx1-ubyte holds label 12, outside"),
    ("test", torch.zeros(101, 28, 28), torch.full((101,), 255), "t10k-labels-idx1-ubyte holds label 255, outside"),
    ("fit", torch.zeros(0, 28, 28), torch.zeros(0), "train-images-idx3-ubyte holds no images"),
])
def test_idx_data_that_does_not_fit_the_dataset_is_named(tmp_path, capsys, subcommand, images, labels, message):
    data_root = write_dataset(tmp_path / "data")
    split = "t10k" if subcommand == "test" else "train"
    write_idx(data_root / f"{split}-images-idx3-ubyte", images.to(torch.uint8))
    write_idx(data_root / f"{split}-labels-idx1-ubyte", labels.to(torch.uint8))
    error = user_error(capsys, subcommand, *tiny_args(data_root, tmp_path / "run"))
    assert error.startswith(f"error: {data_root}/") and message in error and "replace it" in error


@pytest.mark.parametrize("flags, message", [
    (["--model.heads", "0"], "heads=0 must be at least 1"),
    (["--model.patch_size", "0"], "patch_size=0 must be at least 1"),
    (["--trainer.max_epochs", "-5"], "--trainer settings: `max_epochs` must be a non-negative integer or -1"),
    (["--model.optimizer.init_args.lr", "-0.1"], "--model.optimizer: Invalid learning rate: -0.1"),
    (["--data.num_workers", "-1"], "--data.num_workers must be at least 0, got -1"),
    (["--data.eval_batch_size", "0"], "--data.eval_batch_size must be at least 1, got 0"),
    (["--model.label_smoothing", "-0.1"], "--model.label_smoothing must be in [0, 1], got -0.1"),
    (["--model.label_smoothing", "1.5"], "--model.label_smoothing must be in [0, 1], got 1.5"),
    (["--data.seed", str(2**64)], f"--data.seed must be from 0 to 4294967295 (as --seed_everything), got {2**64}"),
])
def test_settings_out_of_range_are_one_line_before_anything_is_written(data_root, tmp_path, capsys, flags, message):
    error = user_error(capsys, "fit", *tiny_args(data_root, tmp_path / "run", *flags))
    assert error.startswith(f"error: {message}")
    assert not (tmp_path / "run").exists()


def test_prediction_outputs_that_cannot_be_written_fail_before_predicting(trained, tmp_path, capsys):
    data_root, run_dir = trained
    Image.new("L", (28, 28), 200).save(tmp_path / "good.png")
    read_only = tmp_path / "old.csv"
    read_only.write_text("file,class,confidence\n")
    read_only.chmod(0o444)
    predict = ["predict", *tiny_args(data_root, run_dir), "--ckpt_path", "last", "--data.predict_path",
               str(tmp_path / "good.png")]
    for output, message in (("/proc/x.csv", "--predictions.output: /proc is not writable"),
                            (str(read_only), f"--predictions.output {read_only} is read-only"),
                            (f"{tmp_path / 'out'}/", f"--predictions.output {tmp_path / 'out'} is a folder")):
        assert user_error(capsys, *predict, "--predictions.output", output).startswith(f"error: {message}")
    assert read_only.read_text() == "file,class,confidence\n" and not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_log_folder_fails_before_anything_runs(data_root, tmp_path, capsys):
    logs = tmp_path / "run" / "logs"
    logs.mkdir(parents=True)
    logs.chmod(0o555)
    error = user_error(capsys, "fit", *tiny_args(data_root, tmp_path / "run"))
    assert error == f"error: --trainer.default_root_dir: {logs} is not writable; choose a location you can write to"


def test_a_schedule_without_a_length_is_one_line(data_root, tmp_path, capsys):
    error = user_error(capsys, "fit", *tiny_args(data_root, tmp_path / "run", "--trainer.max_epochs", "-1"))
    assert error.startswith("error: --model.lr_schedule onecycle needs the length of training")
    assert "--trainer.max_steps or --trainer.max_time" in error


def test_a_logger_whose_package_is_missing_is_one_line(data_root, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        pytest.skip("tensorboard is installed")
    error = user_error(capsys, "fit", *tiny_args(data_root, tmp_path / "run", "--trainer.logger", "TensorBoardLogger",
                                                 "--trainer.logger.save_dir", str(tmp_path / "tb")))
    assert error == ("error: TensorBoardLogger needs tensorboardX or tensorboard, which is not installed: "
                     "pip install tensorboard")
