"""Label-free DINO self-distillation of a tiny timm ViT (student/EMA teacher, centering + sharpening, backdrop views)."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from diffrl.zoo.render import SceneSpec, render, sample_spec
from diffrl.zoo.training.common import cosine_lr, log, n_params, optimizer_step, seed_all, written_atomically
from diffrl.zoo.world import COLOURS, CONTEXTS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TIMM_NAME = "vit_small_patch16_224.dino"


@dataclass
class DINOTrainConfig:
    embed_dim: int = 96
    depth: int = 3
    heads: int = 3
    patch: int = 8
    out_dim: int = 1024
    steps: int = 4000
    batch: int = 48
    lr: float = 5e-4
    warmup: int = 100
    weight_decay: float = 0.04
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    teacher_momentum: tuple[float, float] = field(default=(0.996, 1.0))  # cosine from first to second
    crop_scale: tuple[float, float] = field(default=(0.4, 1.0))
    pool_scenes: int = 8000  # scenes in the view pool, each rendered over `backdrops` different contexts
    backdrops: int = 3
    recolour: float = 0.0  # probability that a further render of a scene gives the glyph another colour
    seed: int = 0

    def timm_kwargs(self) -> dict:
        return dict(num_classes=0, img_size=64, patch_size=self.patch, embed_dim=self.embed_dim, depth=self.depth,
                    num_heads=self.heads)


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> unit-norm prototypes (cosine logits): ``[B, D] -> [B, out_dim]``.

    As DINO's ``norm_last_layer``: the weight-norm magnitude is fixed at 1; a learnable magnitude lets the student
    shrink every logit and the run collapses to the uniform distribution (measured: loss -> log(out_dim))."""

    def __init__(self, dim: int, out_dim: int, hidden: int = 256, bottleneck: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        magnitude = self.last.parametrizations.weight.original0
        magnitude.data.fill_(1.0)
        magnitude.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))


def augment(x: torch.Tensor, gen: torch.Generator, scale: tuple[float, float]) -> torch.Tensor:
    """Random resized crop + horizontal flip as one batched affine warp: ``[B, 3, 64, 64]`` in [0, 1] -> same.

    No colour jitter or grayscale: colour invariance, where wanted, comes from the world's own recolouring
    (`DINOTrainConfig.recolour`)."""
    b = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(b, generator=gen)  # noqa: E731
    area, logr = u(*scale), u(math.log(3 / 4), math.log(4 / 3))
    sx, sy = (area * logr.exp()).sqrt().clamp(max=1), (area / logr.exp()).sqrt().clamp(max=1)
    tx, ty = (1 - sx) * u(-1, 1), (1 - sy) * u(-1, 1)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * flip, tx, sy, ty
    return F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)


def pool_specs(n: int, backdrops: int, seed: int, recolour: float = 0.0) -> list[list[SceneSpec]]:
    """``n`` random pretraining scenes, each as ``backdrops`` renders over different contexts with the same glyph and
    pose. Each further render keeps the scene's colour, or with probability ``recolour`` draws the glyph's colour
    anew (its own or one of `COLOURS`): the world's own colour change as a view augmentation, so that identity is
    carried by shape as well as colour (real DINO's colour jitter plays this part). ``recolour=0`` draws exactly the
    stream of a build without the option."""
    rng, contexts, colours = np.random.default_rng(seed), list(CONTEXTS), [None, *COLOURS]
    pool = []
    for _ in range(n):
        spec = sample_spec(rng)
        others = rng.choice([c for c in contexts if c != spec.context], backdrops - 1, replace=False)
        views = [spec]
        for context in others:
            view = replace(spec, context=str(context), seed=int(rng.integers(2**31)))
            if recolour > 0 and rng.random() < recolour:
                view = replace(view, colour=colours[int(rng.integers(len(colours)))])
            views.append(view)
        pool.append(views)
    return pool


