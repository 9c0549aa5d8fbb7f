"""Command lines from dataclasses of arguments (CleanRL style): one ``--flag`` per field."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--field-name`` flag per field of the dataclass ``cls``, typed like its default; a list field takes one
    or more values of its first element's type."""
    for item in dataclasses.fields(cls):
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        flag = f"--{item.name.replace('_', '-')}"
        if isinstance(default, list):
            parser.add_argument(flag, nargs="+", type=type(default[0]), default=default,
                                help=f"default: {' '.join(map(str, default))}")
        else:
            parser.add_argument(flag, type=type(default), default=default, help=f"default: {default}")


def dataclass_from_args(cls: type[T], namespace: argparse.Namespace) -> T:
    """The dataclass ``cls`` built from the parsed flags of `add_dataclass_arguments` (other flags are ignored)."""
    values: dict[str, Any] = vars(namespace)
    return cls(**{item.name: values[item.name] for item in dataclasses.fields(cls)})
