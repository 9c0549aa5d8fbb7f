"""The ``diffrl`` command line: one subcommand per entry of `COMMANDS`.

Each entry is an ``add_parser(subparsers)`` function that adds its subcommand, sets ``func`` (the handler,
called with the parsed ``argparse.Namespace``, returning an exit code) as a parser default, and returns the parser.
A user error raised by a handler is printed as one line (the traceback with ``-v``, see `diffrl.errors`). Modules
defining a command keep heavy imports (torch, diffusers) inside their handler so that ``diffrl --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from diffrl import __version__
from diffrl.errors import run_reporting_user_errors
from diffrl.evaluation.cli import add_parser as add_evaluate_parser
from diffrl.sampling_cli import add_parser as add_sample_parser
from diffrl.training.cli import add_parser as add_personalize_parser
from diffrl.training.pg_cli import add_parser as add_train_parser

# Append ``add_parser`` functions here (e.g. from diffrl.training.cli for "personalize", diffrl.sampling_cli for "sample").
COMMANDS: list[Callable[[argparse._SubParsersAction], argparse.ArgumentParser]] = [
    add_personalize_parser,
    add_train_parser,
    add_sample_parser,
    add_evaluate_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffrl",
        description="diffrl: reinforcement learning for diffusion models. Run `diffrl COMMAND --help` for details.",
    )
    parser.add_argument("--version", action="version", version=f"diffrl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages; tracebacks of errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser in COMMANDS:
        command = add_parser(subparsers)  # -v also after the command (SUPPRESS: it does not undo `diffrl -v COMMAND`)
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the chosen command and return its exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run_reporting_user_errors(f"diffrl {args.command}", args.verbose, lambda: int(args.func(args) or 0))


if __name__ == "__main__":
    sys.exit(main())
