"""Real 2-process DDP on CPU (gloo), launched as train.py subprocesses the way users run it."""

import csv
import os
import signal
import subprocess
import sys

import pytest
import torch

from support import REPO, TESTS, logged_after_epoch, read_metrics, run_train, tiny_args, write_dataset
from vit_lightning.data.datasets import DATASETS, normalize, unit_range
from vit_lightning.data.idx import find_idx_files, load_split
from vit_lightning.serving.checkpoints import TRAINING_WEIGHTS
from vit_lightning.training.module import ViTClassifier
from vit_lightning.training.presets import preset_file

pytestmark = pytest.mark.slow  # every test here starts train.py processes

DDP = ["--config", "configs/ddp.yaml", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1",  # and hooks.py importable: --trainer.callbacks+=hooks.NAME
       "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
THROTTLE = 0.3  # seconds before each training batch of the module's fit


def train(*args: str) -> subprocess.CompletedProcess:
    result = run_train(*args, env=ENV)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """A 2-process fit, slowed down to a known least time per batch."""
    tmp = tmp_path_factory.mktemp("ddp")
    data_root = write_dataset(tmp / "data", gz=True)
    run_dir = tmp / "run"
    fit = train("fit", *tiny_args(data_root, run_dir), *DDP, "--trainer.callbacks+=hooks.Throttle",
                f"--trainer.callbacks.seconds={THROTTLE}")
    return data_root, run_dir, fit


def test_ddp_fit_writes_once_from_rank_zero(ddp_run):
    _, run_dir, fit = ddp_run
    assert fit.stdout.count("Epoch 2/2, Train Loss:") == 1  # the summary line comes from rank 0 only
    assert "sync_dist" not in fit.stderr  # every epoch-level metric is reduced over the processes
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "last.ckpt"
    assert len(list((run_dir / "logs").iterdir())) == 1  # one log folder, not one per rank
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    # 200 training images, global batch 40: 5 steps per epoch on 2 processes, as on 1.
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 10
    assert len(read_metrics(run_dir, "val/acc")) == 2


def test_ddp_images_per_sec_counts_the_images_of_both_processes_once(ddp_run):
    _, run_dir, _ = ddp_run
    most = 200 / (5 * THROTTLE)  # an epoch's 200 images take 5 batches of at least THROTTLE seconds each
    for row in read_metrics(run_dir, "train/images_per_sec"):
        assert most / 2 < float(row["train/images_per_sec"]) <= most  # one process's images only: at most half


def test_ddp_resume_with_ckpt_path_last(ddp_run, tmp_path):
    data_root, run_dir, _ = ddp_run
    resumed = tmp_path / "resumed"
    import shutil

    shutil.copytree(run_dir, resumed)
    train("fit", *tiny_args(data_root, resumed), *DDP, "--trainer.max_epochs", "3", "--ckpt_path", "last")
    checkpoint = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["global_step"] == 15


def test_test_accuracy_is_identical_on_one_and_two_processes(ddp_run, tmp_path):
    """101 test images do not split evenly: no sample may be dropped or counted twice."""
    data_root, run_dir, _ = ddp_run
    checkpoint = str(run_dir / "checkpoints" / "last.ckpt")
    results = {}
    for name, extra in (("one", []), ("two", DDP)):
        out = tmp_path / name
        train("test", *tiny_args(data_root, out), *extra, "--ckpt_path", checkpoint, "--data.eval_batch_size", "16")
        [row] = read_metrics(out, "test/acc")
        results[name] = (float(row["test/acc"]), float(row["test/loss"]))
    assert results["one"][0] == pytest.approx(results["two"][0], abs=1e-6)
    assert results["one"][1] == pytest.approx(results["two"][1], abs=1e-5)
    # Both are the checkpoint's own count of right answers out of 101, computed here; a padded (repeated) or
    # dropped sample changes the fraction unless none or all are right, which the count rules out.
    images, labels = load_split(find_idx_files(data_root, "mnist"), "test")
    model = ViTClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    info = DATASETS["mnist"]
    with torch.no_grad():
        right = (model(normalize(unit_range(images), info.mean, info.std)).argmax(-1) == labels).sum().item()
    assert len(labels) == 101 and 0 < right < 101
    assert results["two"][0] == pytest.approx(right / 101, abs=1e-6)


def test_ddp_weight_averaging_validates_saves_and_resumes_the_average(ddp_run, tmp_path):
    """Two processes with configs/ema.yaml: what the fit validated (reduced over both) is the checkpoint's average,
    which evaluating it on one process reproduces; a resumed 2-process fit carries both states on."""
    data_root, _, _ = ddp_run
    run_dir = tmp_path / "ema"
    ema = ("--config", str(preset_file("ema")))
    train("fit", *tiny_args(data_root, run_dir, *ema), *DDP)
    last = run_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["averaging_state"]["n_averaged"] == saved["global_step"] == 10
    head = "model.head.weight"
    assert not torch.equal(saved["state_dict"][head], saved[TRAINING_WEIGHTS][head])
    fitted = logged_after_epoch(run_dir, "val/loss", 1)
    validated = tmp_path / "validated"
    train("validate", *tiny_args(data_root, validated), "--ckpt_path", str(last))
    assert float(read_metrics(validated, "val/loss")[-1]["val/loss"]) == pytest.approx(fitted, rel=1e-5)

    train("fit", *tiny_args(data_root, run_dir, *ema, "--trainer.max_epochs", "3"), *DDP, "--ckpt_path", "last")
    resumed = torch.load(last, weights_only=True)
    assert resumed["averaging_state"]["n_averaged"] == resumed["global_step"] == 15
    assert not torch.equal(resumed["state_dict"][head], resumed[TRAINING_WEIGHTS][head])


def test_ddp_predict_gathers_every_image_once(ddp_run, tmp_path):
    from PIL import Image

    data_root, run_dir, _ = ddp_run
    images = tmp_path / "images"
    images.mkdir()
    for value in range(0, 250, 50):  # 5 images: uneven between 2 ranks
        Image.new("L", (28, 28), value).save(images / f"img{value:03d}.png")
    output = tmp_path / "predictions.csv"
    train("predict", *tiny_args(data_root, tmp_path / "out"), *DDP, "--ckpt_path",
          str(run_dir / "checkpoints" / "last.ckpt"), "--data.predict_path", str(images),
          "--predictions.output", str(output))
    rows = list(csv.DictReader(output.open()))
    assert [row["file"] for row in rows] == [f"img{v:03d}.png" for v in range(0, 250, 50)]


def test_a_mistake_every_process_finds_is_one_line_once(tmp_path):
    """Found by every rank after the launch (the global batch is checked once the processes exist): rank 0 says it."""
    data_root = write_dataset(tmp_path / "data", gz=True)
    result = run_train("fit", *tiny_args(data_root, tmp_path / "run"), *DDP, "--data.batch_size", "41", env=ENV)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert [line for line in result.stderr.splitlines() if "error" in line.lower()] == [
        "error: --data.batch_size 41 is the global batch and must divide evenly between 2 processes; choose a "
        "multiple of 2"]


@pytest.mark.parametrize("signum, group, at, batch, stopped_epoch, resume", [
    (signal.SIGINT, False, "train", 2, 1, False),  # kill -INT <main pid> (a resumed DDP fit: test_ddp_resume_with_ckpt_path_last)
    (signal.SIGTERM, False, "train", 2, 1, False),  # kill <main pid>
    (signal.SIGINT, True, "train", 2, 1, False),  # Ctrl-C in a terminal: the whole process group
    # Validation shards of 21 and 20 images: rank 0 has 6 batches of 4, rank 1 has 5. Batch 1 is no rank's last:
    # every rank stops after it; batch 4 is rank 1's last: every rank finishes validation and stops after it.
    (signal.SIGTERM, True, "validation", 1, 1, True),
    (signal.SIGINT, False, "validation", 4, 2, True),
])
def test_a_signal_to_the_main_process_or_its_group_stops_every_rank_and_saves_once(tmp_path, signum, group, at,
                                                                                  batch, stopped_epoch, resume):
    """Signalled as batch ``batch`` of epoch 1's ``at`` starts, every rank stops at the same point, and the run
    resumes (checked for each validation case: a resume costs another DDP run)."""
    data_root = write_dataset(tmp_path / "data", gz=True)
    run_dir = tmp_path / "run"
    uneven = ["--data.val_size", "41", "--data.eval_batch_size", "4"] if at == "validation" else []
    args = [*tiny_args(data_root, run_dir, "--trainer.max_epochs", "4", *uneven), *DDP]
    interrupt = ["--trainer.callbacks+=hooks.Interrupt", f"--trainer.callbacks.at={at}", "--trainer.callbacks.epoch=1",
                 f"--trainer.callbacks.batch={batch}", f"--trainer.callbacks.signum={int(signum)}",
                 f"--trainer.callbacks.group={group}"]
    # its own session, so that a signal to the process group reaches the ranks and not pytest
    result = subprocess.run([sys.executable, "train.py", "fit", *args, *interrupt], cwd=REPO, env=ENV, text=True,
                            capture_output=True, timeout=240, start_new_session=True)  # a hang fails here
    cause, status = ("Ctrl-C", 1) if signum == signal.SIGINT else ("SIGTERM", 143)
    assert result.returncode == status and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    [line] = [line for line in result.stderr.splitlines() if " stopped at " in line]
    assert line == (f"{cause}: stopped at epoch {stopped_epoch}, step 8; saved {last}; "
                    "resume with the same command plus --ckpt_path last")
    assert torch.load(last, weights_only=True)["global_step"] == 8 and not list(last.parent.glob("*.tmp"))

    if not resume:
        return
    train("fit", *args, "--ckpt_path", "last")
    steps_per_epoch = 4 if uneven else 5  # 199 or 200 training images: 99 or 100 per process, 20 per batch
    assert torch.load(last, weights_only=True)["global_step"] == 4 * steps_per_epoch
    assert len(read_metrics(run_dir, "val/acc")) == 4  # every epoch validated once
