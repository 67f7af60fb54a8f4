"""The predict record and what is done with it: ``predict_step`` returns :class:`Predictions` per batch, whose
``index`` is each image's position in the predict set (the data module stores it as the target: see
:meth:`~vit_lightning.training.datamodule.MNISTDataModule.setup`), and :class:`PredictionWriter` turns them into
the table of file names, classes and confidences."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vit_lightning.data.preprocess import printable
from vit_lightning.outputs import atomic_write


class Predictions(NamedTuple):
    """One predict batch: for each image, its ``index`` in the predict set ``[B]`` (its file name is
    ``datamodule.predict_names[index]``), the predicted class ``[B]`` and the class probabilities ``[B, classes]``."""

    index: torch.Tensor
    prediction: torch.Tensor
    probabilities: torch.Tensor

    @classmethod
    def of(cls, index: torch.Tensor, logits: torch.Tensor) -> Predictions:
        probabilities = torch.softmax(logits.float(), dim=-1)
        return cls(index, probabilities.argmax(dim=-1), probabilities)


class PredictionWriter(Callback):
    """After ``predict``, optionally write file, predicted class and confidence per image as CSV, then print them.

    Under DDP the rows of all ranks are gathered to rank 0, which writes and prints them once. The CSV file is
    written first (to ``NAME.tmp``, renamed into place), with file names byte for byte as the file system has them
    (names that are not UTF-8 too); the table printed after it shows such bytes as ``\\xNN``. SIGTERM stops
    predicting before the next batch (Lightning's prediction loop, unlike the others, does not check for it) and
    writes nothing.
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

    def on_predict_batch_end(self, trainer, pl_module, outputs: Predictions, batch, batch_idx,
                             dataloader_idx=0) -> None:
        confidence = outputs.probabilities.max(dim=-1).values
        self._rows += zip(outputs.index.tolist(), outputs.prediction.tolist(), confidence.tolist())

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
        if self.output:  # the file first: a closed terminal (| head) must not lose it
            path = Path(self.output)
            path.parent.mkdir(parents=True, exist_ok=True)
            # file names as the file system has them: bytes that are not UTF-8 are written back as they were
            with atomic_write(path) as temporary, temporary.open("w", newline="", encoding="utf-8",
                                                                 errors="surrogateescape") as f:  # never half a table
                writer = csv.writer(f)
                writer.writerow(["file", "class", "confidence"])
                writer.writerows((name, label, f"{confidence:.6f}") for name, label, confidence in table)
        shown = [(printable(name), label, confidence) for name, label, confidence in table]
        width = max(len("file"), *(len(name) for name, _, _ in shown))
        print(f"{'file':<{width}}  {'class':<12} confidence")
        for name, label, confidence in shown:
            print(f"{name:<{width}}  {label:<12} {confidence:.4f}")
        if self.output:
            print(f"wrote {len(table)} predictions to {printable(self.output)}")
