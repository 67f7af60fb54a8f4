"""Interruptions and crashes lose nothing: real training processes are killed, signalled and resumed."""

import csv
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from support import REPO, TESTS, tiny_args
from vit_lightning.training.cli import main

pytestmark = pytest.mark.slow  # interrupted, killed and resumed runs: mostly train.py processes

STEPS_PER_EPOCH = 5  # 200 training images (240 - 40 for validation) in batches of 40
MAX_EPOCHS = 4


def run_args(data_root: Path, run_dir: Path, *extra: str) -> list[str]:
    return tiny_args(data_root, run_dir, "--trainer.max_epochs", str(MAX_EPOCHS),
                     "--checkpoint.every_n_train_steps", "2", *extra)


def start_fit(data_root: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    """A slowed-down training process (0.2 s per batch), so the test can signal it mid-epoch."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "train.py", "fit", *run_args(data_root, run_dir), *extra,
               "--trainer.callbacks+=hooks.Throttle"]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def checkpoint_step(path: Path) -> int:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["global_step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


def wait_for_checkpoint(process: subprocess.Popen, path: Path, min_step: int, timeout: float = 90) -> int:
    """Poll until ``path`` holds a checkpoint at ``min_step`` or later; its step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"training ended before a checkpoint at step {min_step}: {process.communicate()[1][-2000:]}")
        step = checkpoint_step(path)
        if step >= min_step:
            return step
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"no checkpoint at step {min_step} within {timeout} s")


def metrics(run_dir: Path) -> list[dict]:
    folders = sorted((run_dir / "logs").glob("version_*"))
    assert [folder.name for folder in folders] == ["version_0"]  # the resumed run continued the same log
    return list(csv.DictReader((folders[0] / "metrics.csv").open()))


def assert_complete_and_continuous(run_dir: Path, stopped_in_validation: int | None = None) -> None:
    """Training reached ``MAX_EPOCHS`` and the log holds every step and every epoch exactly once; an epoch
    ``stopped_in_validation`` has no training means (``train/loss``): Lightning keeps them in memory until the
    epoch's validation is over, and a resumed fit has no batches of that epoch left to average."""
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (MAX_EPOCHS - 1, MAX_EPOCHS * STEPS_PER_EPOCH)
    rows = metrics(run_dir)
    batch_steps = [int(row["step"]) for row in rows if row["train/batch_loss"]]
    assert batch_steps == list(range(MAX_EPOCHS * STEPS_PER_EPOCH))
    assert [int(row["epoch"]) for row in rows if row["val/acc"]] == list(range(MAX_EPOCHS))
    trained = [epoch for epoch in range(MAX_EPOCHS) if epoch != stopped_in_validation]
    assert [int(row["epoch"]) for row in rows if row["train/loss"]] == trained
    timed = [(int(row["epoch"]), float(row["train/elapsed_s"])) for row in rows if row["train/elapsed_s"]]
    elapsed = [seconds for _, seconds in timed]  # once per epoch, counting on after a resume
    assert [epoch for epoch, _ in timed] == list(range(MAX_EPOCHS)) and elapsed == sorted(elapsed) and elapsed[0] > 0


