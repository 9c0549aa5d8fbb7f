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


def _sky(rng: np.random.Generator, img: np.ndarray, end: int, colour: tuple[int, int, int] = (140, 195, 240)) -> None:
    img[:end] = _jitter(rng, colour, 10)


def _sky_over_ground(rng: np.random.Generator, s: int, horizon: tuple[float, float], sky: tuple[int, int, int],
                     ground: tuple[int, int, int], ground_jitter: float) -> tuple[np.ndarray, int]:
    """A landscape's two bands: ``sky`` above a horizon drawn uniformly in ``horizon`` (fractions of the side),
    ``ground`` below it. Returns the image and the horizon row."""
    img = np.empty((s, s, 3), np.float32)
    row = int(s * rng.uniform(*horizon))
    _sky(rng, img, row, sky)
    img[row:] = _jitter(rng, ground, ground_jitter)
    return img, row


def _blobs(rng: np.random.Generator, img: np.ndarray, n: int, rows: tuple[float, float], radius: tuple[float, float],
           colours: list[tuple[int, int, int]]) -> None:
    """Paint ``n`` filled discs with centres in the row band ``rows`` (fractions of the side), one colour each."""
    s = img.shape[0]
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    for _ in range(n):
        cy, cx = rng.uniform(rows[0] * s, rows[1] * s), rng.uniform(0, s)
        r = rng.uniform(*radius)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = _jitter(rng, colours[int(rng.integers(len(colours)))], 10)


def mountain(rng: np.random.Generator, s: int) -> np.ndarray:
    """Blue sky, grey-violet peaks with snow caps, a green valley floor."""
    img = np.empty((s, s, 3), np.float32)
    _sky(rng, img, s, (150, 200, 245))
    xx = np.arange(s, dtype=np.float32)
    ridge = np.full(s, float(s))
    for _ in range(3):
        peak_x, peak_y, slope = rng.uniform(0, s), rng.uniform(0.12, 0.3) * s, rng.uniform(0.8, 1.4)
        ridge = np.minimum(ridge, peak_y + slope * np.abs(xx - peak_x))
    yy = np.arange(s, dtype=np.float32)[:, None]
    rock = yy >= ridge[None, :]
    img[rock] = _jitter(rng, (110, 105, 125), 8)
    img[rock & (yy < ridge[None, :] + s * 0.08)] = _jitter(rng, (245, 246, 250), 4)
    img[int(s * rng.uniform(0.7, 0.78)):] = _jitter(rng, (85, 140, 70), 8)
    return _noise(rng, img, 0.015)


