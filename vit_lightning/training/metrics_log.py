"""The default metrics log: a CSV file per run that a resumed ``fit`` continues instead of starting anew, and one
per evaluating subcommand that each ``validate`` or ``test`` adds a row to."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from vit_lightning.outputs import atomic_write
from vit_lightning.training import compat


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` (``save_dir/name/version_N/metrics.csv``) that writes every row to disk as it is logged, that a
    resumed run continues and that evaluations add to.

    :meth:`continue_from` points it at the version folder the checkpoint's run logged to and drops the rows
    logged after that checkpoint (a run killed mid-epoch logs those steps again), so the file has each step and
    each epoch exactly once. :meth:`add_evaluation` keeps every row already there (a fixed version such as
    ``test`` gathers one row per run) and gives this run's rows the epoch and step of the checkpoint evaluated.
    """

    def __init__(self, save_dir: str, name: str = "logs", version: int | str | None = None, prefix: str = "",
                 flush_logs_every_n_steps: int = 1):
        super().__init__(save_dir, name=name, version=version, prefix=prefix,
                         flush_logs_every_n_steps=flush_logs_every_n_steps)
        self._resume_step: float | None = None
        self._evaluated: tuple[int, int] | None = None

    def continue_from(self, log_dir: str | None, global_step: int) -> bool:
        """Log into the version folder of ``log_dir``'s name among this logger's folders (where the run folder is
        now: it may have been moved or copied since ``log_dir`` was recorded) from ``global_step`` on; ``False``
        when there is none, in which case a new version is started."""
        if compat.logger_started(self):
            raise RuntimeError("continue_from must be called before anything is logged")
        if log_dir is None or not (Path(self.root_dir) / Path(log_dir).name).is_dir():
            return False
        compat.set_logger_version(self, Path(log_dir).name)
        self._resume_step = global_step
        return True

    def add_evaluation(self, epoch: int, step: int) -> None:
        """Add this run's rows to the ``metrics.csv`` already in the version folder, as those of ``epoch`` and
        ``step`` (the checkpoint's: an evaluation does not restore the training counters)."""
        if compat.logger_started(self):
            raise RuntimeError("add_evaluation must be called before anything is logged")
        self._resume_step, self._evaluated = math.inf, (epoch, step)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self._evaluated is not None:
            epoch, step = self._evaluated
            metrics = {**metrics, "epoch": epoch}
        super().log_metrics(metrics, step)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if not compat.logger_started(self):
            compat.set_experiment(self, _AtomicWriter(self.log_dir) if self._resume_step is None
                                  else _ContinuedWriter(self.log_dir, self._resume_step))
        return super().experiment


class _AtomicWriter(ExperimentWriter):
    """An ``ExperimentWriter`` that replaces ``metrics.csv`` atomically when a new metric widens its header: a run
    killed meanwhile leaves the old file whole (Lightning's writer empties it first and loses every row). When the
    rewrite fails (a full disk), the next save tries it again instead of adding rows the header does not name."""

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
        try:
            self._replace_rows(rows, fieldnames)
        except BaseException:
            self.metrics_keys = list(reader.fieldnames or [])
            raise

    def _replace_rows(self, rows: list[dict[str, str]], fieldnames: list[str]) -> None:
        with atomic_write(self.metrics_file_path) as temporary, open(temporary, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)


class _ContinuedWriter(_AtomicWriter):
    """An ``ExperimentWriter`` that keeps the rows of an existing ``metrics.csv`` logged before ``resume_step``
    (Lightning's writer deletes the file)."""

    def __init__(self, log_dir: str, resume_step: float):
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as file:
            reader = csv.DictReader(file)
            rows = [row for row in reader if row.get("step") and int(row["step"]) < self.resume_step]
            self.metrics_keys = list(reader.fieldnames or [])
        self._replace_rows(rows, self.metrics_keys)
