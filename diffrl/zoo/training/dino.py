"""Label-free DINO self-distillation of a tiny timm ViT (student/EMA teacher, centering + sharpening, 2 global crops)."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from diffrl.zoo.render import render, sample_spec
from diffrl.zoo.training.common import WorldData, cosine_lr, log, n_params, seed_all
from diffrl.zoo.world import CONTEXTS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TIMM_NAME = "vit_small_patch16_224.dino"


@dataclass
class DINOTrainConfig:
    embed_dim: int = 96
    depth: int = 3
    heads: int = 3
    patch: int = 8
    out_dim: int = 512
    steps: int = 600  # stage 1: plain DINO on the cached pretraining scenes
    swap_steps: int = 450  # stage 2 (own LR / momentum schedule): adds a background-swapped third view
    swap_fraction: float = 1.0
    swap_lr: float = 1e-3
    swap_teacher_temp: float = 0.02  # sharper teacher in stage 2 (0.04 stayed near-uniform there)
    batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.04
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    teacher_momentum: tuple[float, float] = field(default=(0.99, 0.999))  # cosine from first to second
    crop_scale: tuple[float, float] = field(default=(0.4, 1.0))
    seed: int = 0

    def timm_kwargs(self) -> dict:
        return dict(num_classes=0, img_size=64, patch_size=self.patch, embed_dim=self.embed_dim, depth=self.depth,
                    num_heads=self.heads)


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised prototypes: ``[B, D] -> [B, out_dim]``."""

    def __init__(self, dim: int, out_dim: int, hidden: int = 256, bottleneck: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))


def augment(x: torch.Tensor, gen: torch.Generator, scale: tuple[float, float]) -> torch.Tensor:
    """Random resized crop + flip (one batched affine warp), colour jitter, grayscale; ``[B, 3, 64, 64]`` in [0, 1]."""
    b = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(b, generator=gen)  # noqa: E731
    area, logr = u(*scale), u(math.log(3 / 4), math.log(4 / 3))
    sx, sy = (area * logr.exp()).sqrt().clamp(max=1), (area / logr.exp()).sqrt().clamp(max=1)
    tx, ty = (1 - sx) * u(-1, 1), (1 - sy) * u(-1, 1)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * flip, tx, sy, ty
    x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    jit = torch.rand(b, generator=gen) < 0.8
    bright, contrast, sat = u(0.6, 1.4), u(0.6, 1.4), u(0.6, 1.4)
    gray = x.mean(1, keepdim=True)
    y = x * bright.view(b, 1, 1, 1)
    y = (y - y.mean((1, 2, 3), keepdim=True)) * contrast.view(b, 1, 1, 1) + y.mean((1, 2, 3), keepdim=True)
    y = (y - gray) * sat.view(b, 1, 1, 1) + gray
    x = torch.where(jit.view(b, 1, 1, 1), y, x).clamp(0, 1)
    to_gray = torch.rand(b, generator=gen) < 0.2
    return torch.where(to_gray.view(b, 1, 1, 1), x.mean(1, keepdim=True).expand_as(x), x)


