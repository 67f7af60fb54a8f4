"""The benchmark is not a test of speed: this only checks that it runs and reports every figure."""

import re

import pytest

from vit_lightning.benchmark import main, preset_model_args


def test_benchmark_runs_on_a_tiny_configuration(capsys):
    main(["--preset", "quick", "--device", "cpu", "--batch-size", "16", "--steps", "2", "--warmup", "1",
          "--peak-size", "128"])
    out = capsys.readouterr().out
    for label in ("Lightning Trainer", "plain PyTorch loop", "Lightning / plain ratio", "FLOPs per image",
                  "matmul peak", "MFU", "data pipeline share", "inference images/s", "peak memory"):
        line = next(line for line in out.splitlines() if label in line)
        assert re.search(r"\d", line.split(":", 1)[1]), line
    flops = float(re.search(r"FLOPs per image.*?([\d.]+) MFLOP", out).group(1))
    # By hand: the matmuls of the blocks (QKV, projection, MLP, attention's two products), forward and backward.
    model = preset_model_args("quick")
    tokens, dim, hidden = (28 // model["patch_size"]) ** 2 + 1, model["dim"], int(model["dim"] * model["mlp_ratio"])
    block = 2 * tokens * dim * (3 * dim + dim + 2 * hidden) + 2 * 2 * tokens * tokens * dim
    assert flops == pytest.approx(3 * model["depth"] * block / 1e6, rel=0.05)
