"""The shipped opt-in configs work through the real CLI."""

from pathlib import Path

from conftest import tiny_args
from vit_lightning.cli import main

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_early_stopping_config_stops_a_run_that_stopped_improving(data_root, tmp_path, capsys):
    # A learning rate of 1e-9 leaves the weights as they are: val/acc cannot improve after the first epoch,
    # so a patience of 3 stops the run after epoch 4 of 20.
    main(["fit", *tiny_args(data_root, tmp_path / "run", "--config", str(CONFIGS / "early_stopping.yaml"),
                            "--trainer.max_epochs", "20", "--model.lr_schedule", "constant",
                            "--model.optimizer.init_args.lr", "1e-9")])
    out = capsys.readouterr().out
    assert "Epoch 4/20," in out and "Epoch 5/20," not in out
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
