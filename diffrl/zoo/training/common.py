"""Shared helpers for zoo training: cached dataset, logging, seeding, tensor conversion."""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffrl.zoo.render import render_dataset

log = logging.getLogger("diffrl.zoo.build")

# build order of scripts/build_zoo.py (vae_decoder keeps the latent space, so unet may overlap with it)
STAGES = ("clip", "vae", "vae_decoder", "clip_vision", "unet", "dino", "dino_eval", "subjects", "eval", "card")


@dataclass
class WorldData:
    """Rendered pretraining corpus. ``images``: uint8 ``[N, 64, 64, 3]``; per-sample caption, class noun, glyph, context."""

    images: np.ndarray
    captions: list[str]
    nouns: list[str]
    glyphs: list[str]
    contexts: list[str]

    def tensor(self, idx: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Images ``idx`` as float ``[b, 3, 64, 64]`` in [0, 1]."""
        return torch.from_numpy(self.images[np.asarray(idx)]).permute(0, 3, 1, 2).float() / 255.0


def world_data(cache_dir: Path, n: int = 24000, seed: int = 0) -> WorldData:
    """Render (or load from ``cache_dir``) ``n`` pretraining scenes with ``seed``."""
    path = cache_dir / f"world_{n}_{seed}.npz"
    if not path.exists():
        t0 = time.time()
        images, specs = render_dataset(n, seed)
        cache_dir.mkdir(parents=True, exist_ok=True)
        meta = [[s.caption, s.glyph.noun, s.glyph.name, s.context] for s in specs]
        np.savez(path, images=images, meta=np.array(json.dumps(meta)))
        log.info("rendered %d scenes in %.1fs -> %s", n, time.time() - t0, path)
    z = np.load(path)
    meta = json.loads(str(z["meta"]))
    return WorldData(z["images"], *map(list, zip(*meta)))


def seed_all(seed: int) -> torch.Generator:
    """Seed numpy/torch; returns a torch generator with that seed."""
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@contextmanager
def stage_timer(name: str, record: dict):
    """Log and record (seconds, in ``record[name]["seconds"]``) the wall time of a stage."""
    t0 = time.time()
    record.setdefault(name, {})
    log.info("stage %s: start", name)
    yield
    dt = time.time() - t0
    record[name]["seconds"] = round(dt, 1)
    log.info("stage %s: done in %.1fs", name, dt)


def cosine_lr(step: int, total: int, base: float, warmup: int = 100) -> float:
    """Linear warmup then cosine decay to 5% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * p)))
