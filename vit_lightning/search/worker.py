"""A worker: it claims trials one at a time and runs each as a ``train.py fit`` subprocess in its own run folder,
then tells Optuna the outcome; Ctrl-C and SIGTERM are passed to the running fit."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from vit_lightning.search.fit import TRAIN_PY, last_error_line, param_flags
from vit_lightning.search.results import short_name, show_value
from vit_lightning.search.space import Space
from vit_lightning.search.study import fail_dead_workers_trials, folder_lock, heartbeat, trial_id

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
GIVE_UP_AFTER = 5  # failed trials in a row after which a worker stops (a broken setting fails every trial)


class Worker:
    """Claims, runs and tells trials until the study holds ``trials`` finished or running ones (see
    :mod:`vit_lightning.search`)."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.BaseStorage, space: Space, folder: Path,
                 flags: list[str], storage_url: str, trials: int, timeout: float | None, retry: Any,
                 wandb_group: bool):
        self.study, self.storage, self.space, self.folder, self.flags = study, storage, space, folder, flags
        self.storage_url, self.trials, self.timeout, self.retry = storage_url, trials, timeout, retry
        self.wandb_group = wandb_group
        self.owner = f"{os.getpid()} {socket.gethostname()}"
        self.process: subprocess.Popen | None = None
        self.signals: list[int] = []

    def run(self) -> str | None:
        """Run trials; the reason the worker gave up early (failed trials in a row), if it did."""
        started, failures, last_error = time.monotonic(), 0, ""
        previous = {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not self.signals:
                if self.timeout is not None and time.monotonic() - started >= self.timeout:
                    print(f"search: --timeout {self.timeout:g} s reached; this worker starts no more trials")
                    break
                trial = self.claim()
                if trial is None:
                    break
                state, note = self.run_trial(trial)
                failures = failures + 1 if state == TrialState.FAIL and not self.signals else 0
                last_error = note
                if failures >= GIVE_UP_AFTER:
                    return f"{failures} trials in a row failed, the last: {last_error}"
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)
        name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        running = self.process is not None and self.process.poll() is None
        if running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)  # the fit saves last.ckpt after its batch (again: at once)
        if len(self.signals) == 1:
            print(f"search: {name}: " + ("the running trial saves and stops; this worker stops after it (Ctrl-C "
                                         "again to stop at once)" if running else "this worker stops"),
                  file=sys.stderr, flush=True)
        elif not running:
            raise KeyboardInterrupt

    def claim(self) -> optuna.Trial | None:
        """The next trial (a queued one first), or ``None`` when the study has enough."""
        with folder_lock(self.folder), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fail_stale_trials is experimental; ask() warns with a heartbeat
            fail_dead_workers_trials(self.study, self.storage, self.retry)  # first: it names the dead process
            optuna.storages.fail_stale_trials(self.study)
            trials = self.study.get_trials(deepcopy=False)
            if sum(t.state in (*FINISHED, TrialState.RUNNING) for t in trials) >= self.trials:
                return None
            self.study.sampler = optuna.samplers.TPESampler(seed=self.space.seed + len(trials),
                                                            n_startup_trials=self.space.startup_trials)
            trial = self.study.ask(self.space.parameters)
            self.storage.set_trial_system_attr(self.trial_id(trial), "worker", self.owner)
            return trial

    def trial_id(self, trial: optuna.Trial) -> int:
        return trial_id(self.storage, self.study.study_name, trial.number)

    def run_trial(self, trial: optuna.Trial) -> tuple[TrialState, str]:
        ident = self.trial_id(trial)
        attrs = self.storage.get_trial(ident).system_attrs
        root = attrs.get("failed_trial", trial.number)  # a retry continues the first run's folder
        run = self.folder / f"trial_{root:04d}"
        run.mkdir(parents=True, exist_ok=True)
        reporter = run / "search_trial.yaml"
        reporter.write_text(yaml.safe_dump({"trainer": {"callbacks+": [{
            "class_path": "vit_lightning.search.report.StudyReport",
            "init_args": {"storage": self.storage_url, "study": self.study.study_name, "trial": trial.number,
                          "metric": self.space.metric, "pruner": self.space.pruner}}]}}, sort_keys=False))
        command = [sys.executable, str(TRAIN_PY), "fit", "--trainer.enable_progress_bar=false", *self.flags,
                   *param_flags(trial.params), "--trainer.default_root_dir", str(run), "--config", str(reporter)]
        if self.wandb_group:
            command += [f"--trainer.logger.init_args.group={self.study.study_name}",
                        f"--trainer.logger.init_args.name={self.study.study_name}-trial-{trial.number}"]
        resumed = (run / "checkpoints" / "last.ckpt").is_file()
        if resumed:
            command += ["--ckpt_path", "last"]
        values = " ".join(f"{short_name(name)}={show_value(value)}" for name, value in trial.params.items())
        print(f"search: trial {trial.number} " + (f"(retry of {root}, resumed) " if resumed else "")
              + f"started: {values} in {run}", flush=True)
        began = time.monotonic()
        with heartbeat(self.storage, ident), open(run / "train.log", "a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
            code = self.process.wait()
            self.process = None
        return self.tell(trial, ident, code, run, time.monotonic() - began)

    def tell(self, trial: optuna.Trial, ident: int, code: int, run: Path, seconds: float) -> tuple[TrialState, str]:
        frozen = self.storage.get_trial(ident)
        values = frozen.intermediate_values
        metric = self.space.metric
        if code == 0 and "pruned_at_epoch" in frozen.user_attrs:
            self.study.tell(trial, state=TrialState.PRUNED)
            note = f"pruned after epoch {frozen.user_attrs['pruned_at_epoch']} ({metric} {values[max(values)]:.4f})"
            state = TrialState.PRUNED
        elif code == 0 and values:
            self.study.tell(trial, values[max(values)])
            note, state = f"{metric} {values[max(values)]:.4f} after {max(values)} epochs", TrialState.COMPLETE
        else:
            if code == 0:
                note = f"the fit reported no {metric} (no validation ran)"
            elif self.signals:
                name = "Ctrl-C" if self.signals[0] == signal.SIGINT else "SIGTERM"
                note = f"stopped by {name}; queued again (it resumes from its last.ckpt)"
            else:
                note = last_error_line(run / "train.log") or f"train.py fit exited with status {code}; see {run / 'train.log'}"
            self.storage.set_trial_user_attr(ident, "error", note)
            if self.signals:
                self.retry(self.study, self.storage.get_trial(ident))
            self.study.tell(trial, state=TrialState.FAIL)
            state = TrialState.FAIL
        word = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}[state]
        print(f"search: trial {trial.number} {word} in {seconds:.0f} s: {note}", flush=True)
        return state, note
