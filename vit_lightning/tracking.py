"""Experiment tracking: the complete run configuration sent to every logger, and Weights & Biases set-up.

W&B is used through Lightning's ``WandbLogger`` (``configs/wandb.yaml``). :func:`prepare_wandb` fills in what a run
needs before the logger exists: its folder (``WANDB_DIR`` or the run's root dir), its project (``WANDB_PROJECT`` or
``vit-lightning``), the run id of the checkpoint a ``fit`` resumes from (so the same W&B run continues), and a check
that online mode has credentials, instead of a prompt that would hang a batch job.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import yaml
from jsonargparse import Namespace
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback

from vit_lightning.errors import UserError

PACKAGES = ("vit-lightning", "torch", "torchvision", "lightning", "torchmetrics", "wandb", "jsonargparse")
OFFLINE_MODES = ("offline", "dryrun", "disabled")


class RunConfig(SaveConfigCallback):
    """Write ``config.yaml`` to the log folder (as LightningCLI does) and log the same complete, resolved
    configuration to every logger, with the model's parameter count and the package versions.

    Loggers otherwise only see the LightningModule's init arguments; this makes a run reproducible from its
    W&B (or ``hparams.yaml``) record alone.
    """

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        record = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        record["parameters"] = sum(parameter.numel() for parameter in pl_module.parameters())
        record["versions"] = package_versions()
        for logger in trainer.loggers:
            logger.log_hyperparams(record)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a run depends on, e.g. ``{"torch": "2.14.1", ...}``."""
    versions = {"python": sys.version.split()[0]}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


def is_wandb_logger(logger: Any) -> bool:
    return isinstance(logger, Namespace) and str(logger.get("class_path", "")).endswith("WandbLogger")


def prepare_wandb(logger: Namespace, root_dir: str, resumed_run_id: str | None) -> None:
    """Complete a ``WandbLogger`` config in place (see the module docstring); raise a one-line
    :class:`UserError` when W&B would need to ask for an API key."""
    init_args = logger.init_args
    if init_args.get("save_dir") in (None, "."):
        init_args.save_dir = os.environ.get("WANDB_DIR") or root_dir
    if not init_args.get("project"):
        init_args.project = os.environ.get("WANDB_PROJECT") or "vit-lightning"
    if resumed_run_id and not (init_args.get("version") or init_args.get("id")):
        init_args.version = resumed_run_id
    init_args.resume = init_args.get("resume") or "allow"  # WandbLogger's own default, unless the config says otherwise
    mode = init_args.get("mode") or os.environ.get("WANDB_MODE", "")
    offline = init_args.get("offline") or mode.lower() in OFFLINE_MODES
    if not offline and not sys.stdin.isatty():
        import wandb

        if not wandb.login(prompt=False, verify=False):
            raise UserError("W&B is online but has no API key: run `wandb login` (or set WANDB_API_KEY), "
                            "or set WANDB_MODE=offline to log to disk and `wandb sync` later")
