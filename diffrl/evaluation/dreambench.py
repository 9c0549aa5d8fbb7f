"""Reader of the DreamBench layout (DreamBooth, Ruiz et al. 2023).

``root/prompts_and_classes.txt`` lists ``subject_name,class`` lines under "Classes", then two 25-prompt lists
("Object Prompts", "Live Subject Prompts") written as Python ``'a {0} {1} ...'.format(unique_token, class_token)``
lines. Each subject has its reference images in ``root/<subject_name>/``. Live subjects are the dogs and cats,
as in the DreamBooth repository.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from diffrl.data.images import ImageLoadError, list_images

PROMPTS_FILE = "prompts_and_classes.txt"
LIVE_CLASSES = frozenset({"dog", "cat"})
_SECTIONS = {"classes": "classes", "object prompts": "object", "live subject prompts": "live"}
_TEMPLATE = re.compile(r"""^(?P<literal>'[^']*'|"[^"]*")\.format\(\s*unique_token\s*,\s*class_token\s*\)\s*,?$""")


class DreamBenchError(ValueError):
    """The DreamBench folder or its prompts file is missing or malformed; the message says where."""


@dataclass(frozen=True)
class Subject:
    """One DreamBench subject: its reference images and its evaluation prompts (with the identifier token)."""

    name: str
    class_noun: str
    live: bool
    image_paths: tuple[Path, ...]
    prompts: tuple[str, ...]
    identifier: str

    @property
    def instance_prompt(self) -> str:
        """The DreamBooth training prompt, e.g. ``"a sks dog"``."""
        return f"a {self.identifier} {self.class_noun}"


@dataclass(frozen=True)
class PromptsAndClasses:
    """The parsed ``prompts_and_classes.txt``: subject -> class noun, and the two prompt-template lists."""

    classes: dict[str, str]
    object_templates: tuple[str, ...]
    live_templates: tuple[str, ...]


def parse_prompts_and_classes(text: str, source: str = PROMPTS_FILE) -> PromptsAndClasses:
    """Parse the text of ``prompts_and_classes.txt``; raise `DreamBenchError` naming ``source`` and the line."""
    classes: dict[str, str] = {}
    templates: dict[str, list[str]] = {"object": [], "live": []}
    section: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        key = line.lower()
        if not line or key in ("prompts", "subject_name,class", "prompt_list = [", "]"):
            continue
        if key in _SECTIONS:
            section = _SECTIONS[key]
            continue
        where = f"{source}, line {number}: {raw!r}"
        if section == "classes":
            parts = [part.strip() for part in line.split(",")]
            if len(parts) != 2 or not all(parts):
                raise DreamBenchError(f"{where}: expected 'subject_name,class'.")
            if parts[0] in classes:
                raise DreamBenchError(f"{where}: subject '{parts[0]}' is listed twice.")
            classes[parts[0]] = parts[1]
        elif section in templates:
            match = _TEMPLATE.match(line)
            if match is None:
                example = "'a {0} {1} in the snow'.format(unique_token, class_token),"
                raise DreamBenchError(f"{where}: expected a prompt template line like {example!r}.")
            template = ast.literal_eval(match["literal"])
            if "{0}" not in template or "{1}" not in template:
                raise DreamBenchError(f"{where}: a prompt template needs both {{0}} (identifier) and {{1}} (class).")
            templates[section].append(template)
        else:
            raise DreamBenchError(f"{where}: text outside the sections 'Classes', 'Object Prompts', 'Live Subject Prompts'.")
    sections = {"Classes": classes, "Object Prompts": templates["object"], "Live Subject Prompts": templates["live"]}
    for name, found in sections.items():
        if not found:
            raise DreamBenchError(f"{source}: the '{name}' section is missing or empty.")
    return PromptsAndClasses(classes, tuple(templates["object"]), tuple(templates["live"]))


def load_dreambench(
    root: str | os.PathLike, identifier: str = "sks", subjects: Sequence[str] | None = None
) -> list[Subject]:
    """Read a DreamBench-layout folder into `Subject`s, in the order of ``prompts_and_classes.txt``.

    Args:
        root: folder with ``prompts_and_classes.txt`` and one image folder per subject.
        identifier: the rare token standing for the subject in every prompt ("sks").
        subjects: names to keep (in the given order); ``None`` keeps all.

    Raises:
        DreamBenchError: missing root, prompts file or subject folder, malformed line, unknown subject name.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DreamBenchError(f"DreamBench folder '{root}' does not exist or is not a directory.")
    prompts_file = root / PROMPTS_FILE
    if not prompts_file.is_file():
        raise DreamBenchError(f"DreamBench folder '{root}' has no {PROMPTS_FILE}; is it the dataset's root folder?")
    if not identifier or any(c.isspace() for c in identifier):
        raise ValueError(f"identifier must be one non-empty word, got {identifier!r}.")
    parsed = parse_prompts_and_classes(prompts_file.read_text(encoding="utf-8"), str(prompts_file))
    names = list(parsed.classes) if subjects is None else list(subjects)
    unknown = [name for name in names if name not in parsed.classes]
    if unknown:
        raise DreamBenchError(f"Unknown subject(s) {', '.join(unknown)}; {prompts_file} lists: {', '.join(parsed.classes)}.")
    result = []
    for name in names:
        class_noun = parsed.classes[name]
        live = class_noun in LIVE_CLASSES
        try:
            image_paths = tuple(list_images(root / name))
        except ImageLoadError as err:
            raise DreamBenchError(f"Subject '{name}' listed in {prompts_file}: {err}") from err
        templates = parsed.live_templates if live else parsed.object_templates
        prompts = tuple(template.format(identifier, class_noun) for template in templates)
        result.append(Subject(name, class_noun, live, image_paths, prompts, identifier))
    return result
