"""Weight averaging: an exponential moving average (EMA) of the weights, which validation, checkpoints, test,
export and the demo use (``--config configs/ema.yaml``)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import WeightAveraging

from vit_lightning.errors import SettingError, UserError
from vit_lightning.serving.checkpoints import TRAINING_WEIGHTS


class ExponentialAveraging(WeightAveraging):
    """An EMA of the weights (and buffers), updated after every optimizer step, with a warmed-up decay.

    Update ``n`` (the first, 0, copies the weights) moves the average towards them by
    ``1 - min(decay, (1 + n) / (10 + n))``; integer buffers (BatchNorm's batch count) take the latest value. The
    average forgets the random initialisation within the first hundred steps instead of ``1 / (1 - decay)`` steps,
    so it is worth validating from the first epoch, and no delayed start is needed (a delayed start in Lightning's
    ``EMAWeightAveraging`` validates the untrained copy until it begins, Lightning issue #21724).

    What Lightning's ``WeightAveraging`` gives: validation swaps the average in; every checkpoint's ``state_dict``
    holds the average (so ``best`` is judged and saved by it, and test, predict, export and the demo use it) and
    :data:`~vit_lightning.serving.checkpoints.TRAINING_WEIGHTS` the weights training continues from; a resumed fit
    restores both; after a fit the module holds the average. Added here: a checkpoint saved during validation (an
    interruption) keeps the two apart too, and validate, test and predict load checkpoints without a warning.
    """

    def __init__(self, decay: float = 0.999):
        if not 0.0 < decay < 1.0:
            raise SettingError(f"ExponentialAveraging decay must be in (0, 1), got {decay}; 0.999 averages about "
                               "the last 1,000 steps")
        super().__init__(use_buffers=True, multi_avg_fn=self._move_average)
        self.decay = decay
        self._swapped = False  # the module holds the average (during validation), the copy the training weights

    def _move_average(self, averages: list[torch.Tensor], weights: list[torch.Tensor], updates: torch.Tensor) -> None:
        """``averages += (weights - averages) * (1 - decay_n)`` for one group of same-type tensors (in place)."""
        if not averages[0].is_floating_point():  # integer buffers (a BatchNorm's batch count): the latest value
            torch._foreach_copy_(averages, weights)
            return
        n = updates.to(averages[0].dtype)  # stays on the device: no wait for the accelerator at every step
        rate = 1.0 - torch.clamp((1 + n) / (10 + n), max=self.decay)
        torch._foreach_lerp_(averages, weights, [rate] * len(averages))

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Lightning deep-copies the whole module for the average, with what is not its state: the trainer (and its
        # data) and the CLI's optimizer factory, which reaches the objects the CLI built. In a DDP fit rank 0's
        # trainer holds the launched processes, whose locks cannot be copied (TypeError: cannot pickle
        # '_thread.lock' object; Lightning #7379). The copy is made without the two; only the weights are averaged.
        optimizer = pl_module.optimizer
        pl_module.trainer, pl_module.optimizer = None, None
        try:
            with warnings.catch_warnings():  # the module's configure_model only compiles: no sharding to warn about
                warnings.filterwarnings("ignore", message="You're using the WeightAveraging callback with a model")
                super().setup(trainer, pl_module, stage)
        finally:
            pl_module.trainer, pl_module.optimizer = trainer, optimizer

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        self._swapped = self._average_model is not None

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_epoch_end(trainer, pl_module)
        self._swapped = False

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._swapped:  # mid-validation the module holds the average and the copy the training weights, so
            # Lightning filed each under the other's key
            average, training = checkpoint[TRAINING_WEIGHTS], checkpoint["state_dict"]
            checkpoint["state_dict"], checkpoint[TRAINING_WEIGHTS] = average, training

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is not None:  # a fit; outside one the checkpoint's state_dict (the average) is used
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


def require_averaging_to_resume(checkpoint: dict, callbacks: list[Callback], ckpt_path: str | Path) -> None:
    """Refuse (one line) to resume a fit trained with weight averaging without it: training would go on from the
    average instead of its own weights, and the average would be lost."""
    if TRAINING_WEIGHTS in checkpoint and not any(isinstance(callback, WeightAveraging) for callback in callbacks):
        raise UserError(f"--ckpt_path {ckpt_path} was trained with weight averaging; resume it with "
                        "--config configs/ema.yaml (or the same averaging callback it was trained with)")
