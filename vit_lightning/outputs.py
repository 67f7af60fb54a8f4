"""Where a run writes: the run folder's layout, folders checked before anything runs, files replaced atomically, one
line when a write fails anyway (a full disk, a location that is not writable), and a terminal whose reader may go
away (``| head``). No Lightning: training writes the run folder, export and the demo read it."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, TextIO

from vit_lightning.errors import UserError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
LAST_CHECKPOINT = "last.ckpt"  # in any checkpoint folder (--checkpoint.dirpath), refreshed at every save point


@dataclass(frozen=True)
class RunFolder:
    """Everything a run writes is under its root, ``--trainer.default_root_dir``:

    ``checkpoints/`` (best by ``val/acc`` and ``last.ckpt``; ``--checkpoint.dirpath`` may move it), ``logs/``
    (``version_N/`` of each fit, ``validate/`` and ``test/``: a ``metrics.csv`` and the ``config.yaml``) and, while a
    fit runs, ``fit.lock``.
    """

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST_CHECKPOINT

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def lock(self) -> Path:
        return self.root / "fit.lock"

    @classmethod
    def of_checkpoint(cls, path: Path) -> RunFolder:
        """The run folder a checkpoint in its ``checkpoints/`` belongs to."""
        return cls(path.parent.parent)


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield ``NAME.tmp`` beside ``path`` to write; when the block ends it is renamed onto ``path`` (readers see the
    old file or the new one, never half of one), when the block raises it is removed and ``path`` is untouched."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def storage_problem(error: OSError) -> str:
    """One line for a write that failed because the disk is full or a location is not writable; files written
    before (checkpoints are replaced atomically) are intact."""
    where = f" ({error.filename})" if error.filename else ""
    if error.errno in NO_SPACE:
        return (f"{error.strerror}{where}: the disk is full or a file-size limit was reached; free some space and "
                "run again (resume a fit with --ckpt_path last: the checkpoints already written are intact)")
    return (f"{error.strerror}{where}; make the location writable or choose another --trainer.default_root_dir "
            "(the checkpoints already written are intact)")


def require_writable_folder(folder: Path, option: str) -> None:
    """Raise a one-line :class:`UserError` unless ``folder`` exists or can be created, and can be written."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option}: cannot create {folder} because {existing} is a file; choose another location")
    try:  # os.access is not enough: root passes it for read-only mounts and /proc
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError
        tempfile.TemporaryFile(dir=existing).close()
    except OSError:
        raise UserError(f"{option}: {existing} is not writable; choose a location you can write to") from None


class ReaderMayLeave:
    """Standard output whose reader may close it (``train.py predict | head -3``): from then on what is printed goes
    to the null device, and the command goes on, instead of stopping at its next line with ``BrokenPipeError``
    (which would lose a fit or a file not yet written)."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_left()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_left()

    def _reader_left(self) -> None:
        """Point the file descriptor at the null device: the stream's buffered text, and any later output (also
        from C code or at exit), is written there without error."""
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def reader_may_leave() -> Iterator[None]:
    """Run a command with ``sys.stdout`` as :class:`ReaderMayLeave`."""
    stdout = sys.stdout
    sys.stdout = ReaderMayLeave(stdout)
    try:
        yield
    finally:
        sys.stdout = stdout
