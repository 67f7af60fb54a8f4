"""Callbacks that tests add to real runs (``--trainer.callbacks+=hooks.NAME``; tests/ is on PYTHONPATH)."""

import time

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
