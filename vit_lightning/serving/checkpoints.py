"""Checkpoint files, without Lightning: what a checkpoint of this project holds besides Lightning's own keys, how
``best`` and ``last`` are found in a run folder, how a file is loaded and checked against a model, and the one
place that decides the model settings and the dataset a checkpoint stands for (older checkpoints included).
Training (:mod:`vit_lightning.training.checkpointing` writes them; the CLI reads them), export and the demo read
them through this module."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Mapping

import torch

from vit_lightning.architecture import ARCHITECTURE, SETTINGS
from vit_lightning.data.datasets import DATASETS, DatasetInfo
from vit_lightning.layers import OBSOLETE_PARAMETERS
from vit_lightning.errors import UserError
from vit_lightning.outputs import LAST_CHECKPOINT

LOG_DIR = "log_dir"  # the folder the run logged its metrics to, which a resumed fit continues
LOGGER_VERSIONS = "logger_versions"  # {logger class name: its version}, e.g. the W&B run id a resumed fit continues
DATASET = "dataset"  # the dataset the model was trained on, as far as the model depends on it (dataset_record)
DATASET_RECORD = ("name", "classes", "mean", "std", "image_size", "in_channels")
# with weight averaging (configs/ema.yaml; Lightning's WeightAveraging names the key): the weights training goes on
# from, while "state_dict" holds the average, which evaluation, export and the demo use
TRAINING_WEIGHTS = "current_model_state"


def resolve_checkpoint(ckpt_path: str | None, checkpoint_dir: Path, fit: bool) -> str | None:
    """Turn ``best``/``last`` into the file in ``checkpoint_dir`` (the caller loads it with :func:`load_checkpoint`);
    ``best`` is the file of that name in ``checkpoint_dir``, wherever the run folder was when it was saved.

    A real path lets LightningCLI rebuild the model from the checkpoint's saved hyper-parameters. ``fit`` with
    ``last`` and no checkpoint yet stays ``last``: Lightning then warns and starts from scratch.
    """
    if ckpt_path is None:
        return None
    last = checkpoint_dir / LAST_CHECKPOINT
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
        # the stored path is absolute: look for its file name here, so a copied or moved run folder uses its own
        if not best or not (checkpoint_dir / Path(best).name).is_file():
            raise UserError(f"--ckpt_path best: {last} names no best checkpoint that is still in {checkpoint_dir}; "
                            "pass --ckpt_path PATH")
        return str(checkpoint_dir / Path(best).name)
    return ckpt_path


def load_checkpoint(path: Path) -> dict:
    """Load a Lightning checkpoint on the CPU (memory-mapped: cheap to repeat), or raise a one-line
    :class:`UserError` saying why it is unusable."""
    if path.is_dir():
        raise UserError(f"--ckpt_path {path} is a folder; pass a .ckpt file in it (e.g. {path / LAST_CHECKPOINT}), "
                        "'last' or 'best'")
    if not path.is_file():
        raise UserError(f"--ckpt_path {path} does not exist; pass an existing .ckpt file, 'last' or 'best'")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except PermissionError:
        raise UserError(f"--ckpt_path {path} cannot be read (permission denied); make it readable") from None
    except Exception as error:  # noqa: BLE001 - any failure to unpickle means the same thing to the user
        raise UserError(f"--ckpt_path {path} is not a readable checkpoint ({type(error).__name__}); "
                        "pass a .ckpt file written by this project") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"--ckpt_path {path} is not a Lightning checkpoint (no state_dict); "
                        "pass a .ckpt file written by this project")
    return checkpoint


def model_settings(checkpoint: Mapping, path: str | Path) -> dict:
    """The model's init arguments saved in ``checkpoint`` (its ``--model`` settings), ``{}`` if it saved none.
    Architecture options newer than the checkpoint take the model's defaults, which rebuild the architecture it
    was trained with (the configs' defaults may have moved on). Raises a one-line :class:`UserError` for the
    checkpoint of another LightningModule."""
    hyper_parameters = checkpoint.get("hyper_parameters") or {}
    saved = saved_settings(hyper_parameters)
    foreign = sorted(saved.keys() - SETTINGS)
    class_path = hyper_parameters.get("_class_path", "")  # LightningCLI's subclass mode
    if foreign or (class_path and not class_path.endswith(".ViTClassifier")):
        what = f"its model settings {', '.join(foreign[:3])}" if foreign else f"its model {class_path}"
        raise UserError(f"--ckpt_path {path} is not a vit-lightning checkpoint ({what} are not this project's); "
                        "pass a .ckpt file written by this project's train.py")
    return {**ARCHITECTURE, **saved} if saved else {}


def dataset_record(info: DatasetInfo) -> dict:
    """What a checkpoint keeps under :data:`DATASET` of the dataset its model was trained on."""
    return {"name": info.name, "classes": list(info.classes), "mean": info.mean, "std": info.std,
            "image_size": info.image_size, "in_channels": info.in_channels}


def trained_on(checkpoint: Mapping, path: str | Path) -> DatasetInfo | None:
    """The dataset ``checkpoint``'s model was trained on, with the class names, normalisation and image size the
    checkpoint recorded; for a checkpoint older than that record, the dataset its data settings name, with
    today's facts; ``None`` if it names none."""
    record = checkpoint.get(DATASET) or {}
    name = record.get("name") or (checkpoint.get("datamodule_hyper_parameters") or {}).get("dataset")
    if name is None:
        return None
    if name not in DATASETS:
        raise UserError(f"--ckpt_path {path} was trained on {name!r}, which this version does not know "
                        f"({', '.join(DATASETS)}); use the version that trained it")
    recorded = {key: record[key] for key in DATASET_RECORD[1:] if key in record}
    if "classes" in recorded:
        recorded["classes"] = tuple(recorded["classes"])
    return replace(DATASETS[name], **recorded)


def dataset_for(checkpoint: Mapping, path: str | Path | None, given: str | None,
                remedy: str = "the checkpoint's dataset applies: drop --data.dataset") -> DatasetInfo | None:
    """The dataset to use with ``checkpoint`` (``{}``: none): the one it was trained on (:func:`trained_on`), which
    ``given`` (``--data.dataset``) may repeat but not contradict (a one-line :class:`UserError` ending in
    ``remedy``); else ``given``; ``None`` when neither names one."""
    if given is not None and given not in DATASETS:
        raise UserError(f"unknown --data.dataset {given!r}; choose one of {', '.join(DATASETS)}")
    trained = trained_on(checkpoint, path)
    if trained is not None and given not in (None, trained.name):
        raise UserError(f"--ckpt_path {path} was trained on --data.dataset {trained.name}, not {given}; {remedy}")
    return trained or (DATASETS[given] if given else None)


def saved_settings(hyper_parameters: Mapping) -> dict:
    """Saved hyper-parameters (a checkpoint's ``hyper_parameters`` or ``datamodule_hyper_parameters``, a module's
    ``hparams``) without the keys LightningCLI adds for itself (``_instantiator``, ``_class_path``)."""
    return {key: value for key, value in hyper_parameters.items() if not key.startswith("_")}


def logger_version(checkpoint: dict, logger_name: str) -> str | None:
    """The version (W&B: run id) the logger class ``logger_name`` had in the run that saved ``checkpoint``."""
    return (checkpoint.get(LOGGER_VERSIONS) or {}).get(logger_name)


def require_fitting_state(model: torch.nn.Module, state_dict: dict, ckpt_path: str) -> None:
    """Raise a one-line :class:`UserError` when a checkpoint's weights do not fit ``model`` (another architecture)."""
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    found = {name: tuple(tensor.shape) for name, tensor in state_dict.items()
             if not name.endswith(OBSOLETE_PARAMETERS)}  # loading discards them
    if expected == found:
        return
    differences = [f"{name} is {found[name]} in the checkpoint but {shape} in the model"
                   for name, shape in expected.items() if name in found and found[name] != shape]
    differences += [f"{name} is missing" for name in expected.keys() - found.keys()]
    differences += [f"{name} is unexpected" for name in found.keys() - expected.keys()]
    raise UserError(f"--ckpt_path {ckpt_path} does not fit this model ({len(differences)} differences, e.g. "
                    f"{sorted(differences)[0]}); pass a checkpoint of this architecture or the --model settings "
                    "it was trained with")
