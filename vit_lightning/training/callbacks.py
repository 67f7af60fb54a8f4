"""Every callback of a run, registered here; the CLI (:mod:`.cli`) adds them from these lists, and a config only
opts in or replaces the defaults. Each class lives with its concept (progress, checkpointing, ...).

- :data:`SECTIONS`: callbacks with their own config section and flags (``--checkpoint.monitor``, ...).
- :data:`ALWAYS`: added to every run, whatever ``trainer.callbacks`` says (no checkpoint may hold NaN weights).
- :data:`DEFAULTS`: the default ``trainer.callbacks``; a config's ``trainer.callbacks: [...]`` replaces them and
  ``trainer.callbacks+: [...]`` adds to them.
- :data:`OPT_IN`: the presets that add one (``--config configs/early_stopping.yaml``, ``configs/lr_find.yaml``,
  ``configs/ema.yaml``).

Old configs name ``vit_lightning.callbacks.EpochSummary`` and its siblings: that module is this one
(``vit_lightning.MOVED``), so they load.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, RichProgressBar

from vit_lightning.training.averaging import ExponentialAveraging
from vit_lightning.training.checkpointing import Checkpoint
from vit_lightning.training.divergence import StopOnDivergence
from vit_lightning.training.lr_search import LearningRateSearch
from vit_lightning.training.pictures import Pictures
from vit_lightning.training.predictions import PredictionWriter
from vit_lightning.training.progress import EpochSummary, TrainingSpeed

__all__ = ["Checkpoint", "EarlyStopping", "EpochSummary", "ExponentialAveraging", "LearningRateSearch", "Pictures",
           "PredictionWriter", "StopOnDivergence", "TrainingSpeed"]

SECTIONS = {"checkpoint": Checkpoint, "predictions": PredictionWriter, "pictures": Pictures}
ALWAYS = (StopOnDivergence,)
DEFAULTS = (
    (LearningRateMonitor, {"logging_interval": "step"}),
    (RichProgressBar, {}),
    (EpochSummary, {}),
    (TrainingSpeed, {}),
)
OPT_IN = {"early_stopping": EarlyStopping, "lr_find": LearningRateSearch, "ema": ExponentialAveraging}


def class_path(cls: type) -> str:
    """Where ``cls`` is imported from in a config: Lightning's public path for its own callbacks."""
    module = "lightning.pytorch.callbacks" if cls.__module__.startswith("lightning.") else cls.__module__
    return f"{module}.{cls.__name__}"


def default_callbacks() -> list[dict]:
    """:data:`DEFAULTS` as the ``trainer.callbacks`` value of a config."""
    return [{"class_path": class_path(cls), **({"init_args": dict(args)} if args else {})} for cls, args in DEFAULTS]
