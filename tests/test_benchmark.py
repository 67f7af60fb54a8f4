"""The benchmark is not a test of speed: this only checks that it runs and reports every figure."""

import re

from vit_lightning.benchmark import main


def test_benchmark_runs_on_a_tiny_configuration(capsys):
    main(["--preset", "quick", "--device", "cpu", "--batch-size", "16", "--steps", "2", "--warmup", "1",
          "--peak-size", "128"])
    out = capsys.readouterr().out
    for label in ("Lightning Trainer", "plain PyTorch loop", "Lightning / plain ratio", "FLOPs per image",
                  "matmul peak", "MFU", "data pipeline share", "inference images/s", "peak memory"):
        line = next(line for line in out.splitlines() if label in line)
        assert re.search(r"\d", line.split(":", 1)[1]), line
    flops = float(re.search(r"FLOPs per image.*?([\d.]+) MFLOP", out).group(1))
    assert 40 < flops < 60  # quick preset: ~48.5 MFLOP per training image, attention included