def background_swapped_pair(rng: np.random.Generator, n: int, swap_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` fresh pretraining scenes rendered twice; for ``swap_fraction`` of them the second render has the same
    glyph and pose over a different background (background augmentation, Ryali et al. 2021; no labels used),
    the others are identical. Two ``[n, 3, 64, 64]`` in [0, 1]."""
    a, b = [], []
    contexts = list(CONTEXTS)
    for i in range(n):
        spec = sample_spec(rng)
        a.append(np.asarray(render(spec)))
        if i >= swap_fraction * n:
            b.append(a[-1])
            continue
        other = contexts[(contexts.index(spec.context) + int(rng.integers(1, len(contexts)))) % len(contexts)]
        b.append(np.asarray(render(replace(spec, context=other, seed=int(rng.integers(2**31))))))
    to_t = lambda x: torch.from_numpy(np.stack(x)).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    return to_t(a), to_t(b)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _distill(backbone: nn.Module, cfg: DINOTrainConfig, lr: float, steps: int, warmup: int, teacher_temp: float,
             views: Callable[[], tuple[torch.Tensor, ...]], gen: torch.Generator, tag: str
             ) -> tuple[nn.Module, list[float]]:
    """One DINO run from ``backbone`` with a fresh head, EMA teacher and center; returns the teacher backbone.

    ``views()`` gives k >= 2 source batches ``[B, 3, 64, 64]``; each is augmented once; the teacher sees the first
    two, the student all k."""
    student = nn.Sequential(backbone, DINOHead(cfg.embed_dim, cfg.out_dim))
    teacher = copy.deepcopy(student).requires_grad_(False)
    center = torch.zeros(cfg.out_dim)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    losses, b = [], cfg.batch
    for i in range(steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(i, steps, lr, warmup=warmup)
        srcs = views()
        x = torch.cat([normalize(augment(v, gen, cfg.crop_scale)) for v in srcs])
        s_logp = F.log_softmax(student(x) / cfg.student_temp, dim=-1).split(b)
        with torch.no_grad():
            t_raw = teacher(x[: 2 * b])  # the teacher sees the two global views only
            t_prob = F.softmax((t_raw - center) / teacher_temp, dim=-1).split(b)
        # cross-view distillation: teacher view i -> every other student view j
        terms = [-(t_prob[i] * s_logp[j]).sum(-1).mean() for i in range(2) for j in range(len(srcs)) if j != i]
        loss = sum(terms) / len(terms)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        opt.step()
        with torch.no_grad():
            m0, m1 = cfg.teacher_momentum
            m = m1 - (m1 - m0) * (math.cos(math.pi * i / steps) + 1) / 2
            for pt, ps in zip(teacher.parameters(), student.parameters()):
                pt.lerp_(ps, 1 - m)
            center.mul_(cfg.center_momentum).add_(t_raw.mean(0), alpha=1 - cfg.center_momentum)
        losses.append(loss.item())
        if i % 50 == 0 or i == steps - 1:
            log.info("dino(seed %d) %s step %d/%d loss %.4f", cfg.seed, tag, i, steps, float(np.mean(losses[-50:])))
    return teacher[0], losses


def train_dino(data: WorldData, out_dir: Path, cfg: DINOTrainConfig = DINOTrainConfig(), resume: bool = False) -> dict:
    """Stage 1: DINO on ``data`` (both views from one scene). Stage 2: from the stage-1 teacher backbone, DINO on
    freshly rendered, partly background-swapped pairs. ``resume`` skips stage 1 and loads its backbone from
    ``out_dir``. Saves the teacher backbone to ``out_dir/model.safetensors`` and timm kwargs to ``out_dir/timm.json``."""
    gen = seed_all(cfg.seed)
    backbone = timm.create_model("vit_small_patch16_224", pretrained=False, **cfg.timm_kwargs())
    rng, n = np.random.default_rng(cfg.seed), len(data.images)
    if resume:
        backbone.load_state_dict(load_file(out_dir / "model.safetensors"))
    else:
        def scenes() -> tuple[torch.Tensor, torch.Tensor]:
            x = data.tensor(torch.randint(n, (cfg.batch,), generator=gen).numpy())
            return x, x

        backbone, _ = _distill(backbone, cfg, cfg.lr, cfg.steps, 100, cfg.teacher_temp, scenes, gen, "stage1")
    def swapped() -> tuple[torch.Tensor, ...]:
        a, b = background_swapped_pair(rng, cfg.batch, cfg.swap_fraction)
        return a, a, b  # teacher: two crops of the scene; student also: the scene over another background

    backbone, losses = _distill(backbone, cfg, cfg.swap_lr, cfg.swap_steps, 20, cfg.swap_teacher_temp, swapped,
                                gen, "stage2")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, out_dir / "model.safetensors")
    spec = {"model_name": TIMM_NAME, "kwargs": cfg.timm_kwargs(),
            "pretrained_cfg_overlay": {"input_size": [3, 64, 64], "crop_pct": 0.875, "mean": list(IMAGENET_MEAN),
                                       "std": list(IMAGENET_STD), "num_classes": 0},
            "train": {k: v for k, v in asdict(cfg).items() if k not in ("embed_dim", "depth", "heads", "patch")}}
    (out_dir / "timm.json").write_text(json.dumps(spec, indent=2))
    return {"params": n_params(backbone), "final_loss": round(float(np.mean(losses[-50:])), 4), "steps": cfg.steps,
            "swap_steps": cfg.swap_steps, "seed": cfg.seed}
