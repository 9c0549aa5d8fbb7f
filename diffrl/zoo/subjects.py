"""Bundled personalization subjects in DreamBench layout: ``subjects/<name>/00.png..`` + ``prompts_and_classes.txt``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffrl.zoo.render import SceneSpec, render
from diffrl.zoo.world import COLOURS, CONTEXTS, SUBJECTS, Glyph

N_REFERENCES = 5


def reference_specs(glyph: Glyph, n: int = N_REFERENCES, seed: int = 1234) -> list[SceneSpec]:
    """``n`` reference scenes of ``glyph``: plain backdrop, varied pose (position, scale, small rotation)."""
    rng = np.random.default_rng([seed, SUBJECTS.index(glyph) if glyph in SUBJECTS else 99])
    return [
        SceneSpec(glyph, "plain", None, float(rng.uniform(0.5, 0.7)), float(rng.uniform(0.4, 0.6)),
                  float(rng.uniform(0.45, 0.6)), float(rng.uniform(-12, 12)), int(rng.integers(2**31)))
        for _ in range(n)
    ]


def prompt_templates() -> list[str]:
    """25 DreamBench-style templates with ``{0}`` (identifier) and ``{1}`` (class): contexts, colours, both."""
    ctx = [p for p in CONTEXTS.values() if p]
    colours = list(COLOURS)
    out = [f"a {{0}} {{1}} {p}" for p in ctx] + [f"a {c} {{0}} {{1}}" for c in colours]
    combos = [(c, p) for p in ctx for c in colours]
    rng = np.random.default_rng(0)
    for i in rng.permutation(len(combos))[: 25 - len(out)]:
        c, p = combos[i]
        out.append(f"a {c} {{0}} {{1}} {p}")
    return out


def prompts_and_classes_text() -> str:
    """``prompts_and_classes.txt`` in DreamBench's exact format (the live list equals the object list here)."""
    lines = ["Classes", "", "subject_name,class"] + [f"{g.name},{g.noun}" for g in SUBJECTS] + ["", "Prompts", ""]
    plist = ["prompt_list = ["] + [
        f"'{t}'.format(unique_token, class_token)," if i < 24 else f"'{t}'.format(unique_token, class_token)"
        for i, t in enumerate(prompt_templates())
    ] + ["]"]
    return "\n".join(lines + ["Object Prompts", ""] + plist + ["", "Live Subject Prompts", ""] + plist) + "\n"


def write_subjects(root: Path) -> dict:
    """Render every held-out subject's references to ``root/<name>/NN.png`` and write ``prompts_and_classes.txt``."""
    for glyph in SUBJECTS:
        d = root / glyph.name
        d.mkdir(parents=True, exist_ok=True)
        for i, spec in enumerate(reference_specs(glyph)):
            render(spec).save(d / f"{i:02d}.png")
    (root / "prompts_and_classes.txt").write_text(prompts_and_classes_text())
    return {"subjects": {g.name: g.noun for g in SUBJECTS}, "references_per_subject": N_REFERENCES}
