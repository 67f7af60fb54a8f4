"""A trial's ``train.py fit``: its ``--name=value`` flags, the complete config it runs, the error line it wrote."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

from vit_lightning.errors import UserError
from vit_lightning.training.presets import CONFIGS

TRAIN_PY = CONFIGS.parent / "train.py"


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


def last_error_line(log: Path) -> str:
    """The last ``error: ...`` line train.py wrote (a diverged fit: its non-finite loss), without the prefix."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line[len("error: "):] for line in reversed(lines) if line.startswith("error: ")), "")
