"""Experiment tracking: the complete run configuration sent to every logger, and Weights & Biases set-up.

W&B is used through Lightning's ``WandbLogger`` (``configs/wandb.yaml``). :func:`prepare_wandb` fills in what a run
needs before the logger exists: its folder (``WANDB_DIR`` or the run's root dir), its project (``WANDB_PROJECT`` or
``vit-lightning``), the run id of the checkpoint a ``fit`` resumes from (so the same W&B run continues), a check
that online mode has credentials, instead of a prompt that would hang a batch job, and a fall-back to offline
mode, said in one line, when the W&B server cannot be reached.
"""

from __future__ import annotations

import os
import socket
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import urlparse

import yaml
from jsonargparse import Namespace
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback

from vit_lightning.errors import UserError

PACKAGES = ("vit-lightning", "torch", "torchvision", "lightning", "torchmetrics", "wandb", "jsonargparse")
OFFLINE_MODES = ("offline", "dryrun", "disabled")
ONLINE_MODES = ("online", "run", "shared")


class RunConfig(SaveConfigCallback):
    """Write ``config.yaml`` to the log folder (as LightningCLI does) and log the same complete, resolved
    configuration to every logger, with the model's parameter count and the package versions.

    Loggers otherwise only see the LightningModule's init arguments; this makes a run reproducible from its
    W&B (or ``hparams.yaml``) record alone.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.loggers or stage != "predict":  # a predict without a logger writes only its predictions
            super().setup(trainer, pl_module, stage)

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
    if os.environ.get("WANDB_MODE") == "":  # set but empty means unset, which wandb itself refuses
        del os.environ["WANDB_MODE"]
    mode = init_args.get("mode") or os.environ.get("WANDB_MODE", "")
    if mode and mode.lower() not in (*ONLINE_MODES, *OFFLINE_MODES):
        raise UserError(f"W&B mode {mode!r} (WANDB_MODE or the logger's mode) is not one of online, offline, disabled")
    if init_args.get("offline") or mode.lower() in OFFLINE_MODES:
        return
    server = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    problem = unreachable(server)  # checked first: wandb.login would make even an offline run contact the server
    if problem is None:
        if not sys.stdin.isatty():
            import wandb

            if not wandb.login(prompt=False, verify=False):
                raise UserError("W&B is online but has no API key: run `wandb login` (or set WANDB_API_KEY), "
                                "or set WANDB_MODE=offline to log to disk and `wandb sync` later")
        return
    if init_args.get("log_model"):
        raise UserError(f"W&B cannot reach {server} ({problem}) and log_model needs it; check the network, or set "
                        "WANDB_MODE=offline and log_model false")
    init_args.offline = True  # instead of wandb.init's two-minute wait and traceback
    if init_args.get("mode"):
        init_args.mode = "offline"
    print(f"W&B cannot reach {server} ({problem}): logging offline under {init_args.save_dir}/wandb; upload the "
          "run later with `wandb sync`", file=sys.stderr)


def unreachable(url: str, timeout: float = 5.0) -> str | None:
    """Why a TCP connection to ``url``'s host cannot be opened within ``timeout`` seconds; ``None`` if it can."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname or "", port), timeout=timeout).close()
    except OSError as error:
        return error.strerror or type(error).__name__
    return None
