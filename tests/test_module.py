"""The LightningModule on its own: learning-rate schedules, weight-decay groups, test-time flips."""

import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

from vit_lightning.training.datamodule import MNISTDataModule
from vit_lightning.training.module import ViTClassifier, _one_cycle, _warmup_cosine

TINY = dict(patch_size=7, dim=16, depth=1, heads=2)


@pytest.mark.parametrize("factor", [_one_cycle, _warmup_cosine])
@pytest.mark.parametrize("total_steps", [1, 2, 3, 19, 20, 21, 400])
@pytest.mark.parametrize("warmup_fraction", [0.0, 0.05, 0.3])
def test_schedules_are_defined_for_any_step_count_and_reach_zero(factor, total_steps, warmup_fraction):
    warmup = int(warmup_fraction * total_steps)
    values = [factor(step, warmup, total_steps) for step in range(total_steps + 3)]  # +3: a resume with fewer steps
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values)
    assert max(values) == pytest.approx(1.0)
    if total_steps > 1:
        assert values[total_steps - 1] == pytest.approx(0.0, abs=1e-12)  # one-cycle: zero at the last step


def test_one_cycle_rises_from_a_twenty_fifth_to_the_peak_then_falls():
    values = [_one_cycle(step, 10, 100) for step in range(100)]
    assert values[0] == pytest.approx(1 / 25)
    assert values[10] == pytest.approx(1.0)
    assert values[:11] == sorted(values[:11]) and values[10:] == sorted(values[10:], reverse=True)


@pytest.mark.parametrize("schedule", ["onecycle", "warmup_cosine", "constant"])
def test_a_one_step_run_trains_with_every_schedule(data_root, tmp_path, schedule):
    model = ViTClassifier(**TINY, lr_schedule=schedule)
    data = MNISTDataModule(root=str(data_root), download=False, val_size=40, batch_size=40)
    trainer = Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, data)
    assert trainer.global_step == 1


def test_class_token_learned_positions_and_attention_scales_take_no_weight_decay():
    model = ViTClassifier(**TINY, pool="cls", pos_embedding="learned", locality_attention=True, lr_schedule="constant")
    decay, no_decay = model.configure_optimizers().param_groups
    ids = {id(p) for p in no_decay["params"]}
    assert id(model.model.cls_token) in ids and id(model.model.pos_embedding) in ids
    assert all(id(block.attn.scale) in ids for block in model.model.blocks)  # decay would flatten attention
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] > 0
    assert all(p.ndim >= 2 for p in decay["params"])


def test_test_time_flip_averages_the_logits_of_the_image_and_its_mirror():
    torch.manual_seed(0)
    model = ViTClassifier(**TINY, test_time_flip=True).eval()
    model.model.head.weight.data.normal_()
    images, targets = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    logits = model.validation_step((images, targets), 0)
    torch.testing.assert_close(logits, (model(images) + model(images.flip(-1))) / 2)
    assert "test_time_flip" not in model.hparams  # a run-time choice, not part of the checkpoint


def moved(images: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """``images`` moved by ``rows`` down and ``columns`` right (-1 to 1), uncovered pixels set to the batch's least."""
    height, width = images.shape[-2:]
    result = torch.full_like(images, images.min().item())
    for row in range(height):
        for column in range(width):
            if 0 <= row - rows < height and 0 <= column - columns < width:
                result[..., row, column] = images[..., row - rows, column - columns]
    return result


@pytest.mark.parametrize("flip", [False, True])
def test_test_time_shift_gives_half_the_weight_to_the_image_moved_one_pixel_each_way_along_the_diagonal_in_test(flip):
    torch.manual_seed(0)
    model = ViTClassifier(**TINY, test_time_flip=flip, test_time_shift=True).eval()
    model.model.head.weight.data.normal_()
    images, targets = torch.rand(4, 1, 28, 28) + 0.5, torch.tensor([0, 1, 2, 3])  # the least value is not 0
    views = [images, moved(images, -1, -1), moved(images, 1, 1)]
    if flip:
        views = [view for image in views for view in (image, image.flip(-1))]
    weights = [1 / 2, 1 / 4, 1 / 4] if not flip else [1 / 4, 1 / 4, 1 / 8, 1 / 8, 1 / 8, 1 / 8]
    expected = sum(weight * model(view) for weight, view in zip(weights, views))
    torch.testing.assert_close(model.test_step((images, targets), 0), expected)
    unshifted = (model(images) + model(images.flip(-1))) / 2 if flip else model(images)
    torch.testing.assert_close(model.validation_step((images, targets), 0), unshifted)  # cheap: after every epoch
    assert "test_time_shift" not in model.hparams  # a run-time choice, not part of the checkpoint
    down_right = moved(images, 1, 1)  # the reference moves as named
    assert torch.equal(down_right[..., 1:, 1:], images[..., :-1, :-1]) and (down_right[..., 0, :] == images.min()).all()


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_training_objective_is_label_smoothed_and_the_logged_loss_is_plain_cross_entropy(smoothing):
    torch.manual_seed(0)
    model = ViTClassifier(**TINY, label_smoothing=smoothing)
    logits, targets = torch.randn(6, 10) * 3, torch.tensor([0, 1, 2, 3, 4, 9])
    objective, cross_entropy = model.losses(logits, targets)
    torch.testing.assert_close(objective, F.cross_entropy(logits, targets, label_smoothing=smoothing))
    torch.testing.assert_close(cross_entropy, F.cross_entropy(logits, targets))
