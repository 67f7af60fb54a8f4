"""configs/gpu.yaml (bf16-mixed, torch.compile, the larger model) for a few steps on a CUDA device: fit, resume,
test and export. Skipped where there is no CUDA device (``pytest -m gpu`` selects these)."""

import pytest
import torch

from support import read_metrics
from vit_lightning.export import main as export
from vit_lightning.training.cli import main
from vit_lightning.training.presets import preset_file

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_gpu_config_fits_resumes_tests_and_exports(data_root, tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["--config", str(preset_file("gpu")), "--data.root", str(data_root), "--data.download", "false",
             "--data.val_size", "40", "--data.batch_size", "40", "--data.eval_batch_size", "32",
             "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false"]
    main(["fit", *flags, "--trainer.max_epochs", "1"])
    last = run / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True, map_location="cpu")
    assert first["hyper_parameters"]["dim"] == 256 and first["global_step"] == 5  # 200 images, batch 40
    assert all(tensor.dtype == torch.float32 and torch.isfinite(tensor).all() for tensor in first["state_dict"].values())
    assert not any("_orig_mod" in key for key in first["state_dict"])  # compiled in place: plain parameter names

    main(["fit", *flags, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert torch.load(last, weights_only=True, map_location="cpu")["global_step"] == 10

    main(["test", *flags, "--ckpt_path", "last"])
    [row] = read_metrics(run, "test/acc")
    assert 0.0 < float(row["test/acc"]) and int(row["step"]) == 10

    capsys.readouterr()
    export(["--ckpt_path", str(last), "--output", str(tmp_path / "export"), "--data.root", str(data_root),
            "--limit", "64"])
    out = capsys.readouterr().out
    assert "same class 64/64 (100.00%)" in out and (tmp_path / "export" / "model.safetensors").is_file()
