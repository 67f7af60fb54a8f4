"""Callbacks a run uses: the per-epoch summary line, the training speed, the prediction table and the learning-rate
search."""

from __future__ import annotations

import csv
import os
import sys
import time
from pathlib import Path

import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateFinder
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info


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
    """Log ``train/images_per_sec`` once per epoch: the images of all processes per second, each process's images
    over its wall time from the start of the epoch's first training batch to the end of its last (data loading
    included, validation excluded), summed over the processes."""

    def __init__(self):
        self._start: float | None = None
        self._end = 0.0
        self._images = 0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start, self._images = None, 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._images += len(batch[0])
        self._end = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._start is not None and self._end > self._start:
            pl_module.log("train/images_per_sec", self._images / (self._end - self._start), reduce_fx="sum",
                          sync_dist=True)


class PredictionWriter(Callback):
    """After ``predict``, print file, predicted class and confidence per image; optionally write them as CSV.

    Under DDP the rows of all ranks are gathered to rank 0, which prints and writes them once. The CSV file is
    written to ``NAME.tmp`` and renamed into place. SIGTERM stops predicting before the next batch (Lightning's
    prediction loop, unlike the others, does not check for it) and writes nothing.
    """

    def __init__(self, output: str | None = None):
        self.output = output
        self._rows: list[tuple[int, int, float]] = []

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._rows = []

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.received_sigterm:
            raise SIGTERMException

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.PREDICTING and trainer.is_global_zero:
            kept = f"; nothing written to {self.output}" if self.output else ""
            print(f"SIGTERM: stopped predicting after {len(self._rows)} images{kept}", file=sys.stderr)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        confidence = outputs["probabilities"].max(dim=-1).values
        self._rows += zip(outputs["index"].tolist(), outputs["prediction"].tolist(), confidence.tolist())

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rows = self._rows
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            gathered: list[list] = [[] for _ in range(trainer.world_size)]
            dist.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        if not trainer.is_global_zero:
            return
        names, classes = trainer.datamodule.predict_names, trainer.datamodule.classes
        table = [(names[index], classes[label], confidence) for index, label, confidence in sorted(rows)]
        width = max(len("file"), *(len(name) for name, _, _ in table))
        print(f"{'file':<{width}}  {'class':<12} confidence")
        for name, label, confidence in table:
            print(f"{name:<{width}}  {label:<12} {confidence:.4f}")
        if self.output:
            path = Path(self.output)
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(path.name + ".tmp")  # renamed into place: never half a table over a good one
            try:
                with temporary.open("w", newline="") as f:
                    writer = csv.writer(f)
                    writer.writerow(["file", "class", "confidence"])
                    writer.writerows((name, label, f"{confidence:.6f}") for name, label, confidence in table)
                os.replace(temporary, path)
            finally:
                temporary.unlink(missing_ok=True)
            print(f"wrote {len(table)} predictions to {path}")



class LearningRateSearch(LearningRateFinder):
    """Lightning's learning-rate range test before training, its suggestion made the peak of the schedule.

    Lightning sets the suggestion as the optimizer's current learning rate only, which the step-wise schedule
    overwrites from its own ``base_lrs`` at the next step; this sets those as well, so the suggestion is the peak
    of one-cycle or warm-up/cosine. A resumed fit (``--ckpt_path``) skips the search: its checkpoint holds the
    learning rate, and the search's own restore would discard the optimizer state and counters it loaded.
    """

    def __init__(self, min_lr: float = 1e-6, max_lr: float = 1.0, num_training_steps: int = 100,
                 mode: str = "exponential", early_stop_threshold: float | None = 4.0):
        super().__init__(min_lr=min_lr, max_lr=max_lr, num_training_steps=num_training_steps, mode=mode,
                         early_stop_threshold=early_stop_threshold, update_attr=False)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.ckpt_path:
            rank_zero_info("learning-rate search skipped: a resumed fit keeps its checkpoint's learning rate")
            return
        super().on_fit_start(trainer, pl_module)
        suggestion = self.optimal_lr.suggestion() if self.optimal_lr is not None else None
        if suggestion is None:
            rank_zero_info("learning-rate search: no suggestion (too few steps?); the configured rate stays")
            return
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] = suggestion
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            scheduler.base_lrs = [suggestion] * len(scheduler.base_lrs)
            factors = [factor(scheduler.last_epoch) for factor in getattr(scheduler, "lr_lambdas", [])]
            for group, factor in zip(scheduler.optimizer.param_groups, factors):
                group["lr"] = suggestion * factor
        rank_zero_info(f"learning-rate search: peak learning rate {suggestion:.3g}")
