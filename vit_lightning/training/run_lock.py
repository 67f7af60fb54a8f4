"""One ``fit`` per run folder: a lock file naming the process that trains there."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from vit_lightning.errors import UserError
from vit_lightning.outputs import RunFolder


class RunLock:
    """``FOLDER/fit.lock`` holds ``PID HOST`` of the ``fit`` that writes ``FOLDER``'s checkpoints and logs.

    :meth:`acquire` creates it atomically, or raises a one-line :class:`UserError` while its owner is alive.
    A lock whose owner is gone (killed with ``kill -9``, a crashed machine) is stale and taken over, as is an empty
    one (a crash between creating and writing it); one from another host cannot be checked, so the message says
    how to remove it.
    """

    def __init__(self, folder: Path):
        self.path = RunFolder(folder).lock
        self.owner = f"{os.getpid()} {socket.gethostname()}"
        self.held = False
        self._created: list[Path] = []  # folders made for the lock, removed again if the run wrote nothing

    def acquire(self) -> None:
        folder = self.path.parent
        while not folder.exists():
            self._created.append(folder)
            folder = folder.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # retried after removing a stale lock (another process may win that race)
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._is_stale():
                    self.path.unlink(missing_ok=True)
                continue
            try:
                with os.fdopen(descriptor, "w") as file:
                    file.write(self.owner + "\n")
            except OSError:  # a full disk: leave no empty lock behind
                self.path.unlink(missing_ok=True)
                raise
            self.held = True
            return
        pid, _, host = self._read().partition(" ")
        where = f"process {pid or '?'}" + ("" if host in ("", socket.gethostname()) else f" on {host}")
        raise UserError(f"{self.path.parent} is in use: {where} is training there ({self.path}); wait for it to "
                        f"finish or choose another --trainer.default_root_dir (delete {self.path} only if that run "
                        "is gone)")

    def release(self) -> None:
        if self.held and self._read() == self.owner:
            self.path.unlink(missing_ok=True)
            for folder in self._created:
                try:
                    folder.rmdir()
                except OSError:  # the run wrote something there
                    break
        self.held = False

    def _read(self) -> str:
        try:
            return self.path.read_text().strip()
        except FileNotFoundError:
            return ""

    def _is_stale(self) -> bool:
        """The owner ran on this host and has ended (another host's processes cannot be checked), or the lock is
        still empty a second after it was found: its creator crashed before writing it (a live one writes at once)."""
        deadline = time.monotonic() + 1.0
        while not (owner := self._read()) and self.path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not owner:
            return True
        pid, _, host = owner.partition(" ")
        return host == socket.gethostname() and pid.isdigit() and not _is_running(int(pid))


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True
