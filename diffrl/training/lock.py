"""One writer per run folder: an exclusive lock that names its holder.

The lock is ``fcntl.flock`` on ``FOLDER/.lock`` (POSIX). The kernel drops it when its holder exits, however it exits
(SIGKILL included), so exclusion never goes stale. The file also records the holder (PID, host, start time): a
second run is refused naming it, and the record a killed run leaves behind is reported when the next run takes the
folder over. The file itself is never deleted (deleting a lock file lets two processes lock two different files).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

from diffrl.io import default_mode

LOCK_FILE = ".lock"

logger = logging.getLogger(__name__)


class RunDirError(RuntimeError):
    """A run folder cannot be used as asked; the message names it and says what to pass instead."""


class RunLockedError(RunDirError):
    """Another run holds the folder; the message names its PID and host."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) a run folder."""

    pid: int
    host: str
    since: str

    @classmethod
    def current(cls) -> LockHolder:
        return cls(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%d %H:%M:%S %Z"))

    def __str__(self) -> str:
        return f"PID {self.pid} on host {self.host} (since {self.since})"


class RunLock:
    """Hold `folder` for this process until `release` (or until the process ends).

    Raises:
        RunLockedError: another process holds it, or the record of another host's run is still there (whether locks
            reach across machines depends on the file system, so that run may still be alive).
        RunDirError: the file system does not support locks.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / LOCK_FILE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, default_mode(directory=False))
        try:
            previous = self._acquire(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(asdict(LockHolder.current())).encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)  # unlocks
            raise
        self._fd = fd
        self._close = weakref.finalize(self, os.close, fd)
        if previous is not None:
            logger.warning("Taking over '%s' from %s: that run ended without releasing it (it was killed or crashed).",
                           self.path.parent, previous)

    def _acquire(self, fd: int) -> LockHolder | None:
        """Lock `fd`; return the record a holder that died left behind (None if it was released cleanly)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            who = f"another run, {holder}" if holder else "another run (it is just starting)"
            raise RunLockedError(
                f"Output folder '{self.path.parent}' is in use by {who}. Wait for it to finish or stop it, "
                "or choose another --output-dir."
            ) from None
        except OSError as err:
            raise RunDirError(
                f"Cannot lock output folder '{self.path.parent}' ({err}): its file system does not support file locks. "
                "Choose an --output-dir on a local disk."
            ) from err
        holder = _read_holder(fd)
        if holder is not None and holder.host != socket.gethostname():
            fcntl.flock(fd, fcntl.LOCK_UN)
            raise RunLockedError(
                f"Output folder '{self.path.parent}' was taken by {holder}, which did not release it and may still be "
                f"running there. If it is not, delete '{self.path}' and start again."
            )
        return holder

    def release(self) -> None:
        """Clear the holder record and unlock (idempotent)."""
        if self._close.alive:
            os.ftruncate(self._fd, 0)
            self._close()


def _read_holder(fd: int) -> LockHolder | None:
    """The record in the lock file, or None when it is empty (released cleanly) or unreadable."""
    try:
        return LockHolder(**json.loads(os.pread(fd, 4096, 0).decode()))
    except (ValueError, TypeError):
        return None
