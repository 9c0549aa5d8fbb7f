"""Dataclass -> command line (`diffrl.arguments`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from diffrl.arguments import add_dataclass_arguments, dataclass_from_args


@dataclass
class Example:
    steps: int = 3
    rate: float = 0.5
    out: Path = Path("runs/x")
    names: list[str] = field(default_factory=lambda: ["a", "b"])
    colour: list[float] = field(default_factory=lambda: [0.1, 0.2])


def parse(*argv: str) -> Example:
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Example)
    parser.add_argument("-v", action="store_true")  # an extra flag is not a field
    return dataclass_from_args(Example, parser.parse_args(list(argv)))


def test_each_field_is_a_typed_flag_with_its_default():
    assert parse() == Example()
    parsed = parse("--steps", "7", "--rate", "1e-3", "--out", "o", "--names", "x", "--colour", "1", "0.5", "0", "-v")
    assert parsed == Example(steps=7, rate=1e-3, out=Path("o"), names=["x"], colour=[1.0, 0.5, 0.0])
    assert isinstance(parsed.colour[0], float) and isinstance(parsed.out, Path)
    with pytest.raises(SystemExit):
        parse("--steps", "many")


@dataclass
class WithRequired:
    source: str
    mode: str = "fast"
    resume: bool = False


def test_required_fields_switches_and_choices():
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, WithRequired, choices={"mode": ("fast", "slow")})
    assert dataclass_from_args(WithRequired, parser.parse_args(["--source", "s"])) == WithRequired("s")
    assert dataclass_from_args(WithRequired, parser.parse_args(["--source", "s", "--mode", "slow", "--resume"])) == \
        WithRequired("s", "slow", True)
    for argv in ([], ["--source", "s", "--mode", "medium"]):  # missing required field, value outside the choices
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


@dataclass
class Documented:
    """A run.

    Attributes:
        clip: max gradient norm (None: no clipping).
        flip, crop: augmentation switches and the
            smallest crop.
        tags: names to keep.
        weights: name -> weight.
    """

    clip: float | None = 1.0
    flip: bool = True
    crop: float = 0.8
    tags: tuple[str, ...] = ()
    weights: dict[str, float] = field(default_factory=dict)


def test_annotations_docstring_help_optional_values_tuples_and_custom_parsers():
    def weights(text: str) -> dict[str, float]:
        return {name: float(value) for name, value in (item.split("=") for item in text.split(","))}

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Documented, parsers={"weights": weights})
    assert dataclass_from_args(Documented, parser.parse_args([])) == Documented()
    parsed = dataclass_from_args(Documented, parser.parse_args(
        ["--clip", "none", "--no-flip", "--tags", "a", "b", "--weights", "x=1,y=0.5"]), crop=0.5)
    assert parsed == Documented(clip=None, flip=False, crop=0.5, tags=("a", "b"), weights={"x": 1.0, "y": 0.5})
    assert dataclass_from_args(Documented, parser.parse_args(["--clip", "0.5"])).clip == 0.5
    text = parser.format_help()
    assert "max gradient norm (None: no clipping). (default: 1.0)" in text
    assert "augmentation switches and the smallest crop." in " ".join(text.split())  # both names, both lines
