"""What a run says about its progress: one summary line per epoch, and the training speed in images/s."""

from __future__ import annotations

import time

from lightning.pytorch import Callback, LightningModule, Trainer


class EpochSummary(Callback):
    """Print one line per epoch on rank 0: ``Epoch 3/30, Train Loss: 0.4100, Val Loss: 0.1200, Accuracy: 0.9712``."""

    def __init__(self):
        self._validated_epoch = -1

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        epoch = f"Epoch {trainer.current_epoch + 1}" + (f"/{trainer.max_epochs}" if trainer.max_epochs > 0 else "")
        parts = [epoch]
        if "train/loss" in metrics:
            parts.append(f"Train Loss: {metrics['train/loss']:.4f}")
        if self._validated_epoch == trainer.current_epoch and "val/loss" in metrics:
            parts += [f"Val Loss: {metrics['val/loss']:.4f}", f"Accuracy: {metrics['val/acc']:.4f}"]
        print(", ".join(parts), flush=True)


class TrainingSpeed(Callback):
    """Log ``train/images_per_sec`` once per epoch and ``train/elapsed_s`` with every validation.

    Images/s: the images of all processes per second, each process's images over its wall time from the start of
    the epoch's first training batch to the end of its last (data loading included, validation excluded), summed
    over the processes. Elapsed: wall time since the fit started, at the end of each validation (or of each
    training epoch that had none), on rank 0's clock, so each row of the log pairs ``val/acc`` with the time it
    took to reach it; a resumed fit counts on from its checkpoint. It is logged at the step of the epoch's
    metrics and before the checkpoint callbacks run (Lightning orders them last), so a fit resumed from the
    epoch's checkpoint keeps it.
    """

    def __init__(self):
        self._start: float | None = None
        self._end = 0.0
        self._images = 0
        self._fit_start = 0.0
        self._elapsed_before = 0.0  # of the fit a resumed run continues
        self._validated = False  # in this training epoch

    def state_dict(self) -> dict[str, float]:
        return {"elapsed_s": self._elapsed_before + time.perf_counter() - self._fit_start}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self._elapsed_before = state_dict.get("elapsed_s", 0.0)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start, self._images, self._validated = None, 0, False

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._images += len(batch[0])
        self._end = time.perf_counter()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._validated = True
            self._log_elapsed(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._start is not None and self._end > self._start:
            pl_module.log("train/images_per_sec", self._images / (self._end - self._start), reduce_fx="sum",
                          sync_dist=True)
        if not self._validated:
            self._log_elapsed(trainer)

    def _log_elapsed(self, trainer: Trainer) -> None:
        # rank 0's clock, to the loggers directly: self.log would need a collective that can hang a resumed DDP fit
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({"train/elapsed_s": self.state_dict()["elapsed_s"], "epoch": trainer.current_epoch},
                                   step=max(trainer.global_step - 1, 0))