def test_kill_9_mid_epoch_then_resume_continues_run_and_log(data_root, tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    process = start_fit(data_root, run_dir)
    saved = wait_for_checkpoint(process, last, min_step=STEPS_PER_EPOCH + 2)  # a step checkpoint in epoch 1
    process.kill()
    process.communicate()
    assert saved % STEPS_PER_EPOCH != 0 and checkpoint_step(last) >= saved
    logged = [int(row["step"]) for row in metrics(run_dir) if row["train/batch_loss"]]
    assert logged == list(range(len(logged))) and len(logged) >= saved  # on disk up to the kill
    # A save cut short by the kill leaves a stale temporary file; resuming must ignore it.
    (last.parent / "last.ckpt.tmp").write_bytes(b"half a checkpoint")

    main(["fit", *run_args(data_root, run_dir), "--ckpt_path", "last"])
    assert_complete_and_continuous(run_dir)
    assert not (last.parent / "last.ckpt.tmp").exists()  # replaced by the next save


@pytest.mark.parametrize("saving", [(), ("--checkpoint.save_on_train_epoch_end", "false"), ("--trainer.max_steps", "20")],
                         ids=["at-epoch-end", "at-validation-end", "max-steps"])
def test_resuming_from_an_epoch_checkpoint_goes_on_with_the_next_epoch(data_root, tmp_path, capsys, saving):
    """An epoch's checkpoint (a best one, saved at the end of the epoch or of its validation) resumes with the next
    epoch: the finished epoch's end is not run again, every step is logged once, max_steps counts each epoch once."""
    run_dir = tmp_path / "run"
    args = tiny_args(data_root, run_dir, "--trainer.max_epochs", str(MAX_EPOCHS), "--checkpoint.save_top_k", "-1",
                     "--trainer.enable_progress_bar", "false", *saving)
    main(["fit", *args])
    capsys.readouterr()
    main(["fit", *args, "--ckpt_path", str(next((run_dir / "checkpoints").glob("epoch000-*.ckpt")))])
    summaries = [line.split(",")[0] for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch ")]
    assert summaries == ["Epoch 2/4", "Epoch 3/4", "Epoch 4/4"]
    assert_complete_and_continuous(run_dir)


def test_a_moved_run_resumes_its_log_and_follows_the_schedule_of_its_new_length(data_root, tmp_path):
    from vit_lightning.training.module import _one_cycle

    main(["fit", *tiny_args(data_root, tmp_path / "before", "--trainer.max_epochs", "2")])
    run_dir = tmp_path / "run"
    (tmp_path / "before").rename(run_dir)
    main(["fit", *tiny_args(data_root, run_dir, "--trainer.max_epochs", str(MAX_EPOCHS)), "--ckpt_path", "last"])
    assert_complete_and_continuous(run_dir)  # in logs/version_0, not a new version_1
    rates = {int(row["step"]): float(row["lr-MuonAdamW/pg1"]) for row in metrics(run_dir) if row["lr-MuonAdamW/pg1"]}
    total = MAX_EPOCHS * STEPS_PER_EPOCH  # the 2-epoch schedule had ended at 0 where the 4-epoch one resumes
    expected = [0.003 * _one_cycle(step, int(0.05 * total), total) for step in range(2 * STEPS_PER_EPOCH, total)]
    assert [rates[step] for step in range(2 * STEPS_PER_EPOCH, total)] == pytest.approx(expected)


@pytest.mark.parametrize("signum, status, cause", [(signal.SIGINT, 1, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_signal_saves_a_resumable_checkpoint_and_exits_cleanly(data_root, tmp_path, signum, status, cause):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    process = start_fit(data_root, run_dir)
    wait_for_checkpoint(process, last, min_step=STEPS_PER_EPOCH + 2)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == status and "Traceback" not in stderr
    message = [line for line in stderr.splitlines() if line.startswith(f"{cause}: stopped")]
    assert len(message) == 1 and f"saved {last}" in message[0] and "--ckpt_path last" in message[0]
    step = int(message[0].split("step ")[1].split(";")[0])
    assert checkpoint_step(last) == step  # saved at the interruption, not only at the last step checkpoint

    main(["fit", *run_args(data_root, run_dir), "--ckpt_path", "last"])
    assert_complete_and_continuous(run_dir)


def test_a_second_fit_in_a_busy_run_folder_is_refused_until_the_first_is_gone(data_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    process = start_fit(data_root, run_dir)
    wait_for_checkpoint(process, last, min_step=2)
    for extra in ([], ["--ckpt_path", "last"]):
        with pytest.raises(SystemExit):
            main(["fit", *run_args(data_root, run_dir), *extra])
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith(f"error: {run_dir} is in use: process {process.pid} is training there")
    assert process.poll() is None  # the first run goes on undisturbed
    process.kill()  # leaves a stale lock behind: its owner is gone
    process.communicate()
    assert (run_dir / "fit.lock").read_text().split()[0] == str(process.pid)

    main(["fit", *run_args(data_root, run_dir), "--ckpt_path", "last"])
    assert_complete_and_continuous(run_dir)
    assert not (run_dir / "fit.lock").exists()


def test_an_empty_lock_left_by_a_crash_is_taken_over(tmp_path):
    from vit_lightning.training.run_lock import RunLock

    (tmp_path / "fit.lock").write_text("")  # created, never written: a crash or a full disk in between
    lock = RunLock(tmp_path)
    lock.acquire()
    assert lock.held and (tmp_path / "fit.lock").read_text().split()[0] == str(os.getpid())
    lock.release()
    assert not (tmp_path / "fit.lock").exists()


def interrupt_while_starting(delay: float) -> tuple[int, str, str]:
    """SIGINT ``delay`` seconds into ``train.py fit --help``, while it still imports its libraries (3-4 s here)."""
    process = subprocess.Popen([sys.executable, "train.py", "fit", "--help"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, stdout, stderr


def test_ctrl_c_while_starting_is_one_line():
    assert interrupt_while_starting(0.3) == (130, "", "Ctrl-C: stopped while starting; nothing ran\n")


@pytest.mark.slow
def test_ctrl_c_anywhere_in_the_imports_is_one_line():
    """Some imports swallow KeyboardInterrupt (a bare ``except``) or turn it into another error (numpy's lazy
    submodules): every moment of the start must still give the one line."""
    outcomes = {delay / 10: interrupt_while_starting(delay / 10) for delay in range(1, 25, 2)}
    wrong = {delay: outcome for delay, outcome in outcomes.items()
             if outcome != (130, "", "Ctrl-C: stopped while starting; nothing ran\n")}
    assert not wrong


@pytest.mark.slow
def test_ctrl_c_between_save_points_resumes_with_every_step_logged_once(data_root, tmp_path):
    """Only epoch checkpoints: the interruption's own last.ckpt is what the run resumes from."""
    run_dir = tmp_path / "run"
    no_step_saves = ["--checkpoint.every_n_train_steps", "0"]
    process = start_fit(data_root, run_dir, *no_step_saves)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        logged = [int(row["step"]) for row in metrics(run_dir) if row.get("train/batch_loss")] if (
            run_dir / "logs" / "version_0" / "metrics.csv").is_file() else []
        if logged and logged[-1] >= STEPS_PER_EPOCH + 1:  # mid-epoch 1, away from the epoch-end saves
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    step = int(stderr.split("Ctrl-C: stopped at epoch 1, step ")[1].split(";")[0])
    assert step % STEPS_PER_EPOCH and checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == step

    main(["fit", *run_args(data_root, run_dir, *no_step_saves), "--ckpt_path", "last"])
    assert_complete_and_continuous(run_dir)


def interrupted_fit(capsys, *args: str) -> tuple[str, str]:
    """Run ``fit ARGS`` in this process, expect it to stop on Ctrl-C with exit status 1; its one line and stdout."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("Ctrl-C: ")]
    assert "Traceback" not in captured.err and len(lines) == 1, captured.err[-3000:]
    return lines[0], captured.out


def interrupt(at: str, batch: int, epoch: int | None = None) -> list[str]:
    """Arguments that add ``hooks.Interrupt``: Ctrl-C as batch ``batch`` of ``at`` starts."""
    return ["--trainer.callbacks+=hooks.Interrupt", f"--trainer.callbacks.at={at}", f"--trainer.callbacks.batch={batch}",
            *([f"--trainer.callbacks.epoch={epoch}"] if epoch is not None else [])]


def test_ctrl_c_during_validation_stops_after_the_running_validation_batch(data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    run_dir = tmp_path / "run"
    ten_batches = ["--data.eval_batch_size", "4"]  # 40 validation images
    line, out = interrupted_fit(capsys, *run_args(data_root, run_dir, *ten_batches), "--trainer.callbacks+=hooks.Trace",
                                *interrupt("validation", 2, epoch=1))
    last = run_dir / "checkpoints" / "last.ckpt"
    assert line == f"Ctrl-C: stopped at epoch 1, step 10; saved {last}; resume with the same command plus --ckpt_path last"
    assert [line for line in out.splitlines() if line.startswith("validation batch 1.")][-1] == "validation batch 1.2"

    # The resumed fit validates epoch 1 again, in full: its result is logged once and judged for the best checkpoint.
    main(["fit", *run_args(data_root, run_dir, *ten_batches), "--ckpt_path", "last"])
    assert_complete_and_continuous(run_dir, stopped_in_validation=1)


@pytest.mark.parametrize("flag, step", [("save_last", 8), ("save_on_exception", 7)])
def test_ctrl_c_with_saving_off_says_so_and_names_the_latest_checkpoint(data_root, tmp_path, capsys, monkeypatch,
                                                                         flag, step):
    """Without save_on_exception Ctrl-C is Lightning's KeyboardInterrupt: the run stops at once, mid-batch."""
    monkeypatch.syspath_prepend(str(TESTS))
    run_dir = tmp_path / "run"
    line, _ = interrupted_fit(capsys, *run_args(data_root, run_dir, f"--checkpoint.{flag}", "false"),
                              *interrupt("train", 2, epoch=1))
    reason = f"saving on interruption is off (--checkpoint.{flag} false)"
    assert line.startswith(f"Ctrl-C: stopped at epoch 1, step {step}; {reason}; the latest checkpoint is ")
    latest = Path(line.split("the latest checkpoint is ")[1])
    assert latest.parent == run_dir / "checkpoints" and checkpoint_step(latest) < step


@pytest.mark.parametrize("resumed", [False, True])
def test_ctrl_c_before_training_says_nothing_changed(data_root, tmp_path, capsys, monkeypatch, resumed):
    monkeypatch.syspath_prepend(str(TESTS))
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = []
    if resumed:
        main(["fit", *run_args(data_root, run_dir, "--trainer.max_epochs", "1")])
        before, resume = last.read_bytes(), ["--ckpt_path", "last"]
    line, _ = interrupted_fit(capsys, *run_args(data_root, run_dir), *resume, *interrupt("sanity_check", 0))
    if resumed:
        assert line == f"Ctrl-C: stopped before training resumed; {last} is unchanged; run the same command again"
        assert last.read_bytes() == before
    else:
        assert line == "Ctrl-C: stopped before training started; nothing to save"
        assert not last.exists()


def test_nan_loss_stops_with_one_line_and_keeps_the_good_checkpoints(data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    run_dir = tmp_path / "run"
    diverge_at = STEPS_PER_EPOCH + 3
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *run_args(data_root, run_dir),
              f'--trainer.callbacks+={{"class_path": "hooks.Diverge", "init_args": {{"step": {diverge_at}}}}}'])
    assert exit_info.value.code == 1
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in stderr and len(errors) == 1
    assert errors[0].startswith(f"error: the training loss is nan at step {diverge_at} (epoch 1)")
    checkpoints = sorted(path.name for path in (run_dir / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and checkpoints[0].startswith("epoch") and checkpoints[1] == "last.ckpt"
    for name in checkpoints:
        checkpoint = torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert checkpoint["global_step"] <= diverge_at
        assert all(torch.isfinite(tensor).all() for tensor in checkpoint["state_dict"].values()), name


@pytest.mark.parametrize("value, broken", [(".nan", "weight model."), ("1e30", "optimizer state exp_avg_sq")])
def test_non_finite_weights_after_a_finite_loss_are_never_saved(data_root, tmp_path, capsys, monkeypatch, value,
                                                                broken):
    monkeypatch.syspath_prepend(str(TESTS))
    run_dir = tmp_path / "run"
    poisoned = 2 * STEPS_PER_EPOCH - 1  # the last step of epoch 1: the epoch-end save would write its result
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *run_args(data_root, run_dir, "--checkpoint.every_n_train_steps", "0"),
              "--trainer.callbacks+=hooks.PoisonGradients", f"--trainer.callbacks.step={poisoned}",
              f"--trainer.callbacks.value={value}"])
    assert exit_info.value.code == 1
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in stderr and len(errors) == 1
    last = run_dir / "checkpoints" / "last.ckpt"
    assert errors[0].startswith(f"error: the {broken}") and "is not finite at step 10 (epoch 1)" in errors[0]
    assert f"the last good checkpoint is {last}" in errors[0]
    for path in (run_dir / "checkpoints").iterdir():
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        assert checkpoint["global_step"] == STEPS_PER_EPOCH, path.name  # epoch 0's, nothing later
        moments = [value for state in checkpoint["optimizer_states"][0]["state"].values() for value in state.values()]
        assert all(torch.isfinite(tensor).all() for tensor in [*checkpoint["state_dict"].values(), *moments])


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(data_root, tmp_path):
    run_dir = tmp_path / "run"
    main(["fit", *run_args(data_root, run_dir, "--trainer.max_epochs", "1")])
    last = run_dir / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    def file_size_limit():  # what `ulimit -f 20` does: writes beyond 20 KiB fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (20 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    result = subprocess.run([sys.executable, "train.py", "fit", *run_args(data_root, run_dir), "--ckpt_path", "last"],
                            cwd=REPO, capture_output=True, text=True, timeout=120, preexec_fn=file_size_limit)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.splitlines()[-1].startswith("error: File too large (")
    assert "--ckpt_path last" in result.stderr.splitlines()[-1]
    assert last.read_bytes() == before and not list(last.parent.glob("*.tmp"))


def test_sigterm_stops_predict_and_keeps_the_previous_predictions(data_root, tmp_path):
    from PIL import Image

    run_dir = tmp_path / "run"
    main(["fit", *run_args(data_root, run_dir, "--trainer.max_epochs", "1")])
    images = tmp_path / "images"
    images.mkdir()
    for value in range(40):
        Image.new("L", (28, 28), value * 6).save(images / f"img{value:02d}.png")
    output, marker = tmp_path / "predictions.csv", tmp_path / "predicting"
    output.write_text("file,class,confidence\nearlier.png,3,0.9\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(
        [sys.executable, "train.py", "predict", *run_args(data_root, run_dir), "--ckpt_path", "last",
         "--data.predict_path", str(images), "--data.eval_batch_size", "1", "--predictions.output", str(output),
         "--trainer.callbacks+=hooks.SlowPredict", f"--trainer.callbacks.marker={marker}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 143 and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.splitlines()[-1].startswith("SIGTERM: stopped predicting after ")
    assert output.read_text() == "file,class,confidence\nearlier.png,3,0.9\n"
    assert not list(tmp_path.glob("*.tmp"))
