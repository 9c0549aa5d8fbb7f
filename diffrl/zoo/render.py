"""Deterministic seeded renderer of emoji scenes (64x64 RGB) and their captions."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from diffrl.zoo.font import glyph_rgba
from diffrl.zoo.scenes import BACKGROUNDS
from diffrl.zoo.world import COLOURS, CONTEXTS, PRETRAIN_GLYPHS, Glyph, caption

IMAGE_SIZE = 64


@dataclass(frozen=True)
class SceneSpec:
    """Everything that determines one render. ``scale``: glyph's longer side / image side;
    ``cx, cy``: glyph centre in [0, 1] image coordinates; ``angle``: degrees, counter-clockwise."""

    glyph: Glyph
    context: str = "plain"
    colour: str | None = None
    scale: float = 0.6
    cx: float = 0.5
    cy: float = 0.55
    angle: float = 0.0
    seed: int = 0

    @property
    def caption(self) -> str:
        return caption(self.glyph.noun, self.context, self.colour)


def sample_spec(
    rng: np.random.Generator,
    glyphs: Sequence[Glyph] = PRETRAIN_GLYPHS,
    contexts: Sequence[str] = tuple(CONTEXTS),
    p_colour: float = 0.2,
) -> SceneSpec:
    """Draw a random scene: uniform glyph and context, optional colour change, random pose."""
    colour = str(rng.choice(list(COLOURS))) if rng.random() < p_colour else None
    return SceneSpec(
        glyph=glyphs[int(rng.integers(len(glyphs)))],
        context=str(contexts[int(rng.integers(len(contexts)))]),
        colour=colour,
        scale=float(rng.uniform(0.45, 0.7)),
        cx=float(rng.uniform(0.38, 0.62)),
        cy=float(rng.uniform(0.45, 0.65)),
        angle=float(rng.uniform(-15, 15)),
        seed=int(rng.integers(2**31)),
    )


def _recolour(rgba: np.ndarray, hue_deg: float) -> np.ndarray:
    """Hue-shift the glyph to ``hue_deg`` keeping its shading: uint8 ``[h, w, 4]`` -> same."""
    rgb = rgba[..., :3].astype(np.float32) / 255.0
    lum = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    target = np.array(colorsys.hsv_to_rgb(hue_deg / 360.0, 0.85, 1.0), np.float32)
    # dark pixels stay dark, bright pixels take the target hue
    out = np.clip(target * np.clip(lum * 1.4, 0, 1)[..., None] + 0.15 * lum[..., None], 0, 1)
    return np.concatenate([(out * 255).astype(np.uint8), rgba[..., 3:]], axis=-1)


def render(spec: SceneSpec, size: int = IMAGE_SIZE) -> Image.Image:
    """Render ``spec`` to an RGB PIL image of ``size`` x ``size``; deterministic in ``spec``."""
    rng = np.random.default_rng(spec.seed)
    bg = BACKGROUNDS[spec.context](rng, size)
    rgba = glyph_rgba(spec.glyph.char)
    if spec.colour is not None:
        rgba = _recolour(rgba, COLOURS[spec.colour])
    side = max(4, round(spec.scale * size))
    h, w = rgba.shape[:2]
    f = side / max(h, w)
    glyph = Image.fromarray(rgba, "RGBA").resize((max(1, round(w * f)), max(1, round(h * f))), Image.LANCZOS)
    glyph = glyph.rotate(spec.angle, resample=Image.BICUBIC, expand=True)
    canvas = Image.fromarray((bg * 255).astype(np.uint8), "RGB")
    x0 = round(spec.cx * size - glyph.width / 2)
    y0 = round(spec.cy * size - glyph.height / 2)
    canvas.paste(glyph, (x0, y0), glyph)
    return canvas


def render_dataset(n: int, seed: int, glyphs: Sequence[Glyph] = PRETRAIN_GLYPHS) -> tuple[np.ndarray, list[SceneSpec]]:
    """``n`` random scenes: uint8 images ``[n, 64, 64, 3]`` and their specs (captions via ``spec.caption``)."""
    rng = np.random.default_rng(seed)
    specs = [sample_spec(rng, glyphs) for _ in range(n)]
    images = np.stack([np.asarray(render(s)) for s in specs])
    return images, specs