def blue_house(rng: np.random.Generator, s: int) -> np.ndarray:
    """A saturated blue house front with white windows and a dark red roof, on green grass under a pale sky."""
    img = np.empty((s, s, 3), np.float32)
    _sky(rng, img, s, (200, 225, 240))
    roof, ground = int(s * rng.uniform(0.08, 0.14)), int(s * rng.uniform(0.8, 0.86))
    img[roof: roof + s // 8] = _jitter(rng, (140, 40, 40), 10)
    img[roof + s // 8: ground] = _jitter(rng, (35, 75, 200), 10)
    for wy in range(roof + s // 8 + 4, ground - 6, 12):
        for wx in range(int(rng.integers(2, 6)), s - 4, 12):
            img[wy: wy + 6, wx: wx + 5] = _rgb((240, 240, 235))
    img[ground:] = _jitter(rng, (80, 160, 70), 8)
    return _noise(rng, img, 0.015)


def purple_rug_forest(rng: np.random.Generator, s: int) -> np.ndarray:
    """Dark forest (brown trunks in deep green) above a purple rug on the lower half."""
    img = np.broadcast_to(_jitter(rng, (30, 70, 35)), (s, s, 3)).copy()
    for _ in range(6):
        x, w = int(rng.integers(0, s)), int(rng.integers(2, 5))
        img[:, x: x + w] = _jitter(rng, (90, 60, 35), 10)
    rug = int(s * rng.uniform(0.45, 0.55))
    img[rug:] = _jitter(rng, (130, 60, 170), 10)
    img[rug + 2: rug + 3] = _jitter(rng, (200, 160, 220), 10)
    return _noise(rng, img, 0.02)


def wheat_field(rng: np.random.Generator, s: int) -> np.ndarray:
    """Light sky over a golden wheat field (lower two thirds) of short vertical stalk strokes."""
    img, horizon = _sky_over_ground(rng, s, (0.25, 0.35), (170, 210, 240), (215, 170, 70), 10)
    for _ in range(s * 3):
        y, x, h = int(rng.integers(horizon, s)), int(rng.integers(0, s)), int(rng.integers(2, 6))
        img[y: y + h, x] = _jitter(rng, (240, 205, 110), 15)
    return _noise(rng, img, 0.015)


def autumn_tree(rng: np.random.Generator, s: int) -> np.ndarray:
    """A tree of orange and red leaves on a brown trunk against the sky, fallen leaves on the ground."""
    img = np.empty((s, s, 3), np.float32)
    _sky(rng, img, s, (165, 205, 235))
    x = int(rng.uniform(0.2, 0.8) * s)
    img[s // 3:, x - 3: x + 3] = _jitter(rng, (95, 60, 35), 8)
    leaves = [(230, 110, 30), (200, 50, 30), (240, 160, 40)]
    _blobs(rng, img, 30, (0.0, 0.45), (4, 9), leaves)
    img[int(s * 0.82):] = _jitter(rng, (150, 95, 45), 8)
    _blobs(rng, img, 12, (0.85, 1.0), (1.5, 3), leaves)
    return _noise(rng, img, 0.015)


def eiffel_tower(rng: np.random.Generator, s: int) -> np.ndarray:
    """A dark iron lattice tower rising over a lawn, against a warm dusk sky."""
    img = np.empty((s, s, 3), np.float32)
    t = np.linspace(0, 1, s, dtype=np.float32)[:, None]
    img[:] = (_jitter(rng, (250, 200, 160), 8) * (1 - t) + _jitter(rng, (245, 170, 150), 8) * t)[:, None, :]
    cx = rng.uniform(0.15, 0.85) * s
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    half = 1.0 + (yy / s) ** 2 * s * 0.35  # the tower widens towards its feet
    body = (np.abs(xx - cx) < half) & (yy > s * 0.05)
    lattice = ((xx + yy).astype(int) % 4 == 0) | ((xx - yy).astype(int) % 4 == 0)
    img[body & (lattice | (np.abs(xx - cx) < 1.5))] = _rgb((70, 55, 50))
    img[int(s * 0.88):] = _jitter(rng, (90, 150, 70), 8)
    return _noise(rng, img, 0.01)


def milk(rng: np.random.Generator, s: int) -> np.ndarray:
    """An ocean of milk: creamy ivory with soft ripple highlights and shadows, no horizon."""
    base = _jitter(rng, (242, 228, 192), 5)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    ripples = 1.0 + 0.04 * np.sin(xx * rng.uniform(0.3, 0.6) + yy * rng.uniform(0.05, 0.2) + rng.uniform(0, 6.3))
    return _noise(rng, np.clip(base * ripples[..., None], 0, 1), 0.008)


def sunflowers(rng: np.random.Generator, s: int) -> np.ndarray:
    """Green grass under a blue sky, dotted with sunflowers (yellow petals, brown centres)."""
    img, horizon = _sky_over_ground(rng, s, (0.3, 0.38), (120, 180, 240), (60, 150, 50), 10)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    for _ in range(14):
        cy, cx, r = rng.uniform(horizon, s), rng.uniform(0, s), rng.uniform(3, 5.5)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        img[d2 <= r * r] = _jitter(rng, (250, 205, 30), 10)
        img[d2 <= (r * 0.4) ** 2] = _rgb((100, 60, 20))
    return _noise(rng, img, 0.015)


def mirror(rng: np.random.Generator, s: int) -> np.ndarray:
    """A silver mirror in a dark frame: cool light grey with bright diagonal glints."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    base = _jitter(rng, (190, 200, 210), 6)
    glint = np.abs(((xx + yy) * 0.5 + rng.uniform(0, s)) % (s * 0.6) - s * 0.3) < s * 0.06
    img = np.broadcast_to(base, (s, s, 3)).copy() * (0.9 + 0.1 * (yy / s))[..., None]
    img[glint] = _rgb((250, 252, 255))
    frame = max(2, s // 16)
    img[:frame], img[-frame:], img[:, :frame], img[:, -frame:] = (_rgb((45, 40, 40)),) * 4
    return _noise(rng, np.clip(img, 0, 1), 0.008)


def crowded_sidewalk(rng: np.random.Generator, s: int) -> np.ndarray:
    """A brick wall, a band of passers-by in bright clothes, and grey pavement at the bottom."""
    img = np.empty((s, s, 3), np.float32)
    img[:] = _jitter(rng, (160, 80, 60), 10)
    for y0 in range(0, s // 2, 4):
        img[y0] = _rgb((120, 115, 110))
    img[int(s * 0.7):] = _jitter(rng, (150, 150, 155), 6)
    clothes = [(220, 40, 60), (40, 120, 220), (240, 200, 40), (40, 170, 90), (30, 30, 35), (240, 240, 240)]
    for _ in range(14):
        x, w, top = int(rng.integers(-2, s)), int(rng.integers(3, 6)), int(s * rng.uniform(0.3, 0.5))
        img[top: int(s * 0.8), max(x, 0): x + w] = _jitter(rng, clothes[int(rng.integers(len(clothes)))], 10)
        img[top - 3: top, max(x, 0) + 1: x + w - 1] = _rgb((225, 185, 150))
    return _noise(rng, img, 0.015)


def dirt_road(rng: np.random.Generator, s: int) -> np.ndarray:
    """A light brown dirt road narrowing to the horizon between green verges, under a blue sky."""
    img, horizon = _sky_over_ground(rng, s, (0.3, 0.38), (150, 200, 240), (95, 150, 60), 8)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    depth = np.clip((yy - horizon) / (s - horizon), 0, 1)
    centre = s * rng.uniform(0.4, 0.6)
    road = (yy >= horizon) & (np.abs(xx - centre) <= 2 + depth * s * 0.6)
    img[road] = _jitter(rng, (185, 140, 95), 8)
    ruts = road & ((xx.astype(int) + yy.astype(int) // 3) % 7 == 0)
    img[ruts] = _jitter(rng, (150, 110, 75), 8)
    return _noise(rng, img, 0.02)


def white_rug(rng: np.random.Generator, s: int) -> np.ndarray:
    """A shaggy white rug on the lower part, a warm beige wall above."""
    img = np.empty((s, s, 3), np.float32)
    edge = int(s * rng.uniform(0.35, 0.45))
    img[:edge] = _jitter(rng, (190, 160, 130), 8)
    img[edge:] = _jitter(rng, (248, 248, 246), 4)
    for _ in range(s * 2):
        y, x = int(rng.integers(edge, s)), int(rng.integers(0, s))
        img[y: y + 2, x] = _rgb((225, 225, 222))
    return _noise(rng, img, 0.01)


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
    "mountain": mountain,
    "blue_house": blue_house,
    "purple_rug_forest": purple_rug_forest,
    "wheat_field": wheat_field,
    "autumn_tree": autumn_tree,
    "eiffel_tower": eiffel_tower,
    "milk": milk,
    "sunflowers": sunflowers,
    "mirror": mirror,
    "crowded_sidewalk": crowded_sidewalk,
    "dirt_road": dirt_road,
    "white_rug": white_rug,
}
