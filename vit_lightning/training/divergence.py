"""Divergence: a training run whose loss, weights or optimizer state stopped being finite numbers."""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from vit_lightning.errors import UserError


class DivergenceError(UserError):
    """Training diverged: the loss, a weight or the optimizer state became NaN or infinite."""


class StopOnDivergence(Callback):
    """Stop a diverged fit with a one-line :class:`DivergenceError` that names the last good checkpoint.

    Checked are the loss before its backward pass, and the weights and optimizer state before every checkpoint
    (a finite loss can still produce non-finite weights): a checkpoint that would hold a NaN or an infinity is
    never written, so ``last.ckpt`` stays the last good one.
    """

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            raise diverged(trainer, f"the training loss is {loss.item()}")

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        problem = first_non_finite(pl_module, trainer.optimizers)
        if problem:  # raised before the file is written
            raise diverged(trainer, f"the {problem} is not finite")


def diverged(trainer: Trainer, what: str) -> DivergenceError:
    """The one-line error for ``what`` went non-finite, naming the last checkpoint written (all passed the check)."""
    callback = trainer.checkpoint_callback
    good = getattr(callback, "last_model_path", "")
    kept = f"the last good checkpoint is {good}" if good and os.path.isfile(good) else "no checkpoint was saved yet"
    return DivergenceError(f"{what} at step {trainer.global_step} (epoch {trainer.current_epoch}); training stopped "
                           f"and {kept}; lower the learning rate (--model.optimizer.init_args.lr) and train again")


def first_non_finite(module: nn.Module, optimizers: list[torch.optim.Optimizer]) -> str | None:
    """Name the first floating-point tensor of ``module`` (parameters, buffers) or of the optimizers' state
    (e.g. Adam's moment estimates) that holds a NaN or an infinity, such as ``weight model.head.weight`` or
    ``optimizer state exp_avg_sq of model.head.weight``; ``None`` when all are finite."""
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return f"weight {name}"
    names = {id(parameter): name for name, parameter in module.named_parameters()}
    for optimizer in optimizers:
        for parameter, state in optimizer.state.items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
                    return f"optimizer state {key} of {names.get(id(parameter), 'a parameter')}"
    return None
