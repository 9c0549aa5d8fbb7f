"""Train a tiny ``AutoencoderKL``: 64x64 RGB <-> 8x8x4 latents, with a measured ``scaling_factor``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from diffrl.zoo.training.common import WorldData, cosine_lr, log, n_params, seed_all


@dataclass
class VAETrainConfig:
    channels: tuple[int, ...] = (8, 16, 32, 64)  # 4 levels -> downsampling x8
    latent_channels: int = 4
    steps: int = 2000
    batch: int = 16
    lr: float = 1e-3
    kl_weight: float = 1e-6
    grad_weight: float = 0.5  # L1 on image gradients: sharper edges than plain L1
    crop: int = 32  # train on random crops (4x cheaper; the VAE is convolutional) ...
    full_res_frac: float = 0.1  # ... except for the last 10% of steps, at full 64x64
    seed: int = 0


def make_vae(cfg: VAETrainConfig) -> AutoencoderKL:
    n = len(cfg.channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels, block_out_channels=cfg.channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=1, norm_num_groups=8, sample_size=64,
    )


def _grads(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


@torch.no_grad()
def latent_std(vae: AutoencoderKL, data: WorldData, n: int = 2048) -> float:
    """Std of posterior samples over ``n`` images (SD's ``scaling_factor`` is its inverse)."""
    zs = [vae.encode(data.tensor(np.arange(i, min(i + 256, n))) * 2 - 1).latent_dist.sample() for i in range(0, n, 256)]
    return torch.cat(zs).std().item()


def train_vae(data: WorldData, sd_dir: Path, cfg: VAETrainConfig = VAETrainConfig()) -> dict:
    """Train and save to ``sd_dir/vae`` (config ``scaling_factor`` = 1 / latent std)."""
    gen = seed_all(cfg.seed)
    vae = make_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    n, losses = len(data.images), []
    vae.train()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.steps, cfg.lr)
        x = data.tensor(torch.randint(n, (cfg.batch,), generator=gen).numpy()) * 2 - 1
        if step < (1 - cfg.full_res_frac) * cfg.steps:
            i, j = torch.randint(64 - cfg.crop + 1, (2,), generator=gen).tolist()
            x = x[..., i : i + cfg.crop, j : j + cfg.crop]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        l1 = (rec - x).abs().mean()
        gl = sum((a - b).abs().mean() for a, b in zip(_grads(rec), _grads(x)))
        kl = post.kl().mean()
        loss = l1 + cfg.grad_weight * gl + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(l1.item())
        if step % 100 == 0 or step == cfg.steps - 1:
            log.info("vae step %d/%d l1 %.4f kl %.1f", step, cfg.steps, float(np.mean(losses[-100:])), kl.item())
    vae.eval()
    std = latent_std(vae, data)
    vae.register_to_config(scaling_factor=1.0 / std)
    vae.save_pretrained(sd_dir / "vae")
    with torch.no_grad():
        x = data.tensor(np.arange(n - 512, n)) * 2 - 1
        mse = F.mse_loss(vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1), x).item() / 4  # in [0,1] units
    return {"params": n_params(vae), "final_l1": round(float(np.mean(losses[-100:])), 4),
            "latent_std": round(std, 4), "scaling_factor": round(1.0 / std, 4),
            "recon_psnr_db": round(float(10 * np.log10(1.0 / mse)), 2), "steps": cfg.steps}
