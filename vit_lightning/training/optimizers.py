"""Optimizers beyond ``torch.optim``'s, chosen like any other with ``--model.optimizer`` (a class path and its
arguments): :class:`MuonAdamW`."""

from __future__ import annotations

import math
from typing import Iterable

import torch

HIDDEN_MATRIX_SIDE = 16  # a weight matrix with both sides at least this long is a hidden layer's (see MuonAdamW)


def orthogonalize(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The nearest semi-orthogonal matrix to ``matrix``, approximately (singular values pushed towards 1 by a
    quintic Newton-Schulz iteration, with Jordan et al.'s coefficients; they land in about [0.7, 1.2])."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = matrix.shape[0] > matrix.shape[1]
    x = matrix.T if tall else matrix
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class MuonAdamW(torch.optim.Optimizer):
    """Muon (Jordan et al. 2024) for the hidden layers' weight matrices, AdamW for every other parameter.

    Muon: Nesterov momentum, the update orthogonalized (:func:`orthogonalize`) and scaled by
    ``0.2 * sqrt(max(rows, columns))`` so that its size matches AdamW's (Liu et al. 2025, "Muon is Scalable for LLM
    Training"; ``torch.optim.Muon(adjust_lr_fn="match_rms_adamw")``): both kinds share one learning rate, weight
    decay and schedule. Muon takes the 2-D weights whose sides are both at least ``HIDDEN_MATRIX_SIDE`` (16)
    long, the transformer blocks' projections; the class head, the pooling score, convolutions, norms, biases and
    position embeddings stay with AdamW, as Muon's authors advise.

    ``--model.optimizer.class_path vit_lightning.training.optimizers.MuonAdamW --model.optimizer.init_args.lr 3e-3``
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, weight_decay: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, momentum: float = 0.95,
                 ns_steps: int = 5):
        if lr <= 0 or weight_decay < 0 or not 0 <= momentum < 1 or not all(0 <= beta < 1 for beta in betas):
            raise ValueError(f"MuonAdamW needs lr > 0, weight_decay >= 0 and momentum and betas in [0, 1); got "
                             f"lr={lr}, weight_decay={weight_decay}, momentum={momentum}, betas={tuple(betas)}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps,
                                      momentum=momentum, ns_steps=ns_steps))

    @staticmethod
    def takes_muon(parameter: torch.Tensor) -> bool:
        return parameter.ndim == 2 and min(parameter.shape) >= HIDDEN_MATRIX_SIDE

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay = group["lr"], group["weight_decay"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                parameter.mul_(1 - lr * decay)
                if self.takes_muon(parameter):
                    self._muon(parameter, group)
                else:
                    self._adamw(parameter, group)
        return loss

    def _muon(self, parameter: torch.Tensor, group: dict) -> None:
        momentum = group["momentum"]
        buffer = self.state[parameter].setdefault("momentum_buffer", torch.zeros_like(parameter))
        buffer.mul_(momentum).add_(parameter.grad)
        update = orthogonalize(parameter.grad.add(buffer, alpha=momentum), group["ns_steps"])  # Nesterov
        parameter.add_(update, alpha=-group["lr"] * 0.2 * math.sqrt(max(parameter.shape)))

    def _adamw(self, parameter: torch.Tensor, group: dict) -> None:
        state = self.state[parameter]
        if not state:
            state.update(step=0, exp_avg=torch.zeros_like(parameter), exp_avg_sq=torch.zeros_like(parameter))
        (beta1, beta2), grad = group["betas"], parameter.grad
        state["step"] += 1
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denominator = (state["exp_avg_sq"] / (1 - beta2 ** state["step"])).sqrt_().add_(group["eps"])
        parameter.addcdiv_(state["exp_avg"], denominator, value=-group["lr"] / (1 - beta1 ** state["step"]))
