"""Checkpointing that a resumed run can rely on: ``last.ckpt`` at every save point and on interruption, written
atomically, never holding the weights of a diverged run."""

from __future__ import annotations

import os
import signal
import sys
import threading
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vit_lightning.divergence import DivergenceError, first_non_finite


class AtomicCheckpointIO(_WrappingCheckpointIO):
    """Write each checkpoint to ``NAME.tmp`` and rename it into place, so a crash mid-write never leaves a
    truncated file where a good one was (a failed write removes its ``.tmp``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        temporary = f"{path}.tmp"
        try:
            self.checkpoint_io.save_checkpoint(checkpoint, temporary, storage_options)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)  # half a checkpoint: free its space
            raise
        os.replace(temporary, path)


class Checkpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that a resumed run can rely on.

    - ``last.ckpt`` is refreshed at every save point (Lightning 2.6 rewrites it only when a top-k checkpoint is
      saved at the same step, so an epoch whose monitored metric did not improve would be lost on resume), also
      every ``every_n_train_steps`` before the monitored metric first exists;
    - all files are written atomically (:class:`AtomicCheckpointIO`);
    - with ``save_on_exception``, Ctrl-C (SIGINT) and SIGTERM save ``last.ckpt`` after the running training or
      validation batch (every DDP rank stops at the same batch) and print one line saying how to resume (a second
      Ctrl-C stops at once); other exceptions save nothing, so a failure never overwrites a good checkpoint;
    - training diverged stops with a :class:`~vit_lightning.divergence.DivergenceError` naming the last good
      checkpoint: a NaN or infinite loss before its backward pass, and non-finite weights or optimizer state
      (which a finite loss can produce) before they would be saved, so no checkpoint ever holds them;
    - each checkpoint records the log folder and every logger's version (a W&B run id), so a resumed run can
      continue the same metrics log and the same W&B run.
    """

    INTERRUPTIONS = (KeyboardInterrupt, SIGTERMException)
    _interrupt_requested = False
    _previous_sigint_handler: Any = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            trainer.strategy.checkpoint_io = AtomicCheckpointIO(trainer.strategy.checkpoint_io)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["log_dir"] = trainer.log_dir
        checkpoint["logger_versions"] = {type(logger).__name__: logger.version for logger in trainer.loggers}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._interrupt_requested = False
        if self.save_on_exception and threading.current_thread() is threading.main_thread():
            self._previous_sigint_handler = signal.signal(signal.SIGINT, partial(self._defer_interrupt, trainer))

    def _defer_interrupt(self, trainer: Trainer, signum: int, frame: Any) -> None:
        """Ctrl-C takes Lightning's SIGTERM path: the loops stop after the running batch, with the batch fully
        counted, and under DDP rank 0 broadcasts the stop to every rank before the next batch."""
        self._interrupt_requested = True
        trainer._signal_connector.received_sigterm = True
        self._restore_sigint_handler()

    def _restore_sigint_handler(self) -> None:
        if self._previous_sigint_handler is not None:
            signal.signal(signal.SIGINT, self._previous_sigint_handler)
            self._previous_sigint_handler = None

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            self._stop_diverged(trainer, f"the training loss is {loss.item()}")

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        problem = first_non_finite(trainer.lightning_module, trainer.optimizers)
        if problem:
            self._stop_diverged(trainer, f"the {problem} is not finite")
        try:
            super()._save_checkpoint(trainer, filepath)
        except OSError as error:  # a full disk: name the file in the one-line error (cli.main)
            error.filename = error.filename or filepath
            raise

    def _stop_diverged(self, trainer: Trainer, what: str) -> None:
        """Raise the one-line :class:`DivergenceError`; every file saved so far passed the check above."""
        good = self.last_model_path if self.last_model_path and os.path.isfile(self.last_model_path) else None
        kept = f"the last good checkpoint is {good}" if good else "no checkpoint was saved yet"
        raise DivergenceError(
            f"{what} at step {trainer.global_step} (epoch {trainer.current_epoch}); training stopped and {kept}; "
            "lower the learning rate (--model.optimizer.init_args.lr) and train again"
        )

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0:
            self._save_last_if_skipped(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore_sigint_handler()
        if not isinstance(exception, self.INTERRUPTIONS) or trainer.state.fn != TrainerFn.FITTING:
            return
        if self._should_save_on_exception(trainer) and self.save_last:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if not trainer.is_global_zero:
            return
        cause = "Ctrl-C" if isinstance(exception, KeyboardInterrupt) or self._interrupt_requested else "SIGTERM"
        exception.ctrl_c = cause == "Ctrl-C"  # cli.main: exit status 1 after Ctrl-C, 143 after SIGTERM
        where = f"{cause}: stopped at epoch {trainer.current_epoch}, step {trainer.global_step}"
        if self.last_model_path and os.path.isfile(self.last_model_path):
            print(f"{where}; saved {self.last_model_path}; resume with the same command plus --ckpt_path last",
                  file=sys.stderr)
        else:
            print(f"{where}; nothing to save yet", file=sys.stderr)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore_sigint_handler()
        super().teardown(trainer, pl_module, stage)

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

