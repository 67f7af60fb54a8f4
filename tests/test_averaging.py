"""Weight averaging (configs/ema.yaml): the average is what validation, checkpoints, evaluation and export use, a
resumed fit restores both the average and the training weights, and an interruption mid-validation mixes nothing."""

import csv

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from hooks import copy_state
from support import TESTS, logged_after_epoch, tiny_args, user_error
from vit_lightning.errors import SettingError
from vit_lightning.serving.checkpoints import TRAINING_WEIGHTS
from vit_lightning.training.averaging import ExponentialAveraging
from vit_lightning.training.cli import main
from vit_lightning.training.presets import preset_file

EMA = ("--config", str(preset_file("ema")))


def naive_average(history: list[dict], decay: float) -> dict:
    """The warmed-up EMA of ``history`` (one state per update), one tensor and one update at a time."""
    average = copy_state(history[0])
    for n, state in enumerate(history[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))
        average = {name: d * average[name] + (1 - d) * state[name] if state[name].is_floating_point() else state[name]
                   for name in average}
    return average


def assert_states_close(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_the_average_follows_the_warmed_up_decay_of_a_naive_reference():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))  # float buffers and an integer one (its batch count)
    average = AveragedModel(model, use_buffers=True, multi_avg_fn=ExponentialAveraging(decay=0.8)._move_average)
    history = []
    for _ in range(50):  # the warm-up's (1 + n) / (10 + n) reaches 0.8 at update 35: both regimes
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
            model(torch.randn(4, 3))  # training mode: the running statistics and the batch count move
        history.append(copy_state(model.state_dict()))
        average.update_parameters(model)
    assert_states_close(average.module.state_dict(), naive_average(history, 0.8))


def test_the_decay_warms_up_then_stays_at_its_setting():
    callback = ExponentialAveraging(decay=0.5)
    average, weight = [torch.zeros(1)], [torch.ones(1)]
    callback._move_average(average, weight, torch.tensor(1))  # decay min(0.5, 2/11): the weight counts 9/11
    torch.testing.assert_close(average[0], torch.tensor([9 / 11]))
    callback._move_average(average, weight, torch.tensor(500))  # decay 0.5
    torch.testing.assert_close(average[0], torch.tensor([9 / 11 + (2 / 11) / 2]))


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_a_decay_outside_zero_to_one_is_refused(decay):
    with pytest.raises(SettingError, match="decay must be in"):
        ExponentialAveraging(decay=decay)


def test_checkpoints_validation_and_evaluation_use_the_average(data_root, tmp_path, monkeypatch, recwarn):
    monkeypatch.syspath_prepend(str(TESTS))
    from hooks import RecordWeights

    RecordWeights.steps = []
    run_dir = tmp_path / "run"
    main(["fit", *tiny_args(data_root, run_dir, *EMA), "--trainer.callbacks+=hooks.RecordWeights"])
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert len(RecordWeights.steps) == last["global_step"] == last["averaging_state"]["n_averaged"] == 10
    assert_states_close(last["state_dict"], naive_average(RecordWeights.steps, 0.999))
    assert_states_close(last[TRAINING_WEIGHTS], RecordWeights.steps[-1])
    assert not torch.equal(last["state_dict"]["model.head.weight"], last[TRAINING_WEIGHTS]["model.head.weight"])

    # the fit validated the average: evaluating the checkpoint (its state_dict) gives the same loss, with the
    # averaging callback configured or not, and without Lightning's warning about a checkpoint outside a fit
    fitted = logged_after_epoch(run_dir, "val/loss", 1)
    for extra in ((), EMA):
        main(["validate", *tiny_args(data_root, run_dir, *extra), "--ckpt_path", "last"])
    validated = [float(row["val/loss"]) for row in csv.DictReader((run_dir / "logs" / "validate" / "metrics.csv").open())]
    assert validated == pytest.approx([fitted, fitted], rel=1e-5)
    assert not [str(w.message) for w in recwarn if "WeightAveraging" in str(w.message)]


@pytest.mark.slow
def test_an_interruption_mid_validation_saves_both_and_the_resumed_fit_restores_both(data_root, tmp_path, capsys,
                                                                                   monkeypatch):
    """Mid-validation the module holds the average and the callback's copy the training weights: the checkpoint
    saved there must not swap them, and a resumed fit starts from the training weights with the average intact."""
    monkeypatch.syspath_prepend(str(TESTS))
    from hooks import RecordWeights

    RecordWeights.steps, RecordWeights.at_train_start = [], []
    run_dir = tmp_path / "run"
    args = [*tiny_args(data_root, run_dir, *EMA, "--data.eval_batch_size", "4"), "--trainer.callbacks+=hooks.RecordWeights"]
    with pytest.raises(SystemExit):
        main(["fit", *args, "--trainer.callbacks+=hooks.Interrupt", "--trainer.callbacks.at=validation",
              "--trainer.callbacks.batch=2", "--trainer.callbacks.epoch=0"])
    last = run_dir / "checkpoints" / "last.ckpt"
    assert "saved " + str(last) in capsys.readouterr().err
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == len(RecordWeights.steps) == 5
    assert_states_close(saved["state_dict"], naive_average(RecordWeights.steps, 0.999))
    assert_states_close(saved[TRAINING_WEIGHTS], RecordWeights.steps[-1])

    main(["fit", *args, "--ckpt_path", "last"])
    weights, average = RecordWeights.at_train_start[-1]
    assert_states_close(weights, saved[TRAINING_WEIGHTS])
    assert_states_close(average, saved["state_dict"])
    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["averaging_state"]["n_averaged"] == len(RecordWeights.steps) == 10
    assert_states_close(final["state_dict"], naive_average(RecordWeights.steps, 0.999))

    # resuming it without the averaging would train on from the average and drop it
    error = user_error(capsys, "fit", *tiny_args(data_root, run_dir, "--trainer.max_epochs", "3"), "--ckpt_path", "last")
    assert error == (f"error: --ckpt_path {last} was trained with weight averaging; resume it with --config "
                     "configs/ema.yaml (or the same averaging callback it was trained with)")
