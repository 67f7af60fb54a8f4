"""``python -m vit_lightning.search``: a hyper-parameter search with Optuna, each trial a real ``train.py fit``.

How it works (one design, stated once):

- **The space** is a YAML file (``configs/search.yaml``): ``train.py fit`` options with distributions, the objective,
  the budget, sampler and pruner settings, the flags every trial gets (``fixed``) and trials to run first. It is
  the one source: ``configs/sweep.yaml`` for ``wandb sweep`` is generated from it (``--sweep PATH``,
  :func:`sweep_config`), and a test checks that the committed file is what the space generates.
- **A worker** is this command. It opens the study in its storage (default: SQLite ``DIR/study.db``; ``--storage
  URL``: PostgreSQL or MySQL through SQLAlchemy, or a path: Optuna's journal file), then claims trials one at a time
  (``study.ask``; a lock file in ``DIR`` makes the count-then-ask of the workers of one machine atomic) until the
  study holds ``--trials`` finished or running trials. Several workers started with the same command, on one
  machine or many, share the study: the storage hands each trial to one worker; TPE samples trial k with seed
  ``seed + k``, so one worker is reproducible and two workers never draw the same values at once.
- **A trial** is a subprocess ``python train.py fit FIXED FLAGS --PARAM=VALUE ...`` in its own run folder
  ``DIR/trial_NNNN`` (checkpoints, logs, config, ``train.log``), in its own session: DDP trials (``--trainer.devices
  N``) work as any fit does. The trial's config adds :class:`StudyReport`, which opens the study from the storage
  inside the fit, reports the objective after every validation and, when the pruner says so (rank 0 decides,
  every rank stops), ends the fit after that validation. The worker then tells Optuna: complete (the last reported
  value), pruned, or failed with the fit's ``error:`` line (a diverged trial: its non-finite loss).
- **Nothing is lost.** Re-running the command continues the study. A trial whose worker died (``kill -9``, a crashed
  machine) is marked failed: at once by the next worker on the same machine (the dead worker's pid), else by
  Optuna's heartbeat (RDB storage, ``--heartbeat``); Optuna's ``RetryHeartbeatStaleTrialCallback`` queues it again with the
  same values, and the retry resumes its run folder's ``last.ckpt``. Ctrl-C (or SIGTERM) is passed to the running
  fit, which saves ``last.ckpt`` after its batch; the trial is marked failed and queued again the same way, and the
  worker stops (a second Ctrl-C: at once). A trial process whose worker is gone exits by itself.
- **Results**: a table of the trials, ``DIR/best.yaml`` (``python train.py fit --config DIR/best.yaml`` trains the
  best trial's settings as is), and plots in ``DIR/plots/`` (and to W&B when the trials log to W&B).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution,
                                  distribution_to_json)
from optuna.trial import TrialState

from vit_lightning.errors import UserError
from vit_lightning.outputs import require_writable_folder
from vit_lightning.training.presets import CONFIGS

TRAIN_PY = CONFIGS.parent / "train.py"
SPACE_KEYS = ("objective", "budget", "sampler", "pruner", "fixed", "first", "parameters")
PRUNERS = ("median", "halving", "none")
SWEEP_HEADER = """\
# W&B hyper-parameter sweep over `train.py fit`, GENERATED from configs/search.yaml (edit that file, then run
#   python -m vit_lightning.search --space configs/search.yaml --sweep configs/sweep.yaml
# ); the same space is searched offline by `python -m vit_lightning.search` (README, Hyper-parameter search).
#   wandb sweep configs/sweep.yaml      # prints the sweep ID
#   wandb agent ENTITY/PROJECT/ID       # runs train.py fit with each suggested setting as --key=value overrides
# Every run of the sweep writes under runs/sweep (its W&B run holds its config, metrics and pictures).
"""
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
GIVE_UP_AFTER = 5  # failed trials in a row after which a worker stops (a broken setting fails every trial)


@dataclass
class Space:
    """A parsed space file (see ``configs/search.yaml``)."""

    path: Path
    parameters: dict[str, BaseDistribution]
    metric: str = "val/acc"
    direction: str = "maximize"
    trials: int | None = 12
    timeout: float | None = None
    seed: int = 0
    startup_trials: int = 10
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median"})
    fixed: list[str] = field(default_factory=list)
    first: list[dict[str, Any]] = field(default_factory=list)

    def fingerprint(self) -> dict[str, Any]:
        """What a study is bound to: its parameters' distributions and its objective."""
        return {"metric": self.metric, "direction": self.direction,
                "parameters": {name: distribution_to_json(d) for name, d in self.parameters.items()}}


