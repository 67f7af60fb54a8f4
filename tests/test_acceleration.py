"""Precision presets and torch.compile through the real CLI on CPU."""

import pytest
import torch

from support import tiny_args
from vit_lightning.training.cli import ViTCLI, main


@pytest.mark.slow  # several seconds of training
def test_bf16_mixed_precision_trains_and_saves_fp32_weights(data_root, tmp_path):
    run_dir = tmp_path / "run"
    main(["fit", *tiny_args(data_root, run_dir), "--trainer.precision", "bf16-mixed", "--trainer.max_epochs", "1"])
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(tensor.dtype == torch.float32 for tensor in state.values())
    assert all(torch.isfinite(tensor).all() for tensor in state.values())


@pytest.mark.slow  # several seconds of training
def test_compiled_model_loads_plain_checkpoints_and_gives_the_same_accuracy(data_root, tmp_path):
    run_dir = tmp_path / "run"
    main(["fit", *tiny_args(data_root, run_dir), "--trainer.max_epochs", "1"])
    checkpoint = str(run_dir / "checkpoints" / "last.ckpt")
    assert not any("_orig_mod" in key for key in torch.load(checkpoint, weights_only=True)["state_dict"])
    accuracies = []
    for compile_flag in ("false", "true"):
        cli = ViTCLI(["validate", *tiny_args(data_root, tmp_path / f"validate-{compile_flag}"), "--ckpt_path",
                      checkpoint, "--model.compile", compile_flag])
        assert (cli.model.model._compiled_call_impl is not None) == (compile_flag == "true")
        accuracies.append(cli.trainer.callback_metrics["val/acc"].item())
    assert abs(accuracies[0] - accuracies[1]) < 1e-6
