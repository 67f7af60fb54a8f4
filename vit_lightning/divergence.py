"""Divergence: a training run whose loss, weights or optimizer state stopped being finite numbers."""

from __future__ import annotations

import torch
from torch import nn

from vit_lightning.errors import UserError


class DivergenceError(UserError):
    """Training diverged: the loss, a weight or the optimizer state became NaN or infinite."""


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