def load_space(path: Path) -> Space:
    """Read a space file, or raise a one-line :class:`UserError` naming what is wrong in it."""
    where = f"--space {path}"
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{where} does not exist; give a space file such as configs/search.yaml") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise UserError(f"{where} is not readable YAML ({' '.join(str(error).split())[:200]})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("parameters"), dict) or not raw["parameters"]:
        raise UserError(f"{where} has no `parameters:` mapping of train.py fit options; see configs/search.yaml")
    unknown = sorted(set(raw) - set(SPACE_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; the keys are {', '.join(SPACE_KEYS)}")
    parameters = {}
    for name, spec in raw["parameters"].items():
        if str(name).startswith("-"):
            raise UserError(f"{where}: parameter {name} is written without dashes, e.g. model.dim")
        parameters[str(name)] = make_distribution(str(name), spec, where)
    objective, budget = _section(raw, "objective", where), _section(raw, "budget", where)
    sampler, pruner = _section(raw, "sampler", where), _section(raw, "pruner", where) or {"type": "median"}
    direction = objective.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        raise UserError(f"{where}: objective.direction is {direction!r}; use maximize or minimize")
    if pruner.get("type", "median") not in PRUNERS:
        raise UserError(f"{where}: pruner.type is {pruner.get('type')!r}; use one of {', '.join(PRUNERS)}")
    fixed = raw.get("fixed") or []
    if not isinstance(fixed, list):
        raise UserError(f"{where}: fixed is a list of train.py fit flags, e.g. [--config, configs/quick.yaml]")
    space = Space(path, parameters, metric=str(objective.get("metric", "val/acc")), direction=direction,
                  trials=budget.get("trials", 12), timeout=budget.get("timeout"), seed=int(sampler.get("seed", 0)),
                  startup_trials=int(sampler.get("startup_trials", 10)), pruner=pruner,
                  fixed=[str(flag) for flag in fixed], first=raw.get("first") or [])
    for point in space.first:
        require_point_in_space(point, space, where)
    return space


def _section(raw: dict, key: str, where: str) -> dict:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: {key} is a mapping (see configs/search.yaml), not {value!r}")
    return value


def make_distribution(name: str, spec: Any, where: str) -> BaseDistribution:
    """The Optuna distribution of one parameter's spec, or a one-line :class:`UserError`."""
    if not isinstance(spec, dict) or spec.get("type") not in ("float", "int", "categorical"):
        raise UserError(f"{where}: parameter {name} needs a type: float, int or categorical, e.g. "
                        "{type: float, low: 0.001, high: 0.1, log: true}")
    kind = spec["type"]
    extra = sorted(set(spec) - ({"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log"}))
    if extra:
        raise UserError(f"{where}: parameter {name} ({kind}) has an unknown key {extra[0]!r}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: parameter {name} is categorical with no choices; give choices: [a, b, ...]")
        if not all(choice is None or isinstance(choice, (bool, int, float, str)) for choice in choices):
            raise UserError(f"{where}: parameter {name}: choices are numbers, strings, booleans or null")
        return CategoricalDistribution(choices)
    low, high, log = _number(spec.get("low"), kind), _number(spec.get("high"), kind), spec.get("log", False)
    if low is None or high is None:
        raise UserError(f"{where}: parameter {name} ({kind}) needs {kind} values low and high")
    if low > high:
        raise UserError(f"{where}: parameter {name} has low {low} > high {high}; swap them")
    if not isinstance(log, bool):
        raise UserError(f"{where}: parameter {name}: log is true or false, not {log!r}")
    if log and low <= 0:
        raise UserError(f"{where}: parameter {name} is log-scaled, so low must be > 0, not {low}")
    return IntDistribution(low, high, log=log) if kind == "int" else FloatDistribution(low, high, log=log)


def _number(value: Any, kind: str) -> int | float | None:
    if isinstance(value, bool):
        return None
    if kind == "int":
        return value if isinstance(value, int) else None
    try:  # YAML reads 3e-4 (no dot) as a string
        return float(value)
    except (TypeError, ValueError):
        return None


def contains(distribution: BaseDistribution, value: Any) -> bool:
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    if isinstance(distribution, IntDistribution) and not (isinstance(value, int) and not isinstance(value, bool)):
        return False
    return isinstance(value, (int, float)) and distribution.low <= value <= distribution.high


def require_point_in_space(point: Any, space: Space, where: str) -> None:
    if not isinstance(point, dict) or set(point) != set(space.parameters):
        missing = sorted(set(space.parameters) - set(point or {})) if isinstance(point, dict) else []
        raise UserError(f"{where}: each trial under first: gives every parameter once"
                        + (f" (missing {missing[0]})" if missing else f" ({point!r} does not)"))
    for name, value in point.items():
        if not contains(space.parameters[name], value):
            raise UserError(f"{where}: first: {name} {value!r} is outside the parameter's distribution")


def sweep_config(space: Space) -> dict[str, Any]:
    """The W&B sweep of the same space (``wandb sweep`` format), as configs/sweep.yaml holds it."""
    parameters = {}
    for name, d in space.parameters.items():
        if isinstance(d, CategoricalDistribution):
            parameters[name] = {"values": list(d.choices)}
        elif isinstance(d, IntDistribution):
            parameters[name] = ({"distribution": "q_log_uniform_values", "min": d.low, "max": d.high, "q": 1}
                                if d.log else {"distribution": "int_uniform", "min": d.low, "max": d.high})
        else:
            parameters[name] = {"distribution": "log_uniform_values" if d.log else "uniform",
                                "min": d.low, "max": d.high}
    sweep: dict[str, Any] = {"program": "train.py", "method": "bayes",
                             "metric": {"name": space.metric, "goal": space.direction}}
    if space.pruner.get("type", "median") != "none":
        sweep["early_terminate"] = {"type": "hyperband", "min_iter": int(space.pruner.get("warmup_epochs", 0)) + 1}
    sweep["parameters"] = parameters
    sweep["command"] = ["${env}", "${interpreter}", "${program}", "fit", *space.fixed, "--config", "configs/wandb.yaml",
                        "--trainer.default_root_dir", "runs/sweep", "${args}"]
    return sweep


def make_pruner(spec: dict[str, Any]) -> optuna.pruners.BasePruner:
    """The pruner of a space's ``pruner:`` section; steps are validations (1 = the first)."""
    kind, warmup = spec.get("type", "median"), int(spec.get("warmup_epochs", 0))
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(spec.get("startup_trials", 3)),
                                           n_warmup_steps=warmup + 1)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=warmup + 1)
    return optuna.pruners.NopPruner()


