"""Locate NotoColorEmoji and rasterise glyphs to RGBA arrays."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

FONT_ENV = "DIFFRL_EMOJI_FONT"
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",
    "/usr/local/share/fonts/NotoColorEmoji.ttf",
    "/opt/homebrew/share/fonts/NotoColorEmoji.ttf",
)
BITMAP_SIZE = 109  # the only size the CBDT bitmap font loads at


class EmojiFontNotFoundError(FileNotFoundError):
    """Raised when NotoColorEmoji.ttf cannot be found."""


def find_font() -> Path:
    """Path of NotoColorEmoji.ttf: ``$DIFFRL_EMOJI_FONT`` if set, else the usual system locations."""
    override = os.environ.get(FONT_ENV)
    if override:
        if Path(override).is_file():
            return Path(override)
        raise EmojiFontNotFoundError(
            f"{FONT_ENV}={override!r} does not point to a file; set it to NotoColorEmoji.ttf "
            "or install it with `apt-get install fonts-noto-color-emoji`."
        )
    for cand in FONT_CANDIDATES:
        if Path(cand).is_file():
            return Path(cand)
    raise EmojiFontNotFoundError(
        "The diffrl emoji world needs the Noto Color Emoji font (SIL OFL). Install it with "
        "`apt-get install fonts-noto-color-emoji` (Debian/Ubuntu) or point the environment variable "
        f"{FONT_ENV} to NotoColorEmoji.ttf. Searched: {', '.join(FONT_CANDIDATES)}"
    )


@lru_cache(maxsize=4)
def _font(path: str) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, BITMAP_SIZE)


@lru_cache(maxsize=256)
def glyph_rgba(char: str, font_path: str | None = None) -> np.ndarray:
    """Glyph rendered at 109 px and cropped to its alpha bounding box: uint8 ``[h, w, 4]``."""
    font = _font(font_path or str(find_font()))
    if "\u200d" in char and not features.check("raqm"):
        raise RuntimeError(
            f"glyph {char!r} is a ZWJ sequence and needs Pillow's raqm layout (install `libfribidi0` / `libraqm0`)"
        )
    canvas = Image.new("RGBA", (160, 140), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((4, 4), char, font=font, embedded_color=True)
    arr = np.asarray(canvas)
    ys, xs = np.nonzero(arr[..., 3] > 8)
    if len(xs) == 0:
        raise ValueError(f"glyph {char!r} rendered empty; is the font NotoColorEmoji?")
    return arr[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].copy()
