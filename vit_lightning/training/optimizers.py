"""Optimizers beyond ``torch.optim``'s, chosen like any other with ``--model.optimizer`` (a class path and its
arguments): :class:`MuonAdamW`."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch.optim.adamw import adamw

HIDDEN_MATRIX_SIDE = 16  # a weight matrix with both sides at least this long is a hidden layer's (see MuonAdamW)


def orthogonalize(matrices: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The nearest semi-orthogonal matrix to each of ``matrices`` (``[..., rows, columns]``), approximately: singular
    values pushed towards 1 by a quintic Newton-Schulz iteration with Jordan et al.'s coefficients (they land in
    about [0.7, 1.2]). A stack of matrices of one shape takes one batched product per step."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = matrices.shape[-2] > matrices.shape[-1]
    x = matrices.mT if tall else matrices
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


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
        for problem, bad in ((f"Invalid learning rate: {lr}", lr <= 0),
                             (f"Invalid weight_decay value: {weight_decay}", weight_decay < 0),
                             (f"Invalid momentum value: {momentum}", not 0 <= momentum < 1),
                             (f"Invalid beta parameters: {tuple(betas)}", not all(0 <= beta < 1 for beta in betas))):
            if bad:  # torch.optim's words, which the CLI's one-line errors show
                raise ValueError(problem)
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps,
                                      momentum=momentum, ns_steps=ns_steps))

    def load_state_dict(self, state_dict: dict) -> None:
        """Also another optimizer's state (a run trained with AdamW, the default before MuonAdamW, resumed with
        it): settings that state lacks take this optimizer's defaults; Muon's momentum starts at zero."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for name, default in self.defaults.items():
                group.setdefault(name, default)

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
            matrices, others = [], []
            for parameter in group["params"]:
                if parameter.grad is not None:
                    (matrices if self.takes_muon(parameter) else others).append(parameter)
            self._muon(matrices, group)
            self._adamw(others, group)
        return loss

    def _muon(self, matrices: list[torch.Tensor], group: dict) -> None:
        """One Muon step for ``matrices``, those of a shape orthogonalized together."""
        momentum, by_shape = group["momentum"], {}
        for parameter in matrices:
            buffer = self.state[parameter].setdefault("momentum_buffer", torch.zeros_like(parameter))
            buffer.mul_(momentum).add_(parameter.grad)
            by_shape.setdefault(parameter.shape, []).append(parameter)
        for shape, parameters in by_shape.items():
            nesterov = [p.grad.add(self.state[p]["momentum_buffer"], alpha=momentum) for p in parameters]
            updates = orthogonalize(torch.stack(nesterov), group["ns_steps"])
            for parameter, update in zip(parameters, updates):
                parameter.mul_(1 - group["lr"] * group["weight_decay"])
                parameter.add_(update, alpha=-group["lr"] * 0.2 * math.sqrt(max(shape)))

    def _adamw(self, parameters: list[torch.Tensor], group: dict) -> None:
        """One AdamW step for ``parameters`` (torch's own, on all of them at once)."""
        states = [self.state[parameter] for parameter in parameters]
        for parameter, state in zip(parameters, states):
            if not state:
                state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(parameter),
                             exp_avg_sq=torch.zeros_like(parameter))
        beta1, beta2 = group["betas"]
        adamw(
            parameters, [parameter.grad for parameter in parameters], [state["exp_avg"] for state in states],
            [state["exp_avg_sq"] for state in states], [], [state["step"] for state in states], foreach=True,
            amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
            eps=group["eps"], maximize=False)
