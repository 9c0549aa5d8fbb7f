"""Command lines from dataclasses of arguments (CleanRL style): one ``--flag`` per field, typed and documented by it."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def field_docs(cls: type) -> dict[str, str]:
    """Per-field help from the ``Attributes:`` section of ``cls``'s docstring: ``name: text`` entries (``a, b: text``
    documents several fields), continuation lines indented deeper than the entry."""
    doc = inspect.getdoc(cls) or ""
    if "Attributes:" not in doc:
        return {}
    docs: dict[str, str] = {}
    names: list[str] = []
    entry_indent, pending = None, ""
    for line in doc.split("Attributes:", 1)[1].splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if names and entry_indent is not None and indent > entry_indent and not pending:
            for name in names:  # a continuation line of the entry
                docs[name] += " " + line.strip()
            continue
        text = pending + line.strip()
        if re.fullmatch(r"[a-z_][a-z0-9_]*(,\s*[a-z_][a-z0-9_]*)*,", text):  # a list of names that goes on
            pending, entry_indent = text + " ", indent if entry_indent is None else entry_indent
            continue
        pending = ""
        match = re.fullmatch(r"([a-z_][a-z0-9_]*(?:,\s*[a-z_][a-z0-9_]*)*):\s(.*)", text)
        if match:
            entry_indent = indent if entry_indent is None else min(entry_indent, indent)
            names = [name.strip() for name in match.group(1).split(",")]
            for name in names:
                docs[name] = match.group(2).strip()
    return docs


def _value_type(hint: Any) -> tuple[Any, bool]:
    """The type of a field's values and whether it may be None (``X | None``)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return hint, False


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse type: ``none`` (any case) -> None, else ``parse(text)``."""

    def convert(text: str) -> Any:
        return None if text.lower() == "none" else parse(text)

    convert.__name__ = getattr(parse, "__name__", "value")  # argparse names the type in its error messages
    return convert


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    choices: Mapping[str, Sequence[Any]] | None = None,
    parsers: Mapping[str, Callable[[str], Any]] | None = None,
    required: bool = True,
    exclude: Collection[str] = (),
) -> None:
    """One ``--field-name`` flag per field of the dataclass ``cls``, typed by its annotation and helped by its docstring
    (`field_docs`) and default: a bool is a ``--flag / --no-flag`` switch, ``X | None`` also takes ``none``, a list or
    tuple one or more values of its element type, a field without a default is required (optional with
    ``required=False``, then None when not given). ``choices``: allowed values per field; ``parsers``: the argparse
    type of fields whose values need one (e.g. a dict written as ``name=value,...``); ``exclude``: fields without a
    flag (the caller sets them)."""
    choices, parsers = choices or {}, parsers or {}
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for item in (item for item in dataclasses.fields(cls) if item.name not in exclude):
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        flag = f"--{item.name.replace('_', '-')}"
        value_type, nullable = _value_type(hints[item.name])
        origin = typing.get_origin(value_type)
        text = docs.get(item.name, "")
        kwargs: dict[str, Any] = {"choices": choices.get(item.name)}
        if default is dataclasses.MISSING:
            kwargs.update(required=required, default=None, help=f"{text} (required)" if required else text)
        else:
            shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
            kwargs.update(default=default, help=f"{text} (default: {str(shown).replace('%', '%%')})")
        if value_type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=kwargs["default"], help=kwargs["help"])
            continue
        if origin in (list, tuple):
            kwargs.update(nargs="*" if origin is tuple else "+", type=typing.get_args(value_type)[0])
        elif callable(value_type) and origin is None:
            kwargs["type"] = value_type
        if item.name in parsers:
            kwargs["type"] = parsers[item.name]
        if nullable and "type" in kwargs:
            kwargs["type"] = _optional(kwargs["type"])
        parser.add_argument(flag, **kwargs)


def dataclass_from_args(cls: type[T], namespace: argparse.Namespace, **overrides: Any) -> T:
    """The dataclass ``cls`` built from the parsed flags of `add_dataclass_arguments` (other flags are ignored, a
    field without a flag takes its default); ``overrides`` win over the flags. A list for a tuple field becomes a
    tuple."""
    values: dict[str, Any] = vars(namespace)
    hints = typing.get_type_hints(cls)
    fields = {}
    for item in (item for item in dataclasses.fields(cls) if item.name in values):
        value = values[item.name]
        if isinstance(value, list) and typing.get_origin(_value_type(hints[item.name])[0]) is tuple:
            value = tuple(value)
        fields[item.name] = value
    return cls(**{**fields, **overrides})
