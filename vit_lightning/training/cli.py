"""``python train.py fit|validate|test|predict``: LightningCLI over ViTClassifier and MNISTDataModule."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

import torch
import yaml
from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from vit_lightning.architecture import DATASET_FACTS, TRAINING_ONLY
from vit_lightning.errors import UserError
from vit_lightning.outputs import (NO_SPACE, NOT_WRITABLE, RunFolder, reader_may_leave, require_writable_folder,
                                   storage_problem)
from vit_lightning.serving.checkpoints import (LOG_DIR, dataset_for, load_checkpoint, logger_version,
                                               model_settings, require_fitting_state, resolve_checkpoint, trained_on)
from vit_lightning.training import callbacks, compat
from vit_lightning.training.averaging import require_averaging_to_resume
from vit_lightning.training.datamodule import MNISTDataModule
from vit_lightning.training.metrics_log import ResumableCSVLogger
from vit_lightning.training.module import ViTClassifier
from vit_lightning.training.presets import preset_file
from vit_lightning.training.run_lock import RunLock
from vit_lightning.training.tracking import RunConfig, is_wandb_logger, prepare_wandb

SUBCOMMANDS = ("fit", "validate", "test", "predict")


class OneLineErrorParser(LightningArgumentParser):
    """The CLI's parser, whose refusals (an unknown flag, a value of the wrong type, a linked setting) are one line
    ``error: ...`` with a pointer to ``--help``, instead of jsonargparse's whole usage text before the message."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)  # raises an ArgumentError for the caller
        linked = re.match(r'Linked "model\.(\w+)" must be given via', message)
        if linked:
            message = f"--model.{linked[1]} is the dataset's (--data.dataset), not a setting; drop it"
        command = (getattr(ex, "subcommand_parser", None) or self).prog.replace(" [options]", "")
        print(f"error: {' '.join(message.split())} (every option: {command} --help)", file=sys.stderr)
        sys.exit(2)


