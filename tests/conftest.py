"""Fixtures: a tiny dataset folder and trained-and-exported tiny models (the helpers are in support.py); Ctrl-C as in
a terminal."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from support import tiny_args, write_dataset


if os.environ.get("PYTEST_XDIST_WORKER"):  # one of pytest -n 2's processes: a core each, for the processes it starts too
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def ctrl_c_as_in_a_terminal():
    """SIGINT raises KeyboardInterrupt in this process and keeps its default in the processes tests start, also
    when pytest itself was started with SIGINT ignored (a background job of a script, as some CI runners do)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A folder holding a tiny dataset's four IDX files directly (the Debian layout), gzip-compressed."""
    return write_dataset(tmp_path / "data", gz=True)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``exported(*model_flags)``: a tiny model trained for two epochs with those ``--model`` flags and exported with
    ``python -m vit_lightning.export`` (once per session and flags). Holds ``data`` (the tiny dataset), ``ckpt``,
    ``folder`` (the export) and ``output`` (what the export printed)."""
    import contextlib
    import io
    from types import SimpleNamespace

    from vit_lightning.training.cli import main as train
    from vit_lightning.export import main as export

    cache = {}

    def make(*flags: str) -> SimpleNamespace:
        if flags not in cache:
            root = tmp_path_factory.mktemp("exported")
            data = write_dataset(root / "data", gz=True)
            train(["fit", *tiny_args(data, root / "run", *flags)])
            ckpt = root / "run" / "checkpoints" / "last.ckpt"
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                export(["--ckpt_path", str(ckpt), "--output", str(root / "export")])
            cache[flags] = SimpleNamespace(data=data, ckpt=ckpt, folder=root / "export", output=printed.getvalue())
        return cache[flags]

    return make
