"""The callback inside each trial's fit: it reports the objective to the study and prunes the fit."""

from __future__ import annotations

import os
import sys
import threading
import time

import optuna
from lightning.pytorch import Callback, LightningModule, Trainer

from vit_lightning.errors import UserError
from vit_lightning.search.space import make_pruner
from vit_lightning.search.study import open_storage, trial_id

class StudyReport(Callback):
    """Report ``metric`` to trial number ``trial`` of study ``study`` in ``storage`` after every validation (step: the
    epochs done) and stop the fit when the pruner (``pruner``: a space's ``pruner:`` section) prunes it.

    Added to each trial's fit by the search (``DIR/trial_NNNN/search_trial.yaml``). Rank 0 reports and decides;
    every rank stops. The process exits when its parent (the worker, or DDP's rank 0) is gone.
    """

    def __init__(self, storage: str, study: str, trial: int, metric: str = "val/acc", pruner: dict | None = None):
        self.storage, self.study, self.trial, self.metric, self.pruner = storage, study, trial, metric, pruner or {}
        self._study: optuna.Study | None = None
        self._db: optuna.storages.BaseStorage | None = None
        self._id = -1
        _exit_when_orphaned()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune, step = False, trainer.current_epoch + 1
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.metric)
            if value is None:
                raise UserError(f"the search's objective {self.metric} was not logged by validation; choose one "
                                "the model logs (val/acc, val/loss) in the space's objective.metric")
            if self._study is None:
                optuna.logging.set_verbosity(optuna.logging.WARNING)
                self._db = storage = open_storage(self.storage)
                self._study = optuna.load_study(study_name=self.study, storage=storage, pruner=make_pruner(self.pruner))
                self._id = trial_id(storage, self.study, self.trial)
            self._db.set_trial_intermediate_value(self._id, step, float(value))
            prune = self._study.pruner.prune(self._study, self._db.get_trial(self._id))
            if prune:
                self._db.set_trial_user_attr(self._id, "pruned_at_epoch", step)
        if trainer.strategy.broadcast(prune, src=0):
            trainer.should_stop = True
            if trainer.is_global_zero:
                print(f"search: pruned after epoch {step} ({self.metric} {float(value):.4f})", flush=True)


_watching = False


def _exit_when_orphaned() -> None:
    """Exit this process when its parent ends (a worker killed with kill -9 cannot stop its trial)."""
    global _watching
    if _watching:
        return
    _watching, parent = True, os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        print("search: the worker that started this trial is gone; the trial stops", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="search-orphan-watch", daemon=True).start()
