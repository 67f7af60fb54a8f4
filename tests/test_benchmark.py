"""The benchmark is not a test of speed: this only checks that it runs and reports every figure, as JSON too."""

import json

import pytest
import torch

from vit_lightning.benchmark import configured, main
from vit_lightning.errors import exit_on_user_error


@pytest.mark.slow  # several seconds of training
def test_benchmark_runs_on_a_tiny_configuration(capsys, tmp_path):
    main(["--preset", "quick", "--device", "cpu", "--batch-size", "16", "--steps", "2", "--warmup", "1",
          "--peak-size", "128", "--results-file", str(tmp_path / "out.json")])
    results = json.loads((tmp_path / "out.json").read_text())
    assert (results["preset"], results["batch_size"], results["steps"], results["precision"]) == ("quick", 16, 2, "32-true")
    rates = results["train_images_per_sec"]
    assert rates["lightning"] > 0 and rates["plain"] > 0
    assert results["lightning_over_plain"] == pytest.approx(rates["lightning"] / rates["plain"])
    peaks = results["matmul_peak_flops"]
    assert peaks["32-true"] > 0 and peaks["bf16-mixed"] > 0
    assert results["mfu"] == pytest.approx(rates["lightning"] * results["train_flops_per_image"] / peaks["32-true"])
    assert 0 <= results["data_share"] < 1 and results["inference_images_per_sec"] > 0 and results["peak_memory_mib"] > 0
    by_precision = results["plain_images_per_sec_by_precision"]
    assert results["faster_precision"] == max(by_precision, key=by_precision.get)
    # the printed report says the same
    out = capsys.readouterr().out
    assert f"training images/s, Lightning Trainer : {rates['lightning']:10.0f}" in out
    assert out.rstrip().endswith(f"--trainer.precision {results['faster_precision']}")
    flops = results["train_flops_per_image"] / 1e6
    # By hand: the matmuls of the blocks (QKV, projection, MLP, attention's two products, the conv MLP's depthwise
    # 3x3 convolution) and of the conv tokenizer's two stride-2 convolutions, forward and backward (3x; 2x for the
    # first convolution, whose input needs no gradient).
    model = configured("quick", tmp_path, batch_size=16, compile=False)[0].hparams  # as train.py fit builds it
    assert model["tokenizer"] == "conv" and model["pool"] == "seq" and model["patch_size"] == 4 and model["conv_mlp"]
    tokens, dim, hidden = (28 // model["patch_size"]) ** 2, model["dim"], int(model["dim"] * model["mlp_ratio"])
    block = 2 * tokens * dim * (3 * dim + dim + 2 * hidden) + 2 * 2 * tokens * tokens * dim + 2 * tokens * 9 * hidden
    first_conv, second_conv = 2 * 14 * 14 * 9 * (dim // 2), 2 * 7 * 7 * 9 * (dim // 2) * dim
    expected = 3 * model["depth"] * block + 2 * first_conv + 3 * second_conv
    assert flops == pytest.approx(expected / 1e6, rel=0.05)


def test_a_missing_preset_is_one_line_naming_the_presets(capsys):
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: main(["--preset", "fastest"]))  # what `python -m vit_lightning.benchmark` runs
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1
    assert err.startswith("error: no preset") and "quick" in err


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--device", "cpu", "--precision", "16-mixed"], "--precision 16-mixed is for CUDA devices"),
    (["--device", "nowhere"], "--device nowhere is not a device"),
    (["--device", "cuda"], "--device cuda: PyTorch sees no CUDA device here"),
])
def test_flags_that_cannot_give_a_figure_are_one_line(capsys, flags, message):
    if "cuda" in flags and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: main(flags))
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1 and err.startswith(f"error: {message}"), err
