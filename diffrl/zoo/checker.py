"""Model-free, pixel-level recognition of the scene context of an emoji-world image.

An image is described by its colour statistics in the frame around the subject (`colour_features`: the fraction of
pixels in each of `N_COLOUR_BINS` colour bins, in each of four border regions). Each context keeps the descriptions
of `EXEMPLAR_RENDERS` seeded renders of it (`fit_exemplars`, shipped in ``context_exemplars.npz`` beside this file);
an image shows the context of its nearest exemplar (L1): 100% on 630 held-out renders of the 21 contexts, blurred or
not (one nearest mean per context: 97%, its backdrops vary too much in layout for one mean).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffrl.zoo.world import CONTEXTS

EXEMPLARS_PATH = Path(__file__).with_name("context_exemplars.npz")
EXEMPLAR_RENDERS = 24  # renders kept per context
HUE_BINS = 12  # 30-degree hue sectors, each split into pale, vivid dark and vivid light
GREY_EDGES = (0.2, 0.45, 0.7, 0.88)  # value edges of the five achromatic bins (black .. white)
N_COLOUR_BINS = 3 * HUE_BINS + len(GREY_EDGES) + 1
TEMPERATURE = 0.1  # of the softmax over negative L1 distances in `context_scores`


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``rgb`` float ``[H, W, 3]`` in [0, 1] -> hue in degrees, saturation, value."""
    mx, mn = rgb.max(-1), rgb.min(-1)
    d = mx - mn + 1e-6
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    h = np.where(mx == r, (g - b) / d % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) * 60.0
    return h, (mx - mn) / (mx + 1e-6), mx


def _to_array(image: Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), np.float32) / 255.0
    if isinstance(image, torch.Tensor):  # [3, H, W] in [0, 1]
        return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    arr = np.asarray(image, np.float32)
    return arr / 255.0 if arr.max() > 1.5 else arr


def colour_features(image: Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
    """Colour histogram of the frame around the subject: ``[4 * N_COLOUR_BINS]`` fractions (each region sums to 1).

    Regions: the top and bottom quarters of the rows, the left and right fifths of the middle rows. Bins: a pixel of
    saturation < 0.15 or value < 0.2 is achromatic, binned by value at `GREY_EDGES`; any other by 30-degree hue
    sector and pale (saturation < 0.45), vivid dark (value < 0.65) or vivid light. Accepts a PIL image, a uint8/float
    ``[H, W, 3]`` array or a float tensor ``[3, H, W]`` in [0, 1].
    """
    rgb = _to_array(image)
    h, s, v = _hsv(rgb)
    grey = (s < 0.15) | (v < 0.2)
    shade = np.where(s < 0.45, 0, np.where(v < 0.65, 1, 2))
    bins = np.where(grey, 3 * HUE_BINS + np.searchsorted(GREY_EDGES, v),
                    3 * (np.floor(h / (360 / HUE_BINS)).astype(int) % HUE_BINS) + shade)
    rows, cols = rgb.shape[:2]
    top, bottom, middle = slice(0, rows // 4), slice(rows - rows // 4, rows), slice(rows // 4, rows - rows // 4)
    regions = (bins[top], bins[bottom], bins[middle, : cols // 5], bins[middle, cols - cols // 5:])
    return np.concatenate([np.bincount(r.ravel(), minlength=N_COLOUR_BINS) / r.size for r in regions])


def fit_exemplars(renders: int = EXEMPLAR_RENDERS, seed: int = 0) -> dict[str, np.ndarray]:
    """``{context: [renders, 4 * N_COLOUR_BINS]}``: `colour_features` of ``renders`` seeded renders of each context
    (random pretraining glyph, pose and colour), as float16."""
    from diffrl.zoo.render import render, sample_spec  # the renderer needs the emoji font; classifying does not

    rng = np.random.default_rng(seed)
    return {context: np.stack([colour_features(render(sample_spec(rng, contexts=[context])))
                               for _ in range(renders)]).astype(np.float16) for context in CONTEXTS}


def write_exemplars(path: Path = EXEMPLARS_PATH) -> None:
    """Refit the exemplars (after a change to the world's contexts or backdrops) and write them to ``path``."""
    with open(path, "wb") as f:
        np.savez_compressed(f, **fit_exemplars())


@cache
def _exemplars() -> tuple[list[str], np.ndarray]:
    """Context names and their exemplars ``[contexts, renders, features]`` (float64)."""
    with np.load(EXEMPLARS_PATH) as table:
        names = list(table.files)
        if names != list(CONTEXTS):
            raise RuntimeError(f"{EXEMPLARS_PATH} describes contexts {names}, the world has {list(CONTEXTS)}; refit "
                               f"them with `python -m diffrl.zoo.checker`")
        return names, np.stack([table[name] for name in names]).astype(np.float64)


def context_scores(image: Image.Image | np.ndarray | torch.Tensor) -> dict[str, float]:
    """Per-context evidence in [0, 1] (summing to 1): a softmax, at `TEMPERATURE`, over the negative L1 distance of
    the image's `colour_features` to each context's nearest exemplar."""
    names, exemplars = _exemplars()
    logits = -np.abs(exemplars - colour_features(image)).sum(-1).min(1) / TEMPERATURE
    p = np.exp(logits - logits.max())
    return dict(zip(names, (p / p.sum()).tolist()))


def classify_context(image: Image.Image | np.ndarray | torch.Tensor) -> str:
    """The most likely context name (a key of ``diffrl.zoo.CONTEXTS``) of an image: its nearest exemplar's."""
    scores = context_scores(image)
    return max(scores, key=scores.__getitem__)


if __name__ == "__main__":
    write_exemplars()
    print(f"wrote {EXEMPLARS_PATH}")
