"""Command lines from dataclasses of arguments (CleanRL style): one ``--flag`` per field."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type,
                            choices: Mapping[str, Sequence[Any]] | None = None) -> None:
    """One ``--field-name`` flag per field of the dataclass ``cls``, typed like its default: a field without a
    default is a required string, a bool a switch (``--flag`` sets True), a list one or more values of its first
    element's type. ``choices``: allowed values per field name."""
    choices = choices or {}
    for item in dataclasses.fields(cls):
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        flag = f"--{item.name.replace('_', '-')}"
        allowed = choices.get(item.name)
        if default is dataclasses.MISSING:
            parser.add_argument(flag, required=True, choices=allowed, help="required")
        elif isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=f"default: {default}")
        elif isinstance(default, list):
            parser.add_argument(flag, nargs="+", type=type(default[0]), default=default, choices=allowed,
                                help=f"default: {' '.join(map(str, default))}")
        else:
            parser.add_argument(flag, type=type(default), default=default, choices=allowed, help=f"default: {default}")


def dataclass_from_args(cls: type[T], namespace: argparse.Namespace) -> T:
    """The dataclass ``cls`` built from the parsed flags of `add_dataclass_arguments` (other flags are ignored)."""
    values: dict[str, Any] = vars(namespace)
    return cls(**{item.name: values[item.name] for item in dataclasses.fields(cls)})
