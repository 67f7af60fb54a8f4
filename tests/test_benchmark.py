"""The benchmark is not a test of speed: this only checks that it runs and reports every figure."""

import re

import pytest

from vit_lightning.benchmark import configured, main
from vit_lightning.errors import exit_on_user_error


@pytest.mark.slow  # several seconds of training
def test_benchmark_runs_on_a_tiny_configuration(capsys, tmp_path):
    main(["--preset", "quick", "--device", "cpu", "--batch-size", "16", "--steps", "2", "--warmup", "1",
          "--peak-size", "128"])
    out = capsys.readouterr().out
    for label in ("Lightning Trainer", "plain PyTorch loop", "Lightning / plain ratio", "FLOPs per image",
                  "matmul peak", "MFU", "data pipeline share", "inference images/s", "peak memory", "fp32 / bf16"):
        line = next(line for line in out.splitlines() if label in line)
        assert re.search(r"\d", line.split(":", 1)[1]), line
    advice = next(line for line in out.splitlines() if line.startswith("plain-loop images/s, 32-true / bf16-mixed"))
    assert re.search(r"(32-true|bf16-mixed) is [\d.]+x faster .*--trainer.precision (32-true|bf16-mixed)$", advice)
    flops = float(re.search(r"FLOPs per image.*?([\d.]+) MFLOP", out).group(1))
    # By hand: the matmuls of the blocks (QKV, projection, MLP, attention's two products) and of the conv
    # tokenizer's two stride-2 convolutions, forward and backward (3x; 2x for the first convolution, whose
    # input needs no gradient).
    model = configured("quick", tmp_path, batch_size=16, compile=False)[0].hparams  # as train.py fit builds it
    assert model["tokenizer"] == "conv" and model["pool"] == "seq" and model["patch_size"] == 4
    tokens, dim, hidden = (28 // model["patch_size"]) ** 2, model["dim"], int(model["dim"] * model["mlp_ratio"])
    block = 2 * tokens * dim * (3 * dim + dim + 2 * hidden) + 2 * 2 * tokens * tokens * dim
    first_conv, second_conv = 2 * 14 * 14 * 9 * (dim // 2), 2 * 7 * 7 * 9 * (dim // 2) * dim
    expected = 3 * model["depth"] * block + 2 * first_conv + 3 * second_conv
    assert flops == pytest.approx(expected / 1e6, rel=0.05)


def test_a_missing_preset_is_one_line_naming_the_presets(capsys):
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: main(["--preset", "fastest"]))  # what `python -m vit_lightning.benchmark` runs
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1
    assert err.startswith("error: no preset") and "quick" in err
