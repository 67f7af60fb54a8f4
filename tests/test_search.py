"""``python -m vit_lightning.search``: real Optuna, real SQLite, tiny trials (real ``train.py fit`` processes) on
tiny IDX data."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from PIL import Image

from support import REPO, read_metrics, tiny_args, write_dataset
from vit_lightning.search.__main__ import main, run
from vit_lightning.search.fit import param_flags
from vit_lightning.search.results import show_table
from vit_lightning.search.space import load_space, sweep_config
from vit_lightning.search.study import open_study, trial_id
from vit_lightning.search.worker import Worker

FAST = ["--trainer.max_epochs", "1", "--trainer.enable_model_summary", "false", "--data.translate", "0.0"]


def write_space(path: Path, parameters: dict, **sections) -> Path:
    path.write_text(yaml.safe_dump({"parameters": parameters, "fixed": [], **sections}))
    return path


LR = {"model.optimizer.init_args.lr": {"type": "float", "low": 1.0e-9, "high": 0.05, "log": True}}


def search_error(capsys, *args: str) -> str:
    """Run the search command in this process; expect one ``error: ...`` line, exit status 1, nothing else on
    stderr; return that line."""
    with pytest.raises(SystemExit) as exit_info:
        run(list(args))
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err.strip()


def load(folder: Path, name: str, journal: Path | None = None) -> optuna.Study:
    """The study in the search folder's SQLite file, or in ``journal`` (Optuna's journal file)."""
    storage = JournalStorage(JournalFileBackend(str(journal))) if journal else f"sqlite:///{folder / 'study.db'}"
    return optuna.load_study(study_name=name, storage=storage)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """800 training images: two epochs of a tiny model tell a good learning rate from a useless one."""
    return write_dataset(tmp_path_factory.mktemp("search") / "data", n_train=800, gz=True)


def test_the_wandb_sweep_file_is_generated_from_the_search_space():
    space = load_space(REPO / "configs" / "search.yaml")
    assert yaml.safe_load((REPO / "configs" / "sweep.yaml").read_text()) == sweep_config(space), (
        "configs/sweep.yaml is stale: python -m vit_lightning.search --space configs/search.yaml "
        "--sweep configs/sweep.yaml")
    sweep = sweep_config(space)
    assert sweep["metric"] == {"name": space.metric, "goal": space.direction}
    for name, distribution in space.parameters.items():  # the same bounds and choices on both sides
        spec = sweep["parameters"][name]
        assert spec.get("values", [spec.get("min"), spec.get("max")]) == list(
            getattr(distribution, "choices", [getattr(distribution, "low", None), getattr(distribution, "high", None)]))
        assert ("log" in spec.get("distribution", "")) == bool(getattr(distribution, "log", False))


def test_parameter_values_are_flags_that_yaml_reads_back_as_numbers():
    flags = param_flags({"a.lr": 1e-05, "a.wd": 0.05, "a.depth": 3, "a.tok": "conv", "a.flag": True})
    assert flags == ["--a.lr=1.0e-05", "--a.wd=0.05", "--a.depth=3", "--a.tok=conv", "--a.flag=true"]
    assert yaml.safe_load(flags[0].split("=", 1)[1]) == 1e-05


@pytest.mark.parametrize("parameters, expected", [
    ({"model.nonsense": {"type": "int", "low": 1, "high": 2}}, "unrecognized arguments: --model.nonsense=1"),
    ({"model.depth": {"type": "int", "low": 4, "high": 2}}, "parameter model.depth has low 4 > high 2"),
    ({"model.dim": {"type": "categorical", "choices": []}}, "parameter model.dim is categorical with no choices"),
    ({"model.dim": {"type": "normal", "low": 1, "high": 2}}, "parameter model.dim needs a type"),
])
def test_a_bad_space_is_one_line(tmp_path, capsys, parameters, expected):
    space = write_space(tmp_path / "space.yaml", parameters)
    assert expected in search_error(capsys, "--space", str(space), "--dir", str(tmp_path / "search"))


def test_an_unreachable_storage_or_an_unwritable_folder_is_one_line(tmp_path, capsys):
    space = str(write_space(tmp_path / "space.yaml", LR))
    error = search_error(capsys, "--space", space, "--dir", str(tmp_path / "s"),
                         "--storage", f"sqlite:///{tmp_path}/no/such/folder/study.db")
    assert "cannot be opened (unable to open database file)" in error
    assert "--dir: /proc is not writable" in search_error(capsys, "--space", space, "--dir", "/proc/vit-search")


def test_a_study_that_exists_with_another_space_is_one_line(tmp_path, capsys):
    folder = str(tmp_path / "search")
    first = write_space(tmp_path / "space.yaml", {"model.dim": {"type": "categorical", "choices": [8, 16]}})
    assert main(["--space", str(first), "--dir", folder, "--trials", "0"]) == 0  # creates the study, runs nothing
    write_space(first, {"model.dim": {"type": "categorical", "choices": [8, 32]}})
    error = search_error(capsys, "--space", str(first), "--dir", folder, "--trials", "0")
    assert "study 'space' in sqlite:///" in error and "another space (parameter model.dim differs)" in error


def test_workers_started_at_once_open_a_new_sqlite_file_one_at_a_time(tmp_path, monkeypatch):
    """Two workers opening a new SQLite file at once both created its tables: one stopped with 'cannot be opened
    (table studies already exists)'. The storage is opened under the search folder's lock."""
    import vit_lightning.search.study as study_module

    held = []

    def open_storage(*args, **kwargs):
        with open(tmp_path / ".search.lock", "a") as other:  # another worker's attempt to take the lock now
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
        return real(*args, **kwargs)

    real = study_module.open_storage
    monkeypatch.setattr(study_module, "open_storage", open_storage)
    open_study(load_space(write_space(tmp_path / "space.yaml", LR)), "space", f"sqlite:///{tmp_path / 's.db'}", 60,
               tmp_path)
    assert held == [True]


def test_a_trial_without_heartbeat_is_failed_and_its_retry_is_claimed_next(tmp_path, capsys):
    """A trial whose worker (on another machine) stopped beating: failed by Optuna's heartbeat, queued again with
    the same values, claimed by the next worker, and the table says why it failed."""
    space = load_space(write_space(tmp_path / "space.yaml", LR))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study, storage, retry = open_study(space, "space", url, 1, tmp_path)
    stale = study.ask(space.parameters)
    ident = trial_id(storage, "space", stale.number)
    storage.set_trial_system_attr(ident, "worker", "1 another-machine")  # not this machine's: no pid to check
    storage.record_heartbeat(ident)
    time.sleep(3.1)  # Optuna's grace period, twice the interval, on SQLite's clock of whole seconds
    worker = Worker(study, storage, space, tmp_path, [], url, 1, None, retry, False)
    claimed = worker.claim()
    assert study.get_trials()[stale.number].state == TrialState.FAIL
    assert claimed.number != stale.number and claimed.params == stale.params
    assert storage.get_trial(worker.trial_id(claimed)).system_attrs["failed_trial"] == stale.number
    show_table(study, space)
    assert "no heartbeat (its worker or machine is gone)" in capsys.readouterr().out


@pytest.fixture(scope="module")
def pruned(data, tmp_path_factory) -> tuple[Path, str]:
    """A search of three tiny fits: two useful learning rates first, then one that leaves the weights as they are,
    clearly worse at epoch 1 (pruned); its folder and what it printed."""
    tmp = tmp_path_factory.mktemp("pruned")
    folder = tmp / "search"
    space = write_space(tmp / "space.yaml", LR, budget={"trials": 3},
                        pruner={"type": "median", "startup_trials": 2, "warmup_epochs": 0},
                        first=[{"model.optimizer.init_args.lr": lr} for lr in (0.01, 0.02, 1.0e-9)])
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["--space", str(space), "--dir", str(folder), *tiny_args(data, tmp / "unused"), *FAST]) == 0
    return folder, out.getvalue()


@pytest.mark.slow  # the three fits of the pruned search
def test_a_clearly_worse_trial_is_pruned_and_the_table_says_so(pruned):
    folder, out = pruned
    trials = load(folder, "space").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED], out
    assert trials[2].user_attrs["pruned_at_epoch"] == 1 and "pruned after epoch 1" in out
    assert "study space: 2 complete, 1 pruned" in out  # the table


@pytest.mark.slow  # the pruned search, and a fit of best.yaml
def test_best_yaml_is_the_best_trial_and_trains(pruned):
    folder, _ = pruned
    trials = load(folder, "space").get_trials()
    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert best["model"]["optimizer"]["init_args"]["lr"] == trials[max((0, 1), key=lambda i: trials[i].value)].params[
        "model.optimizer.init_args.lr"]
    result = subprocess.run([sys.executable, "train.py", "fit", "--config", str(folder / "best.yaml")], cwd=REPO,
                            capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (folder / "best" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow  # the pruned search
def test_the_plots_are_written(pruned):
    folder, _ = pruned
    for name in ("history", "importances", "parallel_coordinate", "slice", "intermediate_values"):
        with Image.open(folder / "plots" / f"{name}.png") as picture:
            assert picture.width > 200 and picture.height > 200 and len(set(picture.convert("L").getdata())) > 10


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.mark.slow  # the pruned search, and optuna-dashboard's server
def test_optuna_dashboard_serves_the_study(pruned):
    """``optuna-dashboard sqlite:///DIR/study.db`` (README) on a free port: the study's trials over its JSON API."""
    folder, _ = pruned
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    server = subprocess.Popen([str(dashboard), f"sqlite:///{folder / 'study.db'}", "--host", "127.0.0.1", "--port",
                               str(port), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, studies = time.monotonic() + 120, None
        while studies is None:
            assert server.poll() is None and time.monotonic() < deadline, server.stdout and server.stdout.read()
            with contextlib.suppress(OSError):
                studies = get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
            time.sleep(0.5)
        [summary] = studies
        assert summary["study_name"] == "space" and summary["directions"] == ["maximize"]
        study = get_json(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}")
        expected = load(folder, "space").get_trials()
        assert [(t["number"], t["state"], t.get("values")) for t in study["trials"]] == [
            (t.number, t.state.name.capitalize(), t.values) for t in expected]
        assert [t["params"][0]["param_external_value"] for t in study["trials"]] == [
            str(t.params["model.optimizer.init_args.lr"]) for t in expected]
        assert [t["number"] for t in study["best_trials"]] == [load(folder, "space").best_trial.number]
    finally:
        server.terminate()
        server.wait(timeout=30)


def start_worker(space: Path, folder: Path, data: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "vit_lightning.search", "--space", str(space), "--dir", str(folder),
               *tiny_args(data, folder / "unused"), "--trainer.enable_model_summary", "false", *extra]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdin=subprocess.DEVNULL)


@pytest.mark.slow  # two workers, three tiny fits
def test_two_workers_started_at_once_share_one_study_and_never_run_a_trial_twice(data, tmp_path):
    folder = tmp_path / "search"
    space = write_space(tmp_path / "space.yaml", {**LR, "model.label_smoothing": {"type": "categorical",
                                                                                  "choices": [0.0, 0.1]}},
                        budget={"trials": 3}, pruner={"type": "none"})
    workers = [start_worker(space, folder, data, "--trainer.max_epochs", "1") for _ in range(2)]
    outputs = [worker.communicate(timeout=1800)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    trials = load(folder, "space").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, outputs
    owners = [t.system_attrs["worker"].split()[0] for t in trials]
    assert set(owners) == {str(worker.pid) for worker in workers}  # both worked
    for t in trials:  # each trial was run by one worker, once: one fit in its run folder
        assert sum(f"trial {t.number} started" in output for output in outputs) == 1
        assert (folder / f"trial_{t.number:04d}" / "train.log").read_text().count("`Trainer.fit` stopped") == 1
    assert len({tuple(t.params.items()) for t in trials}) == 3


@pytest.mark.slow  # a worker killed mid-trial, then the same command: three tiny fits
def test_kill_9_of_a_worker_then_the_same_command_finishes_and_marks_the_killed_trial_failed(data, tmp_path):
    """The study in Optuna's journal file (``--storage PATH``, as on a shared disk): the same command continues it."""
    folder, journal = tmp_path / "search", tmp_path / "shared" / "search.log"
    journal.parent.mkdir()
    space = write_space(tmp_path / "space.yaml", LR, budget={"trials": 2}, pruner={"type": "none"},
                        first=[{"model.optimizer.init_args.lr": 0.01}])
    command = ("--storage", str(journal), "--trainer.max_epochs", "3")
    worker = start_worker(space, folder, data, *command)
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:  # until trial 0 has reported and saved its first epoch
        time.sleep(0.5)
        if (folder / "trial_0000" / "checkpoints" / "last.ckpt").is_file():
            trials = load(folder, "space", journal).get_trials()
            if trials and trials[0].intermediate_values:
                break
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    again = start_worker(space, folder, data, *command)
    output = again.communicate(timeout=1800)[0]
    assert again.returncode == 0, output
    assert not (folder / "study.db").exists()  # the journal holds the study
    trials = load(folder, "space", journal).get_trials()
    states = [t.state for t in trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE], output
    assert f"its worker (process {worker.pid}) ended" in trials[0].user_attrs["error"]
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == 0)
    assert retry.state == TrialState.COMPLETE and retry.params == trials[0].params
    assert f"trial {retry.number} (retry of 0, resumed)" in output  # from trial_0000's last.ckpt
    assert sorted(retry.intermediate_values) == [1, 2, 3]
    new = next(t for t in trials[1:] if t is not retry)  # the re-run went on with a trial of its own
    assert new.params != retry.params and "failed_trial" not in new.system_attrs
    assert (folder / f"trial_{new.number:04d}" / "train.log").read_text().count("`Trainer.fit` stopped") == 1


@pytest.mark.slow  # two DDP fits of two processes each
def test_ddp_trials_report_and_prune_on_rank_zero_and_stop_every_rank(data, tmp_path):
    """``--trainer.devices 2 --trainer.strategy ddp`` (gloo): a complete trial reports the reduced val/acc of every
    epoch, and a pruned trial stops on both processes (a rank that went on would hang the fit)."""
    folder = tmp_path / "search"
    space = write_space(tmp_path / "space.yaml", LR, budget={"trials": 2},
                        pruner={"type": "median", "startup_trials": 1, "warmup_epochs": 0},
                        first=[{"model.optimizer.init_args.lr": lr} for lr in (0.01, 1.0e-9)])
    worker = start_worker(space, folder, data, "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu",
                          "--trainer.devices", "2", "--trainer.strategy", "ddp")
    output = worker.communicate(timeout=1800)[0]
    assert worker.returncode == 0, output
    complete, pruned = load(folder, "space").get_trials()
    assert (complete.state, pruned.state) == (TrialState.COMPLETE, TrialState.PRUNED), output
    logged = [float(row["val/acc"]) for row in read_metrics(folder / "trial_0000", "val/acc")]
    assert [complete.intermediate_values[step] for step in (1, 2)] == pytest.approx(logged) and len(logged) == 2
    assert complete.value == complete.intermediate_values[2]
    assert pruned.user_attrs["pruned_at_epoch"] == 1 and list(pruned.intermediate_values) == [1]
    log = (folder / "trial_0001" / "train.log").read_text()
    assert "distributed_backend=gloo" in log and log.count("search: pruned after epoch 1") == 1  # rank 0 only
    assert "Epoch 1/2" in log and "Epoch 2/2" not in log
    for t in (complete, pruned):  # each trial ran once
        assert output.count(f"trial {t.number} started") == 1
