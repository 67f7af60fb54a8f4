"""vit-lightning: a Vision Transformer written from scratch, trained with PyTorch Lightning on MNIST-family data.

The layout, one way of importing: :mod:`.model` (the ViT, plain PyTorch) and :mod:`.architecture` (its settings) at
the centre; :mod:`.data` and :mod:`.serving` without Lightning; :mod:`.training` with it, using the others. The
commands are ``train.py`` (:mod:`.training.cli`), ``python -m vit_lightning.export``, ``python -m
vit_lightning.demo`` and ``python -m vit_lightning.benchmark``.
"""

import importlib
import sys
import importlib.abc
import importlib.util

__version__ = "0.1.0"

# Where the modules of the flat layout (up to November 2026) went. Files written then name them: a run's
# config.yaml (vit_lightning.callbacks.EpochSummary, vit_lightning.metrics_log.ResumableCSVLogger), a model folder's
# card (vit_lightning.pretrained, vit_lightning.preprocess), README's plain-Python use
# (vit_lightning.module.ViTClassifier). Each old name is the new module itself, imported only when asked for.
MOVED = {
    "vit_lightning.callbacks": "vit_lightning.training.callbacks",
    "vit_lightning.metrics_log": "vit_lightning.training.metrics_log",
    "vit_lightning.module": "vit_lightning.training.module",
    "vit_lightning.preprocess": "vit_lightning.data.preprocess",
    "vit_lightning.pretrained": "vit_lightning.serving.model_folder",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import an old module name of :data:`MOVED` as its new module (the same object)."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module) -> None:
        pass  # already executed under its new name


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())
