"""How entry points report errors the user can fix: one line on stderr, the traceback only when verbose.

A user error is a bad setting, path, file or model, a run folder that cannot be used, or a full disk (any OSError
with ENOSPC/EDQUOT, `diffrl.io.DiskFullError` included): its message already says what is wrong and what to do, so
a traceback would only bury it. Any other exception is a bug and propagates with its traceback.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

EXIT_USER_ERROR = 2


def is_user_error(err: BaseException) -> bool:
    """Whether `err`'s message is meant for the user: one of `user_error_types`, or a full disk."""
    from diffrl.io import DISK_FULL_ERRNOS

    return isinstance(err, user_error_types()) or (isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS)


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception classes whose messages are meant for the user (imported here, when an error is reported, so
    that ``diffrl --help`` does not load torch)."""
    from diffrl.data.images import ImageLoadError
    from diffrl.evaluation.dreambench import DreamBenchError
    from diffrl.models.loading import ModelLoadError
    from diffrl.training.checkpoint import CheckpointError
    from diffrl.training.config import ConfigError
    from diffrl.training.lock import RunDirError
    from diffrl.training.updates import NonFiniteLossError

    return (ConfigError, ImageLoadError, ModelLoadError, CheckpointError, RunDirError, DreamBenchError,
            NonFiniteLossError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def report_user_error(prog: str, err: BaseException, verbose: bool) -> int:
    """Print `err` as ``PROG: error: MESSAGE`` on one line (after its traceback when `verbose`); the exit code."""
    if verbose:
        traceback.print_exception(err)
    message = " ".join(str(err).split())  # one line, even for a wrapped library message
    print(f"{prog}: error: {message}" + ("" if verbose else " (run with -v for the traceback)"), file=sys.stderr)
    return EXIT_USER_ERROR


def run_reporting_user_errors(prog: str, verbose: bool, run: Callable[[], int]) -> int:
    """``run()``, with a user error reported by `report_user_error` instead of raised."""
    try:
        return run()
    except Exception as err:
        if not is_user_error(err):
            raise
        return report_user_error(prog, err, verbose)
