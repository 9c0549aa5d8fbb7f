"""Shared helpers for zoo training: cached dataset, logging, seeding, tensor conversion."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffrl.io import atomic_write
from diffrl.zoo.render import SceneSpec, render_dataset
from diffrl.zoo.world import GLYPH_BY_NAME, IDENTIFIER_POOL, SELECTORS, with_identifier, without_context

log = logging.getLogger("diffrl.zoo.build")

# build order of scripts/build_zoo.py when run one stage after another
STAGES = ("clip", "vae", "vae_decoder", "clip_vision", "unet", "dino", "dino_eval", "subjects", "eval", "card")
# what each stage reads: the stages that must have finished before it starts. Every folder is written by exactly
# one stage (first stages write to the build cache), so stages without a path between them may run at once.
STAGE_DEPENDS: dict[str, tuple[str, ...]] = {
    "clip": (), "vae": (), "dino": (), "dino_eval": (), "subjects": (),
    "vae_decoder": ("vae",),
    "unet": ("clip", "vae"),  # latents from the stage-1 encoder (the decoder stage keeps it), text tower of stage 1
    "clip_vision": ("clip", "vae_decoder"),  # text tower of stage 1, reconstructions through the final VAE
    "eval": ("vae_decoder", "clip_vision", "unet", "dino", "dino_eval", "subjects"),
    "card": ("eval",),
}


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

    def extended(self, rendered: tuple[np.ndarray, list[SceneSpec]]) -> WorldData:
        """This corpus followed by more scenes (`diffrl.zoo.render.render_dataset`'s images and specs)."""
        images, specs = rendered
        return WorldData(np.concatenate([self.images, images]), self.captions + [s.caption for s in specs],
                         self.nouns + [s.glyph.noun for s in specs], self.glyphs + [s.glyph.name for s in specs],
                         self.contexts + [s.context for s in specs])


WORLD_SCENES = 32000
"""Pretraining scenes of a zoo build (`ZooBuildConfig.world_scenes`), rendered once into the build cache."""


def world_path(cache_dir: Path, n: int = WORLD_SCENES, seed: int = 0) -> Path:
    """Where `world_data` caches ``n`` scenes of ``seed``."""
    return cache_dir / f"world_{n}_{seed}.npz"


def world_data(cache_dir: Path, n: int = WORLD_SCENES, seed: int = 0) -> WorldData:
    """Render (or load from ``cache_dir``) ``n`` pretraining scenes with ``seed``."""
    path = world_path(cache_dir, n, seed)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # stages running at once: the first renders, the others wait on the lock and then load its file
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            t0 = time.time()
            images, specs = render_dataset(n, seed)
            meta = [[s.caption, s.glyph.noun, s.glyph.name, s.context] for s in specs]
            atomic_write(path, lambda handle: np.savez(handle, images=images, meta=np.array(json.dumps(meta))))
            log.info("rendered %d scenes in %.1fs -> %s", n, time.time() - t0, path)
    z = np.load(path)
    meta = json.loads(str(z["meta"]))
    return WorldData(z["images"], *map(list, zip(*meta)))


class CaptionSampler:
    """The caption a training step pairs with each image, drawn afresh at every step: the scene's own caption, or
    with probability ``identifier_rate`` the same with a no-op identifier word (uniform over `IDENTIFIER_POOL`:
    "a red sks dog in the snow"), or with probability ``selector_rate`` with the glyph's own selector word
    (`SELECTORS`: "a red gzo dog in the snow" for the poodle); independently, with probability ``context_dropout``,
    without its context phrase ("a red dog": captions, like real ones, need not name the background).

    Attributes:
        texts: every caption that can be drawn, each once (what a stage embeds ahead of training).
    """

    def __init__(self, data: WorldData, identifier_rate: float = 0.0, selector_rate: float = 0.0,
                 context_dropout: float = 0.0) -> None:
        for name, rate in (("identifier_rate", identifier_rate), ("selector_rate", selector_rate),
                           ("context_dropout", context_dropout)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {rate}.")
        if identifier_rate + selector_rate > 1.0:
            raise ValueError(f"identifier_rate + selector_rate must be <= 1, got {identifier_rate} + {selector_rate}.")
        self.identifier_rate, self.selector_rate, self.context_dropout = identifier_rate, selector_rate, context_dropout
        index: dict[str, int] = {}
        variants: dict[tuple[str, str], np.ndarray] = {}
        table = np.empty((len(data.captions), 2, len(IDENTIFIER_POOL) + 2), np.int64)
        for i, key in enumerate(zip(data.captions, data.glyphs)):
            if key not in variants:
                variants[key] = self._variants(*key, index)
            table[i] = variants[key]
        self.texts = list(index)
        self._table = torch.from_numpy(table)

    def _variants(self, text: str, glyph: str, index: dict[str, int]) -> np.ndarray:
        """``[2, P + 2]`` indices into ``index`` (extended as needed) of one scene caption's variants: rows = context
        kept, dropped; columns = no word, the P no-op words of `IDENTIFIER_POOL`, the glyph's selector. A variant the
        rates never draw keeps index -1 and is not added."""
        contexts = [(0, text)] + ([(1, without_context(text))] if self.context_dropout else [])
        words: list[tuple[int, str | None]] = [(0, None)]
        if self.identifier_rate:
            words += [(1 + k, word) for k, word in enumerate(IDENTIFIER_POOL)]
        if self.selector_rate:
            if glyph not in SELECTORS:
                raise KeyError(f"glyph {glyph!r} has no selector word (held-out subjects have none).")
            words.append((1 + len(IDENTIFIER_POOL), SELECTORS[glyph]))
        noun = GLYPH_BY_NAME[glyph].noun
        out = np.full((2, len(IDENTIFIER_POOL) + 2), -1, np.int64)
        for row, base in contexts:
            for col, word in words:
                out[row, col] = index.setdefault(with_identifier(base, noun, word) if word else base, len(index))
        return out

    def draw(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Indices into `texts` ``[b]`` of the captions of images ``idx`` ``[b]`` for one step (two uniform draws and
        one integer draw per image from ``gen``, whatever the rates)."""
        b = len(idx)
        u = torch.rand(b, generator=gen)
        pool = torch.randint(len(IDENTIFIER_POOL), (b,), generator=gen)
        drop = torch.rand(b, generator=gen) < self.context_dropout
        word = torch.zeros(b, dtype=torch.long)
        word = torch.where((u >= self.selector_rate) & (u < self.selector_rate + self.identifier_rate), 1 + pool, word)
        word = torch.where(u < self.selector_rate, len(IDENTIFIER_POOL) + 1, word)
        return self._table[idx, drop.long(), word]


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


@contextmanager
def written_atomically(dst: Path) -> Iterator[Path]:
    """Yield an empty folder beside ``dst`` to write into; when the block succeeds it replaces ``dst``, when it
    fails it is deleted and ``dst`` (e.g. the shipped weights) is left as it was."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.new.", dir=dst.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.chmod(0o755)
    install(tmp, dst)


def install(src: Path, dst: Path) -> None:
    """Move the finished file or folder ``src`` to ``dst`` (same filesystem), replacing what was there; the old
    version is removed only once the new one is in place."""
    old = dst.with_name(f".{dst.name}.old")
    _remove(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params, lr: float, max_norm: float = 1.0) -> None:
    """One training step: set the learning rate to ``lr``, backpropagate ``loss``, clip the gradient norm of
    ``params`` to ``max_norm`` and step ``opt``."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()


def cosine_lr(step: int, total: int, base: float, warmup: int = 100) -> float:
    """Linear warmup then cosine decay to 5% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * p)))