def open_storage(url: str, heartbeat: int | None = None, on_stale: Any = None) -> optuna.storages.BaseStorage:
    """The study storage at ``url`` (an SQLAlchemy URL, or a journal file's path), with Optuna's heartbeat when
    ``heartbeat`` seconds are given (RDB only); a one-line :class:`UserError` when it cannot be opened."""
    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        require_writable_folder(Path(url).absolute().parent, "--storage")
        try:
            return optuna.storages.JournalStorage(JournalFileBackend(url))
        except OSError as error:
            raise UserError(f"--storage {url}: {error.strerror or error}; give a writable journal file") from None
    import sqlalchemy.engine

    try:
        shown = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - any malformed URL
        raise UserError(f"--storage {url} is not a database URL such as sqlite:///study.db or "
                        "postgresql://user:password@host/db") from None
    options: dict[str, Any] = {}
    if url.startswith("sqlite"):
        options["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # workers and trials write at once
    if heartbeat:
        options.update(heartbeat_interval=heartbeat, heartbeat_stale_trial_callback=on_stale)
    try:
        return optuna.storages.RDBStorage(url, **options)
    except ImportError as error:
        raise UserError(f"--storage {shown} needs the database driver {error.name}; pip install it "
                        "(PostgreSQL: psycopg2-binary, MySQL: PyMySQL)") from None
    except Exception as error:  # noqa: BLE001 - SQLAlchemy's errors: server down, bad credentials, no such file
        reason = " ".join(str(getattr(error, "orig", None) or error).split())[:200]
        raise UserError(f"--storage {shown} cannot be opened ({reason}); check the URL and that the database "
                        "is reachable") from None


def param_flags(params: dict[str, Any]) -> list[str]:
    """``--name=value`` per parameter, values as YAML reads them back (``1.0e-05``, not the string ``1e-05``)."""
    flags = []
    for name, value in params.items():
        if isinstance(value, float):
            text = repr(value)
            text = text.replace("e", ".0e") if "e" in text and "." not in text else text
        else:
            text = value if isinstance(value, str) else json.dumps(value)
        flags.append(f"--{name}={text}")
    return flags


def print_config(flags: list[str]) -> str:
    """``train.py fit FLAGS --print_config`` in this process: the complete config a fit with ``flags`` runs, or a
    one-line :class:`UserError` with the CLI's own refusal (an unknown option, a value of the wrong type)."""
    from vit_lightning.training.cli import main as train

    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            train(["fit", *flags, "--print_config"])
        except SystemExit as stop:
            code = stop.code
    if code not in (0, None):
        lines = err.getvalue().strip().splitlines() or [f"exit status {code}"]
        line = next((line for line in lines if line.lower().startswith("error:")), lines[-1])
        raise UserError(f"train.py fit refuses a trial's options: {line.split(':', 1)[-1].strip()} "
                        "(the space's parameters and fixed flags, and the flags given)")
    return out.getvalue()


class StudyReport(Callback):
    """Report ``metric`` to trial ``trial`` of study ``study`` in ``storage`` after every validation (step: the
    epochs done) and stop the fit when the pruner (``pruner``: a space's ``pruner:`` section) prunes it.

    Added to each trial's fit by the search (``DIR/trial_NNNN/search_trial.yaml``). Rank 0 reports and decides;
    every rank stops. The process exits when its parent (the worker, or DDP's rank 0) is gone.
    """

    def __init__(self, storage: str, study: str, trial: int, metric: str = "val/acc", pruner: dict | None = None):
        self.storage, self.study, self.trial, self.metric, self.pruner = storage, study, trial, metric, pruner or {}
        self._study: optuna.Study | None = None
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
                self._study = optuna.load_study(study_name=self.study, storage=open_storage(self.storage),
                                                pruner=make_pruner(self.pruner))
            storage = self._study._storage
            storage.set_trial_intermediate_value(self.trial, step, float(value))
            prune = self._study.pruner.prune(self._study, storage.get_trial(self.trial))
            if prune:
                storage.set_trial_user_attr(self.trial, "pruned_at_epoch", step)
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


@contextlib.contextmanager
def heartbeat(storage: optuna.storages.BaseStorage, trial_id: int):
    """Record the trial's heartbeat every interval while it runs (what ``study.optimize`` does; RDB storage)."""
    interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a busy database: the next beat will do
                storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="search-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def folder_lock(folder: Path):
    """An exclusive lock among the workers of this machine that share ``folder``."""
    with open(folder / ".search.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Worker:
    """Claims, runs and tells trials until the study holds ``trials`` finished or running ones (see the module
    docstring)."""

    def __init__(self, study: optuna.Study, space: Space, folder: Path, flags: list[str], storage_url: str,
                 trials: int, timeout: float | None, retry: Any, wandb_group: bool):
        self.study, self.space, self.folder, self.flags = study, space, folder, flags
        self.storage_url, self.trials, self.timeout, self.retry = storage_url, trials, timeout, retry
        self.wandb_group = wandb_group
        self.owner = f"{os.getpid()} {socket.gethostname()}"
        self.process: subprocess.Popen | None = None
        self.signals: list[int] = []

    @property
    def storage(self) -> optuna.storages.BaseStorage:
        return self.study._storage

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
            self.fail_dead_workers_trials()  # first: it names the dead process
            optuna.storages.fail_stale_trials(self.study)
            trials = self.study.get_trials(deepcopy=False)
            if sum(t.state in (*FINISHED, TrialState.RUNNING) for t in trials) >= self.trials:
                return None
            self.study.sampler = optuna.samplers.TPESampler(seed=self.space.seed + len(trials),
                                                            n_startup_trials=self.space.startup_trials)
            trial = self.study.ask(self.space.parameters)
            self.storage.set_trial_system_attr(trial._trial_id, "worker", self.owner)
            return trial

    def fail_dead_workers_trials(self) -> None:
        """Mark failed (and queue again) the running trials of workers of this machine that have ended."""
        host = socket.gethostname()
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid, _, owner_host = str(trial.system_attrs.get("worker", "")).partition(" ")
            if owner_host != host or not pid.isdigit() or _is_running(int(pid)):
                continue
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                self.storage.set_trial_user_attr(trial._trial_id, "error", f"its worker (process {pid}) ended")
                if self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                    print(f"search: trial {trial.number} was left running by process {pid}, which ended: failed, "
                          "queued again", flush=True)
                    self.retry(self.study, self.storage.get_trial(trial._trial_id))

    def run_trial(self, trial: optuna.Trial) -> tuple[TrialState, str]:
        attrs = self.storage.get_trial(trial._trial_id).system_attrs
        root = attrs.get("failed_trial", trial.number)  # a retry continues the first run's folder
        run = self.folder / f"trial_{root:04d}"
        run.mkdir(parents=True, exist_ok=True)
        reporter = run / "search_trial.yaml"
        reporter.write_text(yaml.safe_dump({"trainer": {"callbacks+": [{
            "class_path": "vit_lightning.search.StudyReport",  # not __module__: __main__ under python -m
            "init_args": {"storage": self.storage_url, "study": self.study.study_name, "trial": trial._trial_id,
                          "metric": self.space.metric, "pruner": self.space.pruner}}]}}, sort_keys=False))
        command = [sys.executable, str(TRAIN_PY), "fit", "--trainer.enable_progress_bar=false", *self.flags,
                   *param_flags(trial.params), "--trainer.default_root_dir", str(run), "--config", str(reporter)]
        if self.wandb_group:
            command += [f"--trainer.logger.init_args.group={self.study.study_name}",
                        f"--trainer.logger.init_args.name={self.study.study_name}-trial-{trial.number}"]
        resumed = (run / "checkpoints" / "last.ckpt").is_file()
        if resumed:
            command += ["--ckpt_path", "last"]
        values = " ".join(f"{short_name(name)}={_show(value)}" for name, value in trial.params.items())
        print(f"search: trial {trial.number} " + (f"(retry of {root}, resumed) " if resumed else "")
              + f"started: {values} in {run}", flush=True)
        began = time.monotonic()
        with heartbeat(self.storage, trial._trial_id), open(run / "train.log", "a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
            code = self.process.wait()
            self.process = None
        return self.tell(trial, code, run, time.monotonic() - began)

    def tell(self, trial: optuna.Trial, code: int, run: Path, seconds: float) -> tuple[TrialState, str]:
        frozen = self.storage.get_trial(trial._trial_id)
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
            self.storage.set_trial_user_attr(trial._trial_id, "error", note)
            if self.signals:
                self.retry(self.study, self.storage.get_trial(trial._trial_id))
            self.study.tell(trial, state=TrialState.FAIL)
            state = TrialState.FAIL
        word = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}[state]
        print(f"search: trial {trial.number} {word} in {seconds:.0f} s: {note}", flush=True)
        return state, note


def last_error_line(log: Path) -> str:
    """The last ``error: ...`` line train.py wrote (a diverged fit: its non-finite loss), without the prefix."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line[len("error: "):] for line in reversed(lines) if line.startswith("error: ")), "")


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clip(text: str, length: int = 160) -> str:
    return text if len(text) <= length else text[:length - 3] + "..."


def short_name(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _show(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def show_table(study: optuna.Study, space: Space) -> None:
    """Print the study's trials as a table (rich)."""
    from rich.console import Console
    from rich.table import Table

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial.number if complete else None
    counts = ", ".join(f"{sum(t.state == s for t in trials)} {s.name.lower()}" for s in TrialState
                       if any(t.state == s for t in trials))
    table = Table(title=f"study {study.study_name}: {counts}" + (f"; best: trial {best}" if complete else ""))
    for column in ("#", "state", space.metric, *map(short_name, space.parameters), "epochs", "time", "note"):
        table.add_column(column, justify="left" if column in ("state", "note") else "right")
    for t in trials:
        values = t.intermediate_values
        value = t.value if t.value is not None else (values[max(values)] if values else None)
        note = {TrialState.PRUNED: f"pruned after epoch {t.user_attrs.get('pruned_at_epoch', '?')}",
                TrialState.FAIL: _clip(str(t.user_attrs.get("error", "")))}.get(t.state, "")
        if "failed_trial" in t.system_attrs and t.state != TrialState.FAIL:
            note = f"retry of {t.system_attrs['failed_trial']}" + (f"; {note}" if note else "")
        seconds = t.duration.total_seconds() if t.duration else None
        table.add_row(f"{t.number}" + (" *" if t.number == best else ""), t.state.name.lower(),
                      "" if value is None else f"{value:.4f}", *(_show(t.params.get(n, "")) for n in space.parameters),
                      str(max(values)) if values else "", "" if seconds is None else f"{seconds:.0f} s", note)
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def write_best(study: optuna.Study, space: Space, folder: Path, flags: list[str]) -> Path:
    """``DIR/best.yaml``: the complete config of the best trial, training into ``DIR/best``."""
    best = study.best_trial
    text = print_config([*flags, *param_flags(best.params), "--trainer.default_root_dir", str(folder / "best")])
    header = (f"# The best trial ({best.number}, {space.metric} {best.value:.4f}) of study {study.study_name}, "
              f"written by python -m vit_lightning.search.\n# Train it: python train.py fit --config "
              f"{folder / 'best.yaml'}\n")
    path = folder / "best.yaml"
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(header + text)
    os.replace(temporary, path)
    return path


PLOTS = {"history": "plot_optimization_history", "importances": "plot_param_importances",
         "parallel_coordinate": "plot_parallel_coordinate", "slice": "plot_slice",
         "intermediate_values": "plot_intermediate_values"}


def write_plots(study: optuna.Study, folder: Path) -> dict[str, Path]:
    """Optuna's matplotlib plots of the study as ``DIR/plots/NAME.png``; those that cannot be drawn yet (e.g.
    importances with fewer than two complete trials) are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from optuna.visualization import matplotlib as plots

    (folder / "plots").mkdir(exist_ok=True)
    written = {}
    for name, function in PLOTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's matplotlib plots are marked experimental
            try:
                axes = getattr(plots, function)(study)
            except Exception:  # noqa: BLE001 - not enough trials for this plot yet
                plt.close("all")
                continue
        figure = (axes.flat[0] if isinstance(axes, np.ndarray) else axes).figure
        path = folder / "plots" / f"{name}.png"
        temporary = path.with_suffix(f".{os.getpid()}.tmp.png")
        figure.savefig(temporary, dpi=110, bbox_inches="tight")
        plt.close(figure)
        os.replace(temporary, path)
        written[name] = path
    return written


def send_plots_to_wandb(study: optuna.Study, space: Space, folder: Path, plots: dict[str, Path],
                        logger: dict) -> None:
    """The plots and the best trial to one W&B run of the study's group (job type ``search``)."""
    import wandb
    from jsonargparse import Namespace

    from vit_lightning.training.tracking import prepare_wandb

    config = Namespace(class_path=logger["class_path"], init_args=Namespace(**(logger.get("init_args") or {})))
    prepare_wandb(config, str(folder), None)
    init_args = config.init_args
    run = wandb.init(project=init_args.project, entity=init_args.get("entity"), dir=str(init_args.save_dir),
                     group=study.study_name, name=f"{study.study_name}-search", job_type="search",
                     mode="offline" if init_args.get("offline") else None,
                     config={"best_trial": study.best_trial.number, **study.best_trial.params})
    run.log({f"search/{name}": wandb.Image(str(path)) for name, path in plots.items()})
    run.summary[f"best/{space.metric}"] = study.best_value
    run.finish()


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m vit_lightning.search", allow_abbrev=False, description=__doc__.split("\n")[0],
        epilog="Every other flag is a train.py fit flag, fixed for every trial (after the space's `fixed`), e.g. "
               "--config configs/quick.yaml --data.root DIR --trainer.devices 2. Several workers: start the same "
               "command again (another terminal, another machine with --storage on a shared database).")
    parser.add_argument("--space", default=str(CONFIGS / "search.yaml"), help="the space file (configs/search.yaml)")
    parser.add_argument("--dir", default="runs/search", help="the search folder: the SQLite study, one run folder "
                        "per trial, best.yaml, plots/ (default runs/search)")
    parser.add_argument("--trials", type=int, help="finished (complete or pruned) trials the study should hold in "
                        "TOTAL, over all its workers (default: the space's budget.trials); 0: only print the "
                        "table and write best.yaml and the plots")
    parser.add_argument("--timeout", type=float, help="seconds after which this worker starts no new trial "
                        "(default: the space's budget.timeout)")
    parser.add_argument("--storage", help="the study's storage: an SQLAlchemy URL (postgresql://..., mysql+pymysql://"
                        "...) shared by workers on many machines, or a journal file's path on a shared disk "
                        "(default: sqlite:///DIR/study.db)")
    parser.add_argument("--study", help="the study's name (default: the space file's name, e.g. search)")
    parser.add_argument("--heartbeat", type=int, default=60, help="seconds between a running trial's heartbeats "
                        "(RDB storage); a trial silent for twice that is failed and queued again (default 60)")
    parser.add_argument("--sweep", metavar="PATH", help="write the space as a W&B sweep file (configs/sweep.yaml) "
                        "and exit")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run a worker (see the module docstring); the exit status: 0, 1 after Ctrl-C or when it gave up, 143
    after SIGTERM."""
    args, extra = parse_args(argv)
    space = load_space(Path(args.space))
    if args.sweep:
        Path(args.sweep).write_text(SWEEP_HEADER + yaml.safe_dump(sweep_config(space), sort_keys=False))
        print(f"wrote {args.sweep}")
        return 0
    trials = space.trials if args.trials is None else args.trials
    if not isinstance(trials, int) or trials < 0:
        raise UserError(f"the number of trials is {trials!r}; give --trials N (N >= 0) or the space's budget.trials")
    searched = sorted({flag[2:].split("=", 1)[0] for flag in extra if flag.startswith("--")} & set(space.parameters))
    if searched:
        raise UserError(f"--{searched[0]} is searched ({args.space}); drop it from the command line or the space")
    folder = Path(args.dir)
    require_writable_folder(folder, "--dir")
    folder.mkdir(parents=True, exist_ok=True)
    flags = [*space.fixed, *extra]
    lowest = {name: d.choices[0] if isinstance(d, CategoricalDistribution) else d.low
              for name, d in space.parameters.items()}
    config = yaml.safe_load(print_config([*flags, *param_flags(lowest)]))  # every option exists, every value fits
    logger = (config.get("trainer") or {}).get("logger")
    wandb = isinstance(logger, dict) and str(logger.get("class_path", "")).endswith("WandbLogger")
    storage_url = args.storage or f"sqlite:///{(folder / 'study.db').absolute()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat and its retries
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3, inherit_intermediate_values=True)

        def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            study._storage.set_trial_user_attr(trial._trial_id, "error", f"no heartbeat for {2 * args.heartbeat} s "
                                               "(its worker or machine is gone)")
            print(f"search: trial {trial.number} had no heartbeat for {2 * args.heartbeat} s: failed, queued again")
            retry(study, trial)

        storage = open_storage(storage_url, args.heartbeat, on_stale)
    name = args.study or Path(args.space).stem
    with folder_lock(folder):
        study = optuna.create_study(storage=storage, study_name=name, direction=space.direction,
                                    load_if_exists=True, pruner=make_pruner(space.pruner))
        bound = study.user_attrs.get("space")
        if bound is None:
            study.set_user_attr("space", space.fingerprint())
            for point in space.first:
                study.enqueue_trial(point)
        elif bound != space.fingerprint():
            theirs, mine = bound.get("parameters", {}), space.fingerprint()["parameters"]
            differs = sorted(n for n in set(theirs) | set(mine) if theirs.get(n) != mine.get(n))
            what = f"parameter {differs[0]}" if differs else "objective"
            raise UserError(f"study {name!r} in {storage_url} was started with another space ({what} differs); "
                            "search it with its own space, or start a new one with --study NAME or --dir")
    worker = Worker(study, space, folder, flags, storage_url, trials, args.timeout or space.timeout, retry, wandb)
    gave_up = worker.run() if trials else None
    show_table(study, space)
    if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        best = write_best(study, space, folder, flags)
        plots = write_plots(study, folder)
        print(f"best: trial {study.best_trial.number}, {space.metric} {study.best_value:.4f}: python train.py fit "
              f"--config {best}\nplots: {', '.join(str(p) for p in plots.values())}")
        print(f"dashboard: optuna-dashboard {storage_url}")
        if wandb:
            send_plots_to_wandb(study, space, folder, plots, logger)
    if gave_up:
        raise UserError(f"this worker stopped: {gave_up}")
    if worker.signals:
        return 1 if worker.signals[0] == signal.SIGINT else 128 + signal.SIGTERM
    return 0


def run(argv: list[str] | None = None) -> None:
    """The command: :func:`main`, a :class:`UserError` as one ``error: ...`` line and exit status 1."""
    try:
        sys.exit(main(argv))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run()
