"""The emoji world: a deterministic renderer, a context checker and a tiny pretrained zoo that run offline on CPU."""

from diffrl.zoo.checker import classify_context, context_scores
from diffrl.zoo.font import EmojiFontNotFoundError, find_font
from diffrl.zoo.registry import DINOSpec, ZooPaths, load
from diffrl.zoo.render import IMAGE_SIZE, SceneSpec, render, render_dataset, sample_spec
from diffrl.zoo.world import (
    CLASSES,
    COLOURS,
    CONTEXTS,
    GLYPH_BY_NAME,
    GLYPHS,
    IDENTIFIER,
    PRETRAIN_GLYPHS,
    SUBJECTS,
    Glyph,
    caption,
)

__all__ = [
    "CLASSES", "COLOURS", "CONTEXTS", "GLYPHS", "GLYPH_BY_NAME", "IDENTIFIER", "IMAGE_SIZE", "PRETRAIN_GLYPHS",
    "SUBJECTS", "DINOSpec", "EmojiFontNotFoundError", "ZooPaths", "Glyph", "SceneSpec", "caption", "classify_context", "context_scores",
    "find_font", "load", "render", "render_dataset", "sample_spec",
]
