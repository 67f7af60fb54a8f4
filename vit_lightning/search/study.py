"""The study and its storage: opening them (bound to one space), each running trial's heartbeat, the lock of one
machine's workers, and the trials of dead workers (failed and queued again)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from vit_lightning.errors import UserError
from vit_lightning.outputs import require_writable_folder
from vit_lightning.search.space import Space, make_pruner


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


NO_HEARTBEAT = "no heartbeat (its worker or machine is gone)"  # a failed trial with no error of its own


def open_study(space: Space, name: str, storage_url: str, heartbeat_s: int,
               folder: Path) -> tuple[optuna.Study, optuna.storages.BaseStorage, Any]:
    """The study ``name`` in ``storage_url`` (created, or continued when it was started with the same space), the
    storage it lives in (the object opened here: Optuna's ``Study`` keeps its own private) and the callback that
    queues a failed trial again; a one-line :class:`UserError` when it holds another space."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The lock first: workers started at once on a new SQLite file would all create its tables ("table studies
    # already exists")
    with folder_lock(folder), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat and its retries
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3, inherit_intermediate_values=True)

        def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            # Optuna has failed the trial already, so it takes no "error" attribute: the table says NO_HEARTBEAT
            print(f"search: trial {trial.number} had no heartbeat for {2 * heartbeat_s} s: failed, queued again")
            retry(study, trial)

        storage = open_storage(storage_url, heartbeat_s, on_stale)
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
    return study, storage, retry


def trial_id(storage: optuna.storages.BaseStorage, study: str, number: int) -> int:
    """The storage's id of trial ``number`` of study ``study``: Optuna's public API names trials by number, its
    storage methods take ids."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study), number)


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


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_workers_trials(study: optuna.Study, storage: optuna.storages.BaseStorage, retry: Any) -> None:
    """Mark failed (and queue again with ``retry``) the running trials of workers of this machine that have
    ended."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, _, owner_host = str(trial.system_attrs.get("worker", "")).partition(" ")
        if owner_host != host or not pid.isdigit() or _is_running(int(pid)):
            continue
        ident = trial_id(storage, study.study_name, trial.number)
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            storage.set_trial_user_attr(ident, "error", f"its worker (process {pid}) ended")
            if storage.set_trial_state_values(ident, TrialState.FAIL):
                print(f"search: trial {trial.number} was left running by process {pid}, which ended: failed, "
                      "queued again", flush=True)
                retry(study, storage.get_trial(ident))
