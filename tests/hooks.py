"""Callbacks that tests add to real runs (``--trainer.callbacks+=hooks.NAME``; tests/ is on PYTHONPATH)."""

import os
import signal
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


class Interrupt(Callback):
    """Signal this process (``group``: its whole process group, as Ctrl-C in a terminal does) from rank 0 as batch
    ``batch`` of ``at`` (train, validation or sanity_check) starts, in epoch ``epoch`` (any if None): an
    interruption at a known point."""

    def __init__(self, batch: int, at: str = "train", epoch: int | None = None, signum: int = int(signal.SIGINT),
                 group: bool = False):
        self.batch, self.at, self.epoch, self.signum, self.group = batch, at, epoch, signum, group

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._signal(trainer, "train", batch_idx)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._signal(trainer, "sanity_check" if trainer.sanity_checking else "validation", batch_idx)

    def _signal(self, trainer, at: str, batch_idx: int) -> None:
        if (at, batch_idx) == (self.at, self.batch) and self.epoch in (None, trainer.current_epoch) \
                and trainer.is_global_zero:
            if self.group:
                os.killpg(os.getpgrp(), self.signum)
            else:
                signal.raise_signal(self.signum)


class Trace(Callback):
    """Print ``validation batch E.I`` as batch I of epoch E's validation starts (not in the sanity check)."""

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            print(f"validation batch {trainer.current_epoch}.{batch_idx}")


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


class RecordWeights(Callback):
    """Keep, in :attr:`steps`, the module's weights after every optimizer step and, in :attr:`at_train_start`,
    its weights and the weight average (:class:`ExponentialAveraging`'s, if any) as training starts (after a
    resume has restored them). Class attributes: the test reads them after an in-process fit."""

    steps: list[dict] = []
    at_train_start: list[tuple[dict, dict | None]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        from vit_lightning.training.averaging import ExponentialAveraging

        averaging = next((c for c in trainer.callbacks if isinstance(c, ExponentialAveraging)), None)
        average = averaging._average_model.module.state_dict() if averaging else None
        RecordWeights.at_train_start.append((copy_state(pl_module.state_dict()), average and copy_state(average)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        RecordWeights.steps.append(copy_state(pl_module.state_dict()))


def copy_state(state: dict) -> dict:
    """A detached copy of a state dict's tensors, unaffected by later training steps."""
    return {name: tensor.detach().clone() for name, tensor in state.items()}
