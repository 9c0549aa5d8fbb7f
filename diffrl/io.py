"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one.

New files and folders get the permissions any program would give them (``0o666``/``0o777`` less the umask), not
the private ``0o600``/``0o700`` of `tempfile`. A write that fails because the disk is full raises `DiskFullError`,
which says how much space was needed.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from PIL import Image

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(OSError):
    """The file system is full (or over quota); the message names the folder, the space needed and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


def umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the only portable way to read it is to set it (and put it back at once)
    os.umask(mask)
    return mask


def default_mode(directory: bool) -> int:
    """The mode ``open``/``mkdir`` would give a new file or folder: ``0o666``/``0o777`` less the umask."""
    return (0o777 if directory else 0o666) & ~umask()


def format_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = 0
    while abs(count) >= 1024 and power < len(units) - 1:
        count, power = count / 1024, power + 1
    return f"{count:.0f} B" if power == 0 else f"{count:.1f} {units[power]}"


def _caused_by_full_disk(err: BaseException | None) -> bool:
    while err is not None:
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return True
        err = err.__cause__ or err.__context__
    return False


@contextmanager
def disk_space_for(folder: Path, needed: int, what: str, hint: str) -> Iterator[None]:
    """Write `what` (about `needed` bytes) into `folder` inside this block; a full disk raises `DiskFullError`.

    The free space is checked first, so that nothing is written when it cannot fit. A failure inside the block is a
    full disk when it carries ENOSPC/EDQUOT, or when less than `needed` is free once the writer has removed its
    partial output (libraries such as torch's zip writer report a full disk as a ``RuntimeError``). `hint` ends the
    message: what is intact and how to go on.
    """
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DiskFullError(f"Not enough disk space in '{folder}' for {what}: it needs about {format_bytes(needed)}, "
                            f"{format_bytes(free)} are free. {hint}")
    try:
        yield
    except DiskFullError:
        raise
    except Exception as err:
        free = shutil.disk_usage(folder).free
        if _caused_by_full_disk(err) or free < needed:
            raise DiskFullError(f"The disk holding '{folder}' is full: writing {what} failed ({type(err).__name__}: "
                                f"{err}); it needs about {format_bytes(needed)}, {format_bytes(free)} are free. {hint}"
                                ) from err
        raise


def fsync_path(path: Path) -> None:
    """Flush a file or directory to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Replace ``path`` by what ``write(handle)`` writes: a temporary file in the same folder, fsync, ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_mode(directory=False))
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_leftovers(path: Path) -> list[Path]:
    """The temporary files that interrupted `atomic_write` calls of `path` left beside it."""
    return sorted(Path(path).parent.glob(f".{Path(path).name}.*.tmp"))


def atomic_write_text(path: Path, text: str) -> None:
    """Atomically replace ``path`` by the UTF-8 ``text``."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_save_png(image: Image.Image, path: Path) -> None:
    """Atomically write ``image`` as a PNG file."""
    atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree (nothing if it is gone)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
