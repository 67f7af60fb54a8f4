"""Checkpointing that a resumed run can rely on: ``last.ckpt`` at every save point, written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO


class AtomicCheckpointIO(_WrappingCheckpointIO):
    """Write each checkpoint to ``NAME.tmp`` and rename it into place, so a crash mid-write never leaves a
    truncated file where a good one was."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        temporary = f"{path}.tmp"
        self.checkpoint_io.save_checkpoint(checkpoint, temporary, storage_options)
        os.replace(temporary, path)


class Checkpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that refreshes ``last.ckpt`` at every save point and writes all files atomically.

    Lightning 2.6 rewrites ``last.ckpt`` only when a top-k checkpoint is saved at the same step, so an epoch
    whose monitored metric did not improve would be lost on resume.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            trainer.strategy.checkpoint_io = AtomicCheckpointIO(trainer.strategy.checkpoint_io)

    def _save_last_if_skipped(self, trainer: Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_skipped(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_skipped(trainer)

