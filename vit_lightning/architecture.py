"""The model's settings, declared once: :class:`~vit_lightning.model.VisionTransformer`'s signature is the list of
architecture settings and their defaults. Beside them, the module settings that do not change what a checkpoint
computes. No Lightning: the CLI, the LightningModule, export and the model folder all read them here."""

from __future__ import annotations

import inspect
from typing import Any, Mapping

from vit_lightning.model import VisionTransformer

# An option added later defaults to the architecture that came before it, so a checkpoint without it is rebuilt as it
# was trained (serving.checkpoints.model_settings).
ARCHITECTURE: dict[str, Any] = {name: parameter.default
                                for name, parameter in inspect.signature(VisionTransformer).parameters.items()}
DATASET_FACTS = ("num_classes", "image_size", "in_channels")  # the dataset's (linked from the data), not settings
TRAINING_ONLY = ("optimizer", "lr_schedule", "warmup_fraction", "label_smoothing", "dropout",
                 "drop_path")  # no effect on evaluation
RUN_TIME = ("compile", "test_time_flip", "test_time_shift")  # choices of each run, not saved in checkpoints
KIND = ("tokenizer", "pool", "pos_embedding")  # the choices that name the kind of model
SETTINGS = {*ARCHITECTURE, *TRAINING_ONLY, *RUN_TIME}  # every --model setting: ViTClassifier's init arguments


def architecture(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture among ``settings`` (a LightningModule's ``hparams``, a checkpoint's ``hyper_parameters``),
    the model's defaults for those missing: ``VisionTransformer(**architecture(settings))``."""
    return {name: settings.get(name, default) for name, default in ARCHITECTURE.items()}


def describe(settings: Mapping[str, Any]) -> str:
    """``tokenizer=patch, pool=cls, pos_embedding=sincos`` for an architecture."""
    return ", ".join(f"{name}={architecture(settings)[name]}" for name in KIND)
