"""``python train.py fit|validate|test|predict``: LightningCLI over ViTClassifier and MNISTDataModule."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from vit_lightning.callbacks import PredictionWriter
from vit_lightning.checkpoint import Checkpoint
from vit_lightning.data import MNISTDataModule
from vit_lightning.errors import UserError
from vit_lightning.module import ViTClassifier

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class ViTCLI(LightningCLI):
    """LightningCLI with the project's defaults (``configs/default.yaml``), checkpointing and prediction output.

    Everything a run writes lives under ``--trainer.default_root_dir``: checkpoints in its fixed
    ``checkpoints/`` folder (so ``--ckpt_path last`` finds the previous run) and, unless another logger is
    configured, CSV logs in ``logs/version_N/``.
    """

    def __init__(self, args: list[str] | None = None, run: bool = True):
        defaults = {"default_config_files": [str(DEFAULT_CONFIG)]} if DEFAULT_CONFIG.is_file() else {}
        super().__init__(
            ViTClassifier,
            MNISTDataModule,
            seed_everything_default=42,
            parser_kwargs={subcommand: defaults for subcommand in SUBCOMMANDS},
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.add_lightning_class_args(PredictionWriter, "predictions")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        if self.config.get("subcommand"):
            config = self.config[self.config.subcommand]
            root = Path(config.trainer.default_root_dir or ".")
            if config.checkpoint.dirpath is None:
                config.checkpoint.dirpath = str(root / "checkpoints")
            config.ckpt_path = resolve_checkpoint(config.ckpt_path, Path(config.checkpoint.dirpath),
                                                  fit=self.config.subcommand == "fit")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = Path(config.trainer.default_root_dir or ".")
        if config.trainer.logger in (None, True):
            config.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.CSVLogger",
                init_args=Namespace(save_dir=str(root), name="logs"),
            )


def resolve_checkpoint(ckpt_path: str | None, checkpoint_dir: Path, fit: bool) -> str | None:
    """Turn ``best``/``last`` into the file in ``checkpoint_dir`` and check that a checkpoint file is usable.

    A real path lets LightningCLI rebuild the model from the checkpoint's saved hyper-parameters. ``fit`` with
    ``last`` and no checkpoint yet stays ``last``: Lightning then warns and starts from scratch.
    """
    if ckpt_path is None:
        return None
    last = checkpoint_dir / "last.ckpt"
    if ckpt_path == "last":
        if last.is_file():
            return str(last)
        if fit:
            return ckpt_path
        raise UserError(f"--ckpt_path last: no {last}; train first or pass --ckpt_path PATH")
    if ckpt_path == "best":
        if not last.is_file():
            raise UserError(f"--ckpt_path best: no checkpoints in {checkpoint_dir}; train first or pass --ckpt_path PATH")
        states = load_checkpoint(last).get("callbacks", {})
        best = next((s["best_model_path"] for s in states.values() if isinstance(s, dict) and s.get("best_model_path")), "")
        if not best or not Path(best).is_file():
            raise UserError(f"--ckpt_path best: {last} names no best checkpoint that still exists; pass --ckpt_path PATH")
        return best
    load_checkpoint(Path(ckpt_path))
    return ckpt_path


def load_checkpoint(path: Path) -> dict:
    """Load a Lightning checkpoint on the CPU, or raise a one-line :class:`UserError` saying why it is unusable."""
    if not path.is_file():
        raise UserError(f"--ckpt_path {path} does not exist; pass an existing .ckpt file, 'last' or 'best'")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure to unpickle means the same thing to the user
        raise UserError(f"--ckpt_path {path} is not a readable checkpoint ({type(error).__name__}); "
                        "pass a .ckpt file written by this project") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"--ckpt_path {path} is not a Lightning checkpoint (no state_dict); "
                        "pass a .ckpt file written by this project")
    return checkpoint


def main(args: list[str] | None = None) -> None:
    """Run the CLI; a :class:`UserError` becomes one line on stderr and exit status 1."""
    try:
        ViTCLI(args=args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
