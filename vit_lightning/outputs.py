"""Where a run writes: folders checked before anything runs, and one line when a write fails anyway (a full disk, a
location that is not writable)."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from vit_lightning.errors import UserError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


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
