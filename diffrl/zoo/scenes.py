"""Procedural backgrounds, one per context: float ``[H, W, 3]`` arrays in [0, 1]."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Background = Callable[[np.random.Generator, int], np.ndarray]


def _rgb(c: tuple[int, int, int]) -> np.ndarray:
    return np.asarray(c, dtype=np.float32) / 255.0


def _jitter(rng: np.random.Generator, c: tuple[int, int, int], amount: float = 12) -> np.ndarray:
    return np.clip(_rgb(c) + rng.uniform(-amount, amount, 3) / 255.0, 0, 1)


def _noise(rng: np.random.Generator, img: np.ndarray, amount: float = 0.02) -> np.ndarray:
    return np.clip(img + rng.normal(0, amount, img.shape[:2] + (1,)), 0, 1).astype(np.float32)


def plain(rng: np.random.Generator, s: int) -> np.ndarray:
    """Neutral light studio backdrop with a soft vertical gradient."""
    top, bottom = _jitter(rng, (232, 230, 226), 8), _jitter(rng, (205, 203, 198), 8)
    t = np.linspace(0, 1, s, dtype=np.float32)[:, None, None]
    return _noise(rng, np.broadcast_to(top * (1 - t) + bottom * t, (s, s, 3)).copy(), 0.01)


def snow(rng: np.random.Generator, s: int) -> np.ndarray:
    """Pale overcast sky over a white snowfield (lower ~60%) with falling flakes."""
    img = np.empty((s, s, 3), np.float32)
    horizon = int(s * rng.uniform(0.3, 0.42))
    img[:horizon] = _jitter(rng, (190, 205, 222), 8)
    img[horizon:] = _jitter(rng, (244, 246, 250), 5)
    y, x = rng.integers(0, s, (2, s // 2))
    img[y, x] = 1.0
    return _noise(rng, img, 0.015)


def beach(rng: np.random.Generator, s: int) -> np.ndarray:
    """Blue sky, a band of sea and yellow sand (lower half)."""
    img = np.empty((s, s, 3), np.float32)
    sky_end, sea_end = int(s * rng.uniform(0.22, 0.3)), int(s * rng.uniform(0.42, 0.5))
    img[:sky_end] = _jitter(rng, (135, 195, 240))
    img[sky_end:sea_end] = _jitter(rng, (30, 105, 190))
    img[sea_end:] = _jitter(rng, (236, 212, 150), 8)
    return _noise(rng, img, 0.02)


def jungle(rng: np.random.Generator, s: int) -> np.ndarray:
    """Dense foliage: dark green with many leaf ellipses in varied greens."""
    img = np.broadcast_to(_jitter(rng, (25, 85, 30)), (s, s, 3)).copy()
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    for _ in range(40):
        cy, cx = rng.uniform(0, s, 2)
        a, b, th = rng.uniform(3, 9), rng.uniform(1.5, 4), rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
        v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
        green = (int(rng.integers(20, 90)), int(rng.integers(110, 190)), int(rng.integers(20, 70)))
        img[(u / a) ** 2 + (v / b) ** 2 <= 1] = _rgb(green)
    return _noise(rng, img, 0.02)


def cobblestone(rng: np.random.Generator, s: int) -> np.ndarray:
    """Grey cobblestones with dark mortar lines over the whole frame."""
    img = np.empty((s, s, 3), np.float32)
    cell = int(rng.integers(7, 11))
    img[:] = _rgb((70, 70, 72))
    for r, y0 in enumerate(range(-cell, s, cell)):
        off = (cell // 2) * (r % 2) - cell
        for x0 in range(off, s, cell):
            g = rng.uniform(120, 165) / 255.0
            img[max(y0 + 1, 0) : max(y0 + cell, 0), max(x0 + 1, 0) : max(x0 + cell, 0)] = g + rng.uniform(-0.02, 0.02)
    return _noise(rng, img, 0.015)


def pink_fabric(rng: np.random.Generator, s: int) -> np.ndarray:
    """Pink cloth with soft diagonal folds."""
    base = _jitter(rng, (240, 160, 200), 10)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    freq, ph, th = rng.uniform(0.15, 0.3), rng.uniform(0, 6.3), rng.uniform(-0.8, 0.8)
    shade = 1.0 + 0.08 * np.sin(freq * (xx * np.cos(th) + yy * np.sin(th)) + ph)
    return _noise(rng, np.clip(base * shade[..., None], 0, 1), 0.01)


def wooden_floor(rng: np.random.Generator, s: int) -> np.ndarray:
    """Brown wooden planks with grain and dark seams."""
    img = np.empty((s, s, 3), np.float32)
    plank = int(rng.integers(7, 11))
    base = _jitter(rng, (150, 95, 50), 10)
    xx = np.arange(s, dtype=np.float32)
    for y0 in range(0, s, plank):
        tone = base * rng.uniform(0.85, 1.12)
        grain = 1.0 + 0.06 * np.sin(xx * rng.uniform(0.3, 0.8) + rng.uniform(0, 6.3))
        img[y0 : y0 + plank] = np.clip(tone[None, None] * grain[None, :, None], 0, 1)
        img[y0] = base * 0.55
    return _noise(rng, img, 0.015)


def city(rng: np.random.Generator, s: int) -> np.ndarray:
    """Sky with grey building blocks (lit windows) rising from a dark street."""
    img = np.empty((s, s, 3), np.float32)
    img[:] = _jitter(rng, (140, 190, 235))
    x = 0
    while x < s:
        w, h = int(rng.integers(7, 15)), int(rng.integers(s // 3, int(s * 0.8)))
        g = rng.uniform(85, 150) / 255.0
        img[s - h :, x : x + w] = g
        for wy in range(s - h + 3, s - 6, 5):
            for wx in range(x + 2, x + w - 2, 4):
                img[wy : wy + 2, wx : wx + 2] = _rgb((235, 225, 150)) if rng.random() < 0.5 else g * 0.7
        x += w + int(rng.integers(0, 3))
    img[int(s * 0.88) :] = _rgb((60, 60, 64))
    return _noise(rng, img, 0.01)


def water(rng: np.random.Generator, s: int) -> np.ndarray:
    """Open blue water with light wave crests."""
    img = np.broadcast_to(_jitter(rng, (40, 110, 200)), (s, s, 3)).copy()
    for _ in range(18):
        y, x, w = int(rng.integers(0, s)), int(rng.integers(-8, s)), int(rng.integers(5, 14))
        img[y, max(x, 0) : x + w] = _rgb((150, 200, 245))
    return _noise(rng, img, 0.015)


BACKGROUNDS: dict[str, Background] = {
    "plain": plain,
    "jungle": jungle,
    "snow": snow,
    "beach": beach,
    "cobblestone": cobblestone,
    "pink_fabric": pink_fabric,
    "wooden_floor": wooden_floor,
    "city": city,
    "water": water,
}
