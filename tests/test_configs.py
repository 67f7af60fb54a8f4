"""The shipped opt-in configs work through the real CLI."""

import logging

import pytest

from support import read_metrics, resolved, tiny_args
from vit_lightning.training.cli import main
from vit_lightning.training.presets import preset_file


def test_early_stopping_config_stops_a_run_that_stopped_improving(data_root, tmp_path, capsys):
    # A learning rate of 1e-9 leaves the weights as they are: val/acc cannot improve after the first epoch,
    # so a patience of 3 stops the run after epoch 4 of 20.
    main(["fit", *tiny_args(data_root, tmp_path / "run", "--config", str(preset_file("early_stopping")),
                            "--trainer.max_epochs", "20", "--model.lr_schedule", "constant",
                            "--model.optimizer.init_args.lr", "1e-9")])
    out = capsys.readouterr().out
    assert "Epoch 4/20," in out and "Epoch 5/20," not in out
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow  # several seconds of training
def test_learning_rate_search_sets_the_schedule_peak_and_is_skipped_on_resume(data_root, tmp_path, capsys, caplog):
    run_dir = tmp_path / "run"
    flags = ["--config", str(preset_file("lr_find")), "--trainer.callbacks.num_training_steps=30",  # of 100
             "--model.lr_schedule", "warmup_cosine",
             "--model.warmup_fraction", "0.3", "--trainer.max_epochs", "3"]
    with caplog.at_level(logging.INFO):
        main(["fit", *tiny_args(data_root, run_dir, *flags)])
    found = [r.getMessage() for r in caplog.records if r.getMessage().startswith("learning-rate search: peak")]
    assert len(found) == 1
    suggestion = float(found[0].rsplit(" ", 1)[1])
    logged = [float(row["lr-MuonAdamW/pg1"]) for row in read_metrics(run_dir) if row.get("lr-MuonAdamW/pg1")]
    assert max(logged) == pytest.approx(suggestion, rel=1e-2)  # the warm-up climbs to the suggestion, not to 1e-3
    assert suggestion != pytest.approx(1e-3)
    assert not list(run_dir.glob(".lr_find_*.ckpt"))  # the search's temporary checkpoint is gone

    caplog.clear()
    steps = int(read_metrics(run_dir)[-1]["step"])
    with caplog.at_level(logging.INFO):
        main(["fit", *tiny_args(data_root, run_dir, *flags[:-1], "5"), "--ckpt_path", "last"])
    assert any("learning-rate search skipped" in r.getMessage() for r in caplog.records)
    assert int(read_metrics(run_dir)[-1]["step"]) > steps  # it went on from the checkpoint's step


def test_every_run_config_is_accepted_by_the_cli(capsys):
    # each file is parsed and checked on its own, so a misspelt or mistyped key in any of them exits non-zero
    names = ["quick", "fashion_mnist", "small_data", "long", "gpu", "ddp", "early_stopping", "lr_find", "wandb"]
    config = resolved(capsys, *names)
    assert config["trainer"]["precision"] == "bf16-mixed" and config["trainer"]["strategy"] == "ddp"


def test_presets_are_the_recipes_readme_measured(capsys):
    default = resolved(capsys)
    assert (default["model"]["depth"], default["trainer"]["max_epochs"], default["data"]["translate"]) == (4, 15, 0.0)
    quick = resolved(capsys, "quick", "fashion_mnist")
    assert (quick["model"]["depth"], quick["trainer"]["max_epochs"], quick["model"]["test_time_flip"]) == (3, 6, True)
    long = resolved(capsys, "fashion_mnist", "long")
    assert (long["model"]["dim"], long["model"]["depth"], long["trainer"]["max_epochs"]) == (96, 6, 33)
    assert (long["data"]["translate"], long["data"]["erasing"], long["trainer"]["precision"]) == (0.07, 0.25, "32-true")
    assert (long["model"]["test_time_shift"], long["trainer"]["check_val_every_n_epoch"]) == (True, 1)
    assert (long["data"]["batch_size"], long["model"]["optimizer"]["init_args"]["lr"]) == (256, 0.004)
    assert long["model"]["optimizer"]["init_args"]["weight_decay"] == 0.05  # the default's, kept beside the new lr
    small = resolved(capsys, "quick", "small_data")
    assert (small["model"]["depth"], small["trainer"]["max_epochs"], small["data"]["translate"]) == (3, 25, 0.1)
    assert small["trainer"]["check_val_every_n_epoch"] == 5