def backdrop_pool(n: int, backdrops: int, seed: int, recolour: float = 0.0) -> torch.Tensor:
    """The renders of `pool_specs`: uint8 ``[n, backdrops, 3, 64, 64]``. Two renders of one scene are two views of
    it (background augmentation, Ryali et al. 2021, done with the renderer; no labels are used)."""
    pool = [np.stack([np.asarray(render(view)) for view in views]) for views in pool_specs(n, backdrops, seed, recolour)]
    return torch.from_numpy(np.stack(pool)).permute(0, 1, 4, 2, 3).contiguous()


def sample_views(pool: torch.Tensor, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float ``[batch, 3, 64, 64]`` views in [0, 1]: one scene of ``pool`` over two different backdrops."""
    n, k = pool.shape[:2]
    idx = torch.randint(n, (batch,), generator=gen)
    first = torch.randint(k, (batch,), generator=gen)
    second = (first + torch.randint(1, k, (batch,), generator=gen)) % k
    return pool[idx, first].float() / 255, pool[idx, second].float() / 255


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def train_dino(out_dir: Path, cfg: DINOTrainConfig = DINOTrainConfig()) -> dict:
    """DINO self-distillation (student / EMA teacher, centering + sharpening) of a tiny timm ViT on two views of
    each scene, rendered over different backdrops and each augmented. Saves the teacher backbone to
    ``out_dir/model.safetensors`` and the timm arguments to ``out_dir/timm.json``."""
    gen = seed_all(cfg.seed)
    pool = backdrop_pool(cfg.pool_scenes, cfg.backdrops, cfg.seed, cfg.recolour)
    log.info("dino(seed %d): %d scenes x %d backdrops rendered", cfg.seed, *pool.shape[:2])
    backbone = timm.create_model("vit_small_patch16_224", pretrained=False, **cfg.timm_kwargs())
    student = nn.Sequential(backbone, DINOHead(cfg.embed_dim, cfg.out_dim))
    teacher = copy.deepcopy(student).requires_grad_(False)
    center = torch.zeros(cfg.out_dim)
    trainable = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses, b = [], cfg.batch
    for i in range(cfg.steps):
        views = sample_views(pool, b, gen)
        x = torch.cat([normalize(augment(v, gen, cfg.crop_scale)) for v in views])
        s_logp = F.log_softmax(student(x) / cfg.student_temp, dim=-1).split(b)
        with torch.no_grad():
            t_raw = teacher(x)
            t_prob = F.softmax((t_raw - center) / cfg.teacher_temp, dim=-1).split(b)
        # cross-view distillation: the teacher's view over one backdrop -> the student's view over the other
        loss = -0.5 * ((t_prob[0] * s_logp[1]).sum(-1).mean() + (t_prob[1] * s_logp[0]).sum(-1).mean())
        optimizer_step(opt, loss, trainable, cosine_lr(i, cfg.steps, cfg.lr, warmup=cfg.warmup), max_norm=3.0)
        with torch.no_grad():
            m0, m1 = cfg.teacher_momentum
            m = m1 - (m1 - m0) * (math.cos(math.pi * i / cfg.steps) + 1) / 2
            for pt, ps in zip(teacher.parameters(), student.parameters()):
                pt.lerp_(ps, 1 - m)
            center.mul_(cfg.center_momentum).add_(t_raw.mean(0), alpha=1 - cfg.center_momentum)
        losses.append(loss.item())
        if i % 100 == 0 or i == cfg.steps - 1:
            log.info("dino(seed %d) step %d/%d loss %.4f", cfg.seed, i, cfg.steps, float(np.mean(losses[-100:])))
    backbone = teacher[0]
    spec = {"model_name": TIMM_NAME, "kwargs": cfg.timm_kwargs(),
            "pretrained_cfg_overlay": {"input_size": [3, 64, 64], "crop_pct": 0.875, "mean": list(IMAGENET_MEAN),
                                       "std": list(IMAGENET_STD), "num_classes": 0},
            "train": {k: v for k, v in asdict(cfg).items() if k not in ("embed_dim", "depth", "heads", "patch")}}
    with written_atomically(out_dir) as tmp:
        save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, tmp / "model.safetensors")
        (tmp / "timm.json").write_text(json.dumps(spec, indent=2))
    return {"params": n_params(backbone), "final_loss": round(float(np.mean(losses[-100:])), 4), "steps": cfg.steps,
            "seed": cfg.seed}
