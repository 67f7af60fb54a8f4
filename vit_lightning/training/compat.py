"""Every private or internal Lightning name the project relies on, in one place, and the filter for two messages
Lightning prints that say nothing about a run.

Checked with Lightning 2.6.6 (``pyproject.toml`` admits ``>=2.6.6,<2.7``); tests/test_layout.py checks that each
name below exists in the installed version, so an upgrade that drops one fails there, by name, first.

Used through the functions below:

- ``Trainer._signal_connector.received_sigterm``: set to stop every rank after the same batch
  (:func:`set_received_sigterm`; Lightning's loops stop on it).
- ``lightning.pytorch.plugins.io.wrapper._WrappingCheckpointIO``: the base of the atomic checkpoint writer.
- ``LightningCLI._subcommand_parsers``: a subcommand's parser, for its defaults (:func:`subcommand_defaults`).
- ``ModelCheckpoint._save_last_checkpoint``, ``_monitor_candidates``, ``_should_skip_saving_checkpoint``,
  ``_should_save_on_train_epoch_end``, ``_should_save_on_exception``, ``_every_n_train_steps``,
  ``_last_global_step_saved``, ``_last_checkpoint_saved``: ``last.ckpt`` at every save point and on interruption.
- ``CSVLogger._experiment`` and ``_version``: a resumed fit continues its metrics log.
- ``lightning.pytorch.overrides.distributed.UnrepeatedDistributedSampler``: evaluation shards without padding.

Overridden in subclasses (their signatures must stay): ``LightningCLI._parse_ckpt_path`` (training/cli.py),
``ModelCheckpoint._save_checkpoint`` (training/checkpointing.py), ``ExperimentWriter._check_log_dir_exists``,
``_rewrite_with_new_header`` and its ``metrics_keys`` (training/metrics_log.py). Relied on as a format: LightningCLI's
``_instantiator`` key in saved hyper-parameters (skipped by :func:`vit_lightning.serving.checkpoints.saved_settings`)
and the loops' progress counters, live and in a checkpoint's ``loops`` (``_validate_again_on_resume`` and
``_resume_finished_epoch_at_the_next`` in training/checkpointing.py).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO as WrappingCheckpointIO

__all__ = ["UnrepeatedDistributedSampler", "WrappingCheckpointIO"]

# the private members used or overridden, per class (many are set in __init__: tests/test_layout.py checks them on
# instances)
RELIES_ON = {
    Trainer: ("_signal_connector",),
    LightningCLI: ("_subcommand_parsers", "_parse_ckpt_path"),
    ModelCheckpoint: ("_save_last_checkpoint", "_monitor_candidates", "_should_skip_saving_checkpoint",
                      "_should_save_on_train_epoch_end", "_should_save_on_exception", "_every_n_train_steps",
                      "_last_global_step_saved", "_last_checkpoint_saved", "_save_checkpoint"),
    CSVLogger: ("_experiment", "_version"),
    ExperimentWriter: ("_check_log_dir_exists", "_rewrite_with_new_header", "metrics_keys"),
}


def set_received_sigterm(trainer: Trainer, value: bool) -> None:
    """Make Lightning's loops stop after the running batch (``True``), or not (``False``)."""
    trainer._signal_connector.received_sigterm = value


def subcommand_defaults(cli: LightningCLI, subcommand: str) -> Any:
    """The defaults (a namespace) of ``subcommand``'s parser, configs included."""
    return cli._subcommand_parsers[subcommand].get_defaults()


def save_last(callback: ModelCheckpoint, trainer: Trainer) -> None:
    """Write ``last.ckpt`` now."""
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def may_save_now(callback: ModelCheckpoint, trainer: Trainer) -> bool:
    """Not sanity checking, not already saved at this step, not ``fast_dev_run``: the callback's own test."""
    return not callback._should_skip_saving_checkpoint(trainer)


def saves_on_train_epoch_end(callback: ModelCheckpoint, trainer: Trainer) -> bool:
    return callback._should_save_on_train_epoch_end(trainer)


def saves_on_exception(callback: ModelCheckpoint, trainer: Trainer) -> bool:
    return callback._should_save_on_exception(trainer)


def every_n_train_steps(callback: ModelCheckpoint) -> int:
    return callback._every_n_train_steps


def last_step_saved(callback: ModelCheckpoint) -> int:
    return callback._last_global_step_saved


def forget_last_save(callback: ModelCheckpoint) -> None:
    """Let the next save point save at the step already saved."""
    callback._last_global_step_saved = -1


def last_checkpoint_saved(callback: ModelCheckpoint) -> str:
    return callback._last_checkpoint_saved


def logger_started(logger: CSVLogger) -> bool:
    """The logger has made its experiment (written or opened its files)."""
    return logger._experiment is not None


def set_logger_version(logger: CSVLogger, version: str) -> None:
    logger._version = version


def set_experiment(logger: CSVLogger, experiment: ExperimentWriter) -> None:
    """Give the logger its writer (instead of the one it would make)."""
    logger._experiment = experiment


def silence_library_noise() -> None:
    """Drop Lightning's advertisement for its LitLogger product, and a deprecation warning raised inside
    Lightning's own pytree code (not user code)."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(lambda record: "litlogger" not in record.getMessage())
