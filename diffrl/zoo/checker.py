"""Model-free, pixel-level recognition of the scene context of an emoji-world image."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


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


def context_scores(image: Image.Image | np.ndarray | torch.Tensor) -> dict[str, float]:
    """Per-context evidence in [0, 1]: the fraction of pixels (in the relevant region) of the context's colours.

    Accepts a PIL image, a uint8/float ``[H, W, 3]`` array or a float tensor ``[3, H, W]`` in [0, 1].
    """
    rgb = _to_array(image)
    h, s, v = _hsv(rgb)
    H = rgb.shape[0]
    top, low = slice(0, H * 3 // 10), slice(H // 2, H)
    white = (s < 0.12) & (v > 0.86)
    grey = (s < 0.15) & (v > 0.3) & (v < 0.72)
    sky = (h > 185) & (h < 225) & (s > 0.2) & (s < 0.55) & (v > 0.75)
    deep_blue = (h > 195) & (h < 235) & (s > 0.55) & (v > 0.45)
    sand = (h > 30) & (h < 55) & (s > 0.2) & (s < 0.5) & (v > 0.78)
    green = (h > 75) & (h < 165) & (s > 0.35) & (v > 0.2)
    brown = (h > 12) & (h < 40) & (s > 0.4) & (v > 0.3) & (v < 0.75)
    pink = ((h > 300) | (h < 5)) & (s > 0.2) & (s < 0.6) & (v > 0.75)
    neutral = (s < 0.08) & (v > 0.7) & (v < 0.97)
    sky_top = (sky | deep_blue)[top].mean()
    return {
        "snow": float(white[low].mean()),
        "beach": float(np.sqrt(sand[low].mean() * (sky | deep_blue)[: H // 2].mean())),
        "jungle": float(green.mean()),
        "wooden_floor": float(brown.mean()),
        "pink_fabric": float(pink.mean()),
        "city": float(np.sqrt(grey.mean() * sky_top) * 1.2),
        "cobblestone": float(grey.mean() * (1.0 - sky_top)),
        "water": float(deep_blue.mean() * (1.0 - sand[low].mean())),
        "plain": float(neutral.mean() * 0.9),
    }


def classify_context(image: Image.Image | np.ndarray | torch.Tensor) -> str:
    """The most likely context name (a key of ``diffrl.zoo.CONTEXTS``) of an image, by colour statistics only."""
    scores = context_scores(image)
    return max(scores, key=scores.__getitem__)
