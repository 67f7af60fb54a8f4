"""Writing checkpoints: the callback that saves the best by ``val/acc`` and ``last.ckpt`` at every save point and on
Ctrl-C/SIGTERM (every rank agreeing on the batch after which it is saved), each file written atomically. What a
checkpoint holds and how one is found and read is in :mod:`vit_lightning.serving.checkpoints`."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vit_lightning.data.datasets import DatasetInfo
from vit_lightning.outputs import LAST_CHECKPOINT, atomic_write
from vit_lightning.serving.checkpoints import DATASET, LOG_DIR, LOGGER_VERSIONS, dataset_record
from vit_lightning.training import compat


class AtomicCheckpointIO(compat.WrappingCheckpointIO):
    """Write each checkpoint to ``NAME.tmp`` beside it and rename it into place; a failed write removes the
    ``.tmp``.

    What it adds to Lightning 2.6's ``TorchCheckpointIO``: that one writes through an fsspec transaction whose
    temporary file is in the system's temp folder, then ``shutil.move``s it; when that folder is on another
    filesystem than the checkpoints (``/tmp`` on tmpfs, checkpoints on a mounted or network drive), the move is a
    copy into the existing file, so a crash or a full disk mid-copy truncates the last good checkpoint.
    tests/test_robustness.py shows both behaviours.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        with atomic_write(path) as temporary:  # half a checkpoint is removed, freeing its space
            self.checkpoint_io.save_checkpoint(checkpoint, temporary, storage_options)


class Checkpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that a resumed run can rely on.

    - ``last.ckpt`` is refreshed at every save point (Lightning 2.6 rewrites it only when a top-k checkpoint is
      saved at the same step, so an epoch whose monitored metric did not improve would be lost on resume), also
      every ``every_n_train_steps`` before the monitored metric first exists;
    - all files are written atomically (:class:`AtomicCheckpointIO`);
    - with ``save_on_exception``, Ctrl-C (SIGINT) and SIGTERM save ``last.ckpt`` after the running training or
      validation batch (every DDP rank stops at the same batch) and print one line saying how to resume (a second
      Ctrl-C stops at once); other exceptions save nothing, so a failure never overwrites a good checkpoint;
    - a checkpoint saved when an epoch and its validation were over resumes at the start of the next epoch
      (:func:`_resume_finished_epoch_at_the_next`);
    - each checkpoint records the log folder (:data:`LOG_DIR`) and every logger's version (:data:`LOGGER_VERSIONS`,
      a W&B run id), so a resumed run can continue the same metrics log and the same W&B run, and the dataset
      (:data:`DATASET`: its name, classes, normalisation and image size), which predict, test, export and the demo use.

    It extends ``ModelCheckpoint`` through members Lightning keeps private (all in :mod:`.compat`):
    tests/test_robustness.py pins the behaviour they give.
    """

    CHECKPOINT_NAME_LAST = Path(LAST_CHECKPOINT).stem  # the run folder's layout (vit_lightning.outputs)
    INTERRUPTIONS = (KeyboardInterrupt, SIGTERMException)
    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    _armed = False  # this callback's signal handlers are in place (fit, from on_train_start)
    _previous_handlers: dict[int, Any] = {}  # replaced by each fit
    _training_started = False
    _signal = 0  # the signal this process received
    _stop_signal = 0  # the signal every rank agreed to stop on (0: none yet)
    _common_val_batches: list[float] = []  # per validation loader, the fewest batches any rank has
    _stage = ""  # the trainer's: fit, validate, test or predict

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._stage = stage
        if not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            trainer.strategy.checkpoint_io = AtomicCheckpointIO(trainer.strategy.checkpoint_io)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[LOG_DIR] = trainer.log_dir
        checkpoint[LOGGER_VERSIONS] = {type(logger).__name__: logger.version for logger in trainer.loggers}
        info = getattr(trainer.datamodule, "info", None)  # the project's data module (not plain dataloaders)
        if isinstance(info, DatasetInfo):
            checkpoint[DATASET] = dataset_record(info)

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        _resume_finished_epoch_at_the_next(checkpoint.get("loops") or {}, by_steps=trainer.max_steps != -1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the record of saved checkpoints for a fit only: validate, test and predict save none, so they
        neither need it nor print Lightning's warning that it stays behind when the checkpoint is in another folder."""
        if self._stage == TrainerFn.FITTING:
            super().load_state_dict(state_dict)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._training_started = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._training_started, self._stop_signal = True, 0
        self._signal = signal.SIGTERM if trainer.received_sigterm else 0  # one that came while restoring
        self._armed = self.save_on_exception and threading.current_thread() is threading.main_thread()
        if self._armed:
            self._previous_handlers = {signum: signal.signal(signum, self._note_signal) for signum in self.SIGNALS}

    def _note_signal(self, signum: int, frame: Any) -> None:
        """Ctrl-C and SIGTERM only note the signal: every rank learns of it at the same batch end
        (:meth:`_agree_on_stop`) and stops there, the batch fully counted. A second Ctrl-C stops at once."""
        self._signal = self._signal or signum
        self._restore_handlers(signal.SIGINT)

    def _restore_handlers(self, *signums: int) -> None:
        for signum in signums or list(self._previous_handlers):
            if signum in self._previous_handlers:
                signal.signal(signum, self._previous_handlers.pop(signum))

    def _agree_on_stop(self, trainer: Trainer) -> None:
        """Stop after this batch if any rank was signalled. Every rank calls this at the same batch (a collective
        under DDP), so all stop there together, which Lightning's loops do on ``received_sigterm``; Lightning's own
        SIGTERM handler stops each rank where it is, and a rank signalled alone would leave the others hanging."""
        if not self._armed:
            return
        if not self._stop_signal:
            self._stop_signal = int(_reduce(trainer, [self._signal], "max")[0])
        compat.set_received_sigterm(trainer, bool(self._stop_signal))

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        try:
            super()._save_checkpoint(trainer, filepath)
        except OSError as error:  # a full disk: name the file in the one-line error (cli.main)
            error.filename = error.filename or filepath
            raise

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        every = compat.every_n_train_steps(self)
        if every >= 1 and trainer.global_step % every == 0:
            self._save_last_if_skipped(trainer)
        self._agree_on_stop(trainer)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._armed:
            self._common_val_batches = _reduce(trainer, trainer.num_val_batches, "min")

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        """Validation stops after the running batch too, unless that is the last batch of some rank (shards may
        differ by a batch): Lightning stops a rank only before its last batch, so every rank then finishes
        validation and stops after it (:meth:`on_validation_end`)."""
        if not self._armed:
            return
        if batch_idx < self._common_val_batches[dataloader_idx] - 1:
            self._agree_on_stop(trainer)
        else:
            compat.set_received_sigterm(trainer, False)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not compat.saves_on_train_epoch_end(self, trainer):
            self._save_last_if_skipped(trainer)
        self._agree_on_stop(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._disarm()
        super().on_train_end(trainer, pl_module)

    def _disarm(self) -> None:
        self._armed = False
        self._restore_handlers()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._disarm()
        if not isinstance(exception, self.INTERRUPTIONS) or trainer.state.fn != TrainerFn.FITTING:
            return
        # A KeyboardInterrupt comes before training (restoring, sanity check) or from a second Ctrl-C, anywhere in a
        # batch and maybe on one rank only: its state may hold half an update, and the other ranks would not save.
        between_batches = isinstance(exception, SIGTERMException)
        if between_batches and trainer.validating and self._training_started:
            _validate_again_on_resume(trainer.fit_loop.epoch_loop.val_loop.batch_progress)
            compat.forget_last_save(self)  # a checkpoint of this step from before validation would skip it
        if between_batches and self.save_last and compat.saves_on_exception(self, trainer):
            compat.save_last(self, trainer)
        cause = "Ctrl-C" if isinstance(exception, KeyboardInterrupt) or self._stop_signal == signal.SIGINT else "SIGTERM"
        exception.ctrl_c = cause == "Ctrl-C"  # cli.main: exit status 1 after Ctrl-C, 143 after SIGTERM
        if trainer.is_global_zero:
            print(f"{cause}: {self._outcome(trainer, between_batches)}", file=sys.stderr)

    def _outcome(self, trainer: Trainer, between_batches: bool) -> str:
        """Where an interrupted fit stopped, what it saved and how to go on."""
        if not self._training_started:
            if trainer.ckpt_path:
                return f"stopped before training resumed; {trainer.ckpt_path} is unchanged; run the same command again"
            return "stopped before training started; nothing to save"
        where = f"stopped at epoch {trainer.current_epoch}, step {trainer.global_step}"
        last = self.last_model_path
        if compat.last_step_saved(self) == trainer.global_step and last and os.path.isfile(last):
            return f"{where}; saved {last}; resume with the same command plus --ckpt_path last"
        if not self.save_on_exception or not self.save_last:
            option = "save_on_exception" if not self.save_on_exception else "save_last"
            why = f"saving on interruption is off (--checkpoint.{option} false)"
        else:
            why = "nothing saved" if between_batches else "a second Ctrl-C stops at once: nothing saved"
        latest = next((path for path in (compat.last_checkpoint_saved(self), last) if path and os.path.isfile(path)), None)
        return f"{where}; {why}; " + (f"the latest checkpoint is {latest}" if latest else "no checkpoint yet")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._disarm()
        super().teardown(trainer, pl_module, stage)

    def _save_last_if_skipped(self, trainer: Trainer) -> None:
        if self.save_last and compat.may_save_now(self, trainer):
            compat.save_last(self, trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if compat.saves_on_train_epoch_end(self, trainer):
            self._save_last_if_skipped(trainer)


def _reduce(trainer: Trainer, values: list[float], op: str) -> list[float]:
    """``values`` reduced over the processes with ``op`` (``max``, ``min``); on one process, as they are (no
    device tensor: that would synchronise a GPU at every batch)."""
    if trainer.world_size == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=trainer.strategy.root_device)
    return trainer.strategy.reduce(tensor, reduce_op=op).tolist()


def _validate_again_on_resume(progress: Any) -> None:
    """Record a validation stopped after some of its batches as stopped inside its first batch: Lightning's resume
    runs such a validation again from the start (mid-evaluation restart), but skips one that ended on a finished
    batch, which would leave the epoch without its validation result."""
    done = progress.current.completed
    for tracker in (progress.total, progress.current):
        tracker.processed = tracker.completed = tracker.completed - done
        tracker.ready = tracker.started = tracker.completed + 1



def _resume_finished_epoch_at_the_next(loops: dict, by_steps: bool) -> None:
    """Record a checkpoint saved after an epoch's last batch and its validation (at the end of that validation, or
    of the epoch) as saved at the start of the next epoch, before it is restored (``by_steps``: the fit has
    ``max_steps``).

    Lightning 2.6 resumes the first kind by running the end of the finished epoch again (an empty epoch summary),
    and with ``max_steps`` both kinds, counting that epoch twice (training stops an epoch early) and logging every
    later step one step late (Lightning #19617). A checkpoint saved inside an epoch or a validation is left as it is.
    """
    fit = loops.get("fit_loop") or {}
    epochs, batches = fit.get("epoch_progress"), fit.get("epoch_loop.batch_progress")
    validation = fit.get("epoch_loop.val_loop.batch_progress")
    if not (epochs and batches and validation and batches["is_last_batch"]):
        return
    epoch, batch, val = epochs["total"], batches["total"], validation["current"]
    if not (epoch["ready"] == epoch["started"] and batch["completed"] == batch["processed"] == batch["ready"]):
        return  # inside an epoch, or saved after its last batch before validation (Lightning resumes those right)
    after_validation = (epoch["processed"] == epoch["completed"] == epoch["ready"] - 1 and validation["is_last_batch"]
                        and val["ready"] == val["started"] == val["completed"] > 0)
    after_epoch = epoch["processed"] == epoch["ready"] == epoch["completed"] + 1
    if not (after_validation or after_epoch):
        return
    for counters in (epochs["total"], epochs["current"]):
        counters.update(dict.fromkeys(counters, epoch["ready"]))
    # Lightning counts the epoch's last batch for the loggers after its validation; resuming with max_steps, it
    # counts one more in an empty first iteration
    fit["epoch_loop.state_dict"]["_batches_that_stepped"] += int(after_validation) - int(by_steps)
    optimizer = fit.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {})
    _zero(batches["current"], fit.get("epoch_loop.scheduler_progress", {}).get("current", {}), validation["total"],
          val, *(progress["current"] for progress in optimizer.values()))
    batches["is_last_batch"] = validation["is_last_batch"] = False


def _zero(*counters: dict) -> None:
    for counter in counters:
        counter.update(dict.fromkeys(counter, 0))