class ViTCLI(LightningCLI):
    """LightningCLI with the project's defaults (``configs/default.yaml``), checkpointing and prediction output.

    Everything a run writes lives under ``--trainer.default_root_dir``: checkpoints in its fixed
    ``checkpoints/`` folder (so ``--ckpt_path last`` finds the previous run) and, unless another logger is
    configured, CSV logs: a fit's in ``logs/version_N/``, which ``fit --ckpt_path`` continues, one row per
    ``validate`` or ``test`` in ``logs/validate/`` or ``logs/test/`` (``predict`` logs nothing). Output locations
    are checked before anything runs, and a checkpoint must fit the model it is loaded into.
    """

    checkpoint: dict | None = None  # the --ckpt_path checkpoint, loaded (memory-mapped) once while parsing
    lock: RunLock | None = None  # held by a fit (its first process) while it runs

    def __init__(self, args: list[str] | None = None, run: bool = True):
        defaults = {"default_config_files": [str(preset_file("default"))]}
        try:
            super().__init__(
                ViTClassifier,
                MNISTDataModule,
                seed_everything_default=42,
                parser_kwargs={subcommand: defaults for subcommand in SUBCOMMANDS} if run else defaults,
                save_config_callback=RunConfig,
                save_config_kwargs={"overwrite": True},
                trainer_defaults={"callbacks": [always() for always in callbacks.ALWAYS]},  # added to any configured
                parser_class=OneLineErrorParser,
                auto_configure_optimizers=False,
                args=args,
                run=run,
            )
        finally:
            if self.lock is not None:
                self.lock.release()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for section, callback in callbacks.SECTIONS.items():
            parser.add_lightning_class_args(callback, section)
        parser.set_defaults({"trainer.callbacks": callbacks.default_callbacks()})
        for fact in DATASET_FACTS:  # not settable: a dataset and a model that disagree cannot be configured
            parser.link_arguments(f"data.{fact}", f"model.{fact}", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        require_settings_in_config_files(sys.argv[1:] if args is None else args)
        super().parse_arguments(parser, args)
        if self.config.get("subcommand"):
            config = self.config[self.config.subcommand]
            run = RunFolder(Path(config.trainer.default_root_dir or "."))
            root = run.root
            if config.checkpoint.dirpath is None:
                config.checkpoint.dirpath = str(run.checkpoints)
            config.ckpt_path = resolve_checkpoint(config.ckpt_path, Path(config.checkpoint.dirpath),
                                                  fit=self.config.subcommand == "fit")
            if config.ckpt_path not in (None, "last"):  # "last" stays a name only for a fit with nothing to resume
                self.checkpoint = load_checkpoint(Path(config.ckpt_path))
            config.data.dataset = self._dataset(config)
            require_writable_folder(root, "--trainer.default_root_dir")
            if self.config.subcommand == "fit":
                require_writable_folder(Path(config.checkpoint.dirpath), "--checkpoint.dirpath")
                if rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") == "0":  # not DDP's other ranks
                    self.lock = RunLock(root)
                    self.lock.acquire()
            if config.trainer.logger in (None, True) and self.config.subcommand != "predict":  # the default CSV log
                require_writable_folder(run.logs, "--trainer.default_root_dir")
            if self.config.subcommand == "predict" and config.predictions.output:
                output = Path(config.predictions.output)
                if output.is_dir() or config.predictions.output.endswith(os.sep):
                    raise UserError(f"--predictions.output {output} is a folder; give a file name such as "
                                    f"{output / 'predictions.csv'}")
                require_writable_folder(output.parent, "--predictions.output")
                if output.exists() and not (os.access(output, os.W_OK) and output.stat().st_mode & 0o222):
                    raise UserError(f"--predictions.output {output} is read-only; make it writable or choose "
                                    "another file")

    def _dataset(self, config: Namespace) -> str:
        """The dataset to use: the checkpoint's (``--data.dataset`` may only repeat it), else ``--data.dataset``,
        else MNIST."""
        remedy = ("a resumed fit trains on its own dataset: drop --data.dataset (and a --config that sets it), or "
                  "train a new run in another --trainer.default_root_dir" if self.config.subcommand == "fit"
                  else "the checkpoint's dataset applies: drop --data.dataset (and a --config that sets it)")
        info = dataset_for(self.checkpoint or {}, config.ckpt_path, config.data.dataset, remedy)
        return info.name if info else "mnist"

    def _parse_ckpt_path(self) -> None:
        """Take the model settings from the ``--ckpt_path`` checkpoint (as LightningCLI does), after refusing
        ``--model`` settings given on the command line or in a ``--config`` that contradict them (which
        LightningCLI would silently override)."""
        if self.checkpoint is None:
            return
        subcommand = self.config.subcommand
        config = self.config[subcommand]
        hparams = {key: value for key, value in model_settings(self.checkpoint, config.ckpt_path).items()
                   if key not in DATASET_FACTS}  # linked from the data; a checkpoint of other data does not fit
        if not hparams:
            return
        defaults = compat.subcommand_defaults(self, subcommand).model
        conflicts = contradicted_settings(hparams, config.model.as_dict(), defaults.as_dict())
        if subcommand != "fit":
            conflicts = [c for c in conflicts if c[0].split(".")[0] not in TRAINING_ONLY]
        if conflicts:
            given = ", ".join(f"--model.{key} {mine}" for key, _, mine in conflicts)
            trained = ", ".join(f"--model.{key} {theirs}" for key, theirs, _ in conflicts)
            remedy = ("a resumed fit keeps the checkpoint's model settings: drop these flags, or train a new run in "
                      "another --trainer.default_root_dir" if subcommand == "fit"
                      else "the checkpoint's model settings apply: drop these flags")
            raise UserError(f"--ckpt_path {config.ckpt_path} was trained with {trained}, not {given}; {remedy}")
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        run = RunFolder(Path(config.trainer.default_root_dir or "."))
        root = run.root
        if config.trainer.logger in (None, True):  # the default CSV log (see the class docstring)
            version = None if self.subcommand == "fit" else self.subcommand
            config.trainer.logger = False if self.subcommand == "predict" else Namespace(
                class_path=f"{ResumableCSVLogger.__module__}.{ResumableCSVLogger.__name__}",
                init_args=Namespace(save_dir=str(run.logs.parent), name=run.logs.name, version=version),
            )
        loggers = config.trainer.logger if isinstance(config.trainer.logger, list) else [config.trainer.logger]
        for logger in filter(is_wandb_logger, loggers):
            prepare_wandb(logger, str(root), self._resumed_logger_version("WandbLogger"))
        unwanted = (("ProgressBar",) if config.trainer.enable_progress_bar is False else ()) + (  # the defaults'
                    ("LearningRateMonitor",) if config.trainer.logger is False else ())  # it needs a logger
        config.trainer.callbacks = [callback for callback in config.trainer.callbacks or []
                                    if not callback.class_path.endswith(unwanted)]

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:  # jsonargparse's many lines for a class whose package is not installed
            missing = re.findall(r"Requirement '([\w.-]+)' not met", str(error))
            if not missing:
                raise
            named = re.search(r"class_path '(?:[\w.]+\.)?(\w+)'", str(error))
            raise UserError(f"{named[1] if named else 'a configured class'} needs {' or '.join(missing)}, which is "
                            f"not installed: pip install {missing[-1]}") from None

    def _resumed_logger_version(self, logger_name: str) -> str | None:
        """The version (W&B: run id) that ``logger_name`` had in the checkpoint a ``fit`` resumes from."""
        if self.subcommand != "fit" or self.checkpoint is None:
            return None
        return logger_version(self.checkpoint, logger_name)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config[self.subcommand] if self.subcommand else self.config
        checkpointing = config.trainer.enable_checkpointing is not False
        try:  # the checkpoint section's callback is always added; Lightning refuses it without checkpointing
            trainer = super().instantiate_trainer(**kwargs, **({} if checkpointing else {"enable_checkpointing": True}))
        except MisconfigurationException as error:  # e.g. max_epochs -5: Lightning says what is wrong
            raise UserError(f"--trainer settings: {str(error).splitlines()[0]}") from None
        if not checkpointing:
            trainer.callbacks = [callback for callback in trainer.callbacks if not isinstance(callback, ModelCheckpoint)]
        return trainer

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        require_valid_optimizer(self.model.optimizer)
        if self.subcommand in ("validate", "test") and isinstance(self.trainer.logger, ResumableCSVLogger):
            checkpoint = self.checkpoint or {}
            self.trainer.logger.add_evaluation(checkpoint.get("epoch", 0), checkpoint.get("global_step", 0))
        if self.checkpoint is None:
            return
        trained = trained_on(self.checkpoint, self.config[self.subcommand].ckpt_path)
        if trained is not None:  # its recorded class names and normalisation
            self.datamodule.info = trained
        require_fitting_state(self.model, self.checkpoint["state_dict"], self.config[self.subcommand].ckpt_path)
        if self.subcommand == "fit":
            require_averaging_to_resume(self.checkpoint, self.trainer.callbacks, self.config.fit.ckpt_path)
            if isinstance(self.trainer.logger, ResumableCSVLogger):
                self.trainer.logger.continue_from(self.checkpoint.get(LOG_DIR), self.checkpoint["global_step"])


def contradicted_settings(saved: dict, config: dict, defaults: dict) -> list[tuple[str, object, object]]:
    """``(dotted key, saved value, configured value)`` for every setting the user changed from its default
    (``config`` != ``defaults``) to something other than the checkpoint's ``saved`` value."""
    flat_saved, flat_config, flat_defaults = (_flatten(mapping) for mapping in (saved, config, defaults))
    return [(key, value, flat_config[key]) for key, value in flat_saved.items()
            if key in flat_config and flat_config[key] != value and flat_config[key] != flat_defaults.get(key)]


def _flatten(mapping: dict, prefix: str = "") -> dict[str, object]:
    """``{"optimizer": {"init_args": {"lr": 0.1}}}`` as ``{"optimizer.init_args.lr": 0.1}``; tuples as lists."""
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def require_valid_optimizer(optimizer: Callable | None) -> None:
    """Raise a one-line :class:`UserError` when the ``--model.optimizer`` settings are refused by the optimizer
    (a negative learning rate, betas outside [0, 1), ...), which would otherwise fail only once training starts."""
    if optimizer is None:
        return
    try:
        optimizer([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as error:
        raise UserError(f"--model.optimizer: {error}; fix its init_args (e.g. --model.optimizer.init_args.lr)") from None


def require_settings_in_config_files(args: Any) -> None:
    """Raise a one-line :class:`UserError` for a ``--config`` file that holds no settings (empty, only comments, or
    YAML that is not a mapping), which jsonargparse reports as ``Unexpected config:`` after its usage text."""
    if not isinstance(args, (list, tuple)):
        return
    paths = [value for flag, value in zip(args, args[1:]) if flag == "--config"]
    paths += [arg.split("=", 1)[1] for arg in args if arg.startswith("--config=")]
    for path in filter(os.path.isfile, paths):
        try:
            settings = yaml.safe_load(Path(path).read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # jsonargparse says what is wrong with it
        if not isinstance(settings, dict):
            problem = "is empty" if settings is None else "holds no settings"
            raise UserError(f"--config {path} {problem}; give YAML `option: value` lines, as in configs/quick.yaml")


def main(args: list[str] | None = None) -> None:
    """Run the CLI; a :class:`UserError` becomes one line on stderr and exit status 1, SIGTERM exit status 143 and
    Ctrl-C 1 (after the checkpoint callback saved ``last.ckpt`` and said so), 130 before anything ran."""
    compat.silence_library_noise()
    try:
        with reader_may_leave():  # a closed stdout (| head) never ends a fit or a predict early
            ViTCLI(args=args)
    except UserError as error:
        if rank_zero_only.rank == 0:  # under DDP every process raises it: say it once
            print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # before a Trainer runs (parsing, loading data); Lightning handles it inside one
        print("Ctrl-C: stopped before anything ran", file=sys.stderr)
        sys.exit(130)
    except SIGTERMException as error:  # also Ctrl-C during fit (see checkpointing.Checkpoint), marked ctrl_c
        sys.exit(1 if getattr(error, "ctrl_c", False) else 128 + signal.SIGTERM)
    except OSError as error:
        if error.errno not in (*NO_SPACE, *NOT_WRITABLE):
            raise
        print(f"error: {storage_problem(error)}", file=sys.stderr)
        sys.exit(1)
