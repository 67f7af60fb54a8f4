"""Checkpoints and the metrics log are replaced atomically: a failed or interrupted save never costs what was
there before."""

import contextlib
import resource
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vit_lightning.serving.checkpoints import resolve_checkpoint
from vit_lightning.training.checkpointing import AtomicCheckpointIO
from vit_lightning.training.metrics_log import ResumableCSVLogger


@contextlib.contextmanager
def file_size_limit(size: int):
    """Writing a file past ``size`` bytes fails (OSError), as on a full disk."""
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)


def test_failed_save_leaves_the_previous_last_checkpoint_intact(tmp_path):
    io = AtomicCheckpointIO(TorchCheckpointIO())
    last = tmp_path / "last.ckpt"
    good = {"state_dict": {"weight": torch.ones(10)}, "global_step": 1}
    io.save_checkpoint(good, last)
    size = last.stat().st_size
    # The next save runs out of space half-way: the file-size limit makes the write itself fail.
    with file_size_limit(size * 2), pytest.raises(OSError):
        io.save_checkpoint({"state_dict": {"weight": torch.zeros(100_000)}, "global_step": 2}, last)
    assert resolve_checkpoint("last", tmp_path, fit=True) == str(last)
    assert [path.name for path in tmp_path.iterdir()] == ["last.ckpt"]  # no half-written temporary file left
    restored = torch.load(last, weights_only=True)
    assert restored["global_step"] == 1 and torch.equal(restored["state_dict"]["weight"], torch.ones(10))


@pytest.mark.parametrize("checkpoint_io", [AtomicCheckpointIO(TorchCheckpointIO()), TorchCheckpointIO()],
                         ids=["ours", "lightning"])
def test_a_save_replaces_the_checkpoint_by_a_rename_even_with_the_temp_folder_on_another_filesystem(
        tmp_path, monkeypatch, checkpoint_io):
    """Why AtomicCheckpointIO exists: with the system temp folder on another filesystem (here /dev/shm), Lightning's
    own writer copies into the existing file, which a crash mid-copy truncates; ours always renames."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test folder")
    monkeypatch.setattr(tempfile, "tempdir", tempfile.mkdtemp(dir=shm))
    last = tmp_path / "last.ckpt"
    checkpoint_io.save_checkpoint({"global_step": 1}, last)
    with last.open("rb") as reader:  # e.g. a resume that is reading it when the next save lands
        checkpoint_io.save_checkpoint({"global_step": 2}, last)
        renamed = torch.load(reader, weights_only=True)["global_step"] == 1  # the old file is untouched
    assert torch.load(last, weights_only=True)["global_step"] == 2
    assert renamed == isinstance(checkpoint_io, AtomicCheckpointIO)
    shutil.rmtree(tempfile.tempdir)


def test_a_metric_that_widens_the_log_while_the_disk_fills_leaves_the_log_intact(tmp_path):
    """A new metric (the first validation's) makes the CSV writer rewrite metrics.csv with a wider header; Lightning's
    writer empties the file first, so a failure or a kill during the rewrite loses the rows logged before."""
    logger = ResumableCSVLogger(str(tmp_path))
    for step in range(200):  # each row is written as it is logged
        logger.log_metrics({"train/loss": 1 / (step + 1)}, step=step)
    metrics = Path(logger.log_dir) / "metrics.csv"
    logged = metrics.read_text()
    with file_size_limit(len(logged) + 100), pytest.raises(OSError):  # each row gets a column: 200 bytes more
        logger.log_metrics({"val/acc": 0.5}, step=200)
    assert metrics.read_text() == logged
    assert sorted(path.name for path in metrics.parent.iterdir()) == ["metrics.csv"]  # no temporary file left
    logger.save()  # room again: the new row lands under the wider header
    rows = metrics.read_text().splitlines()
    assert rows[0].split(",") == ["step", "train/loss", "val/acc"] and rows[-1] == "200,,0.5" and len(rows) == 202
