"""Callbacks that tests add to real runs (``--trainer.callbacks+=hooks.NAME``; tests/ is on PYTHONPATH)."""

import time
from pathlib import Path

import torch
from lightning.pytorch import Callback


class Throttle(Callback):
    """Sleep before every training batch, so a test can signal a run while it is between two batches."""

    def __init__(self, seconds: float = 0.2):
        self.seconds = seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        time.sleep(self.seconds)


class Diverge(Callback):
    """Turn the patch embedding into NaN before optimizer step ``step``, as a diverged update would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                for parameter in pl_module.model.patch_embed.parameters():
                    parameter.fill_(float("nan"))


class PoisonGradients(Callback):
    """Fill every gradient with ``value`` before optimizer step ``step``: the loss was finite, the update is not
    (NaN weights), or it leaves the weights finite and Adam's second moment infinite (``value`` 1e30)."""

    def __init__(self, step: int, value: float):
        self.step, self.value = step, value

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.step:
            for parameter in pl_module.parameters():
                parameter.grad.fill_(self.value)


class SlowPredict(Callback):
    """Touch ``marker`` and sleep before every prediction batch, so a test can signal a predict run mid-way."""

    def __init__(self, marker: str, seconds: float = 0.2):
        self.marker, self.seconds = marker, seconds

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        Path(self.marker).touch()
        time.sleep(self.seconds)
