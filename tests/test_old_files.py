"""Files written before the data/training/serving layout keep working. tests/fixtures/cfd87c3/ holds what main at
commit cfd87c3 wrote for a one-epoch tiny fit (tiny_args' model; support.write_dataset's data): its config.yaml, with
the run's and the data's folders replaced by __RUN__ and __DATA__, and its last.ckpt."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch

from support import TESTS, read_metrics, tiny_args
from vit_lightning.data.datasets import DATASETS
from vit_lightning.export import main as export
from vit_lightning.serving.checkpoints import dataset_record
from vit_lightning.training.cli import main

FIXTURES = TESTS / "fixtures" / "cfd87c3"
OLD_CHECKPOINT = FIXTURES / "last.ckpt"


def old_config(data_root: Path, run_dir: Path) -> str:
    """The old config.yaml with this test's folders, as a file; it names the old class paths."""
    text = (FIXTURES / "config.yaml").read_text()
    for old in ("vit_lightning.callbacks.EpochSummary", "vit_lightning.callbacks.TrainingSpeed",
                "vit_lightning.metrics_log.ResumableCSVLogger"):
        assert f"class_path: {old}\n" in text
    path = run_dir.parent / "old-config.yaml"
    path.write_text(text.replace("__RUN__", str(run_dir)).replace("__DATA__", str(data_root)))
    return str(path)


def test_an_old_config_still_parses_with_its_class_paths(data_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", old_config(data_root, tmp_path / "run"), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "vit_lightning.callbacks.EpochSummary" in printed or "vit_lightning.training.progress.EpochSummary" in printed


@pytest.mark.slow  # trains for seconds
def test_an_old_config_trains(data_root, tmp_path, capsys):
    run = tmp_path / "run"
    main(["fit", "--config", old_config(data_root, run), "--trainer.max_epochs", "2"])
    assert "Epoch 2/1" not in capsys.readouterr().out  # the max_epochs flag applies over the old file
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert {"train/images_per_sec", "val/acc"} <= set(read_metrics(run)[0])  # TrainingSpeed and the CSV log


@pytest.mark.slow  # evaluates, trains and exports
def test_an_old_checkpoint_tests_resumes_and_exports(data_root, tmp_path):
    old = torch.load(OLD_CHECKPOINT, weights_only=True)
    assert old["epoch"] == 0 and old["global_step"] == 5

    main(["test", *tiny_args(data_root, tmp_path / "test"), "--ckpt_path", str(OLD_CHECKPOINT)])
    [row] = read_metrics(tmp_path / "test", "test/acc")
    assert int(row["step"]) == 5

    run = tmp_path / "resumed"
    main(["fit", *tiny_args(data_root, run), "--ckpt_path", str(OLD_CHECKPOINT)])  # to max_epochs 2
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (resumed["epoch"], resumed["global_step"]) == (1, 10)
    assert resumed["dataset"] == dataset_record(DATASETS["mnist"])  # what it lacked is recorded now

    with contextlib.redirect_stdout(io.StringIO()) as printed:
        export(["--ckpt_path", str(OLD_CHECKPOINT), "--output", str(tmp_path / "export"), "--data.root",
                str(data_root), "--limit", "16"])
    assert "same class 16/16 (100.00%)" in printed.getvalue()
