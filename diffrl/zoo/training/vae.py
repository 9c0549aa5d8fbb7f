"""Train a tiny ``AutoencoderKL``: 64x64 RGB <-> 8x8xC latents, with a measured ``scaling_factor``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn

from diffrl.zoo.training.common import WorldData, cosine_lr, log, n_params, optimizer_step, seed_all, written_atomically
from diffrl.zoo.training.dino import normalize as dino_normalize


@dataclass
class VAETrainConfig:
    channels: tuple[int, ...] = (8, 16, 32, 64)  # 4 levels -> downsampling x8
    latent_channels: int = 4
    layers_per_block: int = 1
    # 8x v1's 1400: the stage-1 VAE was undertrained (benchmarks/zoo_v2_ablations.md, section 3: 4x gave reference
    # ceilings min 0.611 -> 0.894; zoo_v3_ablations.md, section 6: 8x on the v3 world gave min 0.92, 24.8 dB)
    steps: int = 11200
    batch: int = 16
    lr: float = 2e-3
    kl_weight: float = 1e-6
    grad_weight: float = 0.5  # L1 on image gradients: sharper edges than plain L1
    crop: int = 32  # train on random crops (4x cheaper; the VAE is convolutional) ...
    full_res_frac: float = 0.1  # ... except for the last 10% of steps, at full 64x64
    # second stage: decoder-only refinement at 64x64 (latent space unchanged). On the v3 VAE 4,000 steps raise the
    # mean reference PSNR 24.82 -> 25.03 dB with every ceiling >= 0.93 (zoo_v3_ablations.md, section 7; on v2 it cost
    # the alarm clock 0.05 of ceiling, zoo_v2_ablations.md, section 3)
    decoder_steps: int = 4000
    decoder_lr: float = 1e-3
    # decoder stage: weight of the squared error (images in [-1, 1]) added to the L1 losses (PSNR is a squared-error
    # measure, which L1 under-weights on the few large errors). On the v3 VAE, 4,000 steps: mean reference PSNR 24.92
    # (0) -> 25.02 (10) / 24.99 (30) dB, world PSNR 21.47 -> 22.12 / 22.20 (zoo_v3_ablations.md, section 9)
    decoder_mse_weight: float = 10.0
    # decoder stage: weight of 1 - cosine of DINO CLS features of reconstruction and image (a perceptual loss that
    # keeps what identifies a subject); 0 turns it off, > 0 needs a DINO ViT (the build's `dino` stage)
    dino_weight: float = 0.0
    seed: int = 0


def make_vae(cfg: VAETrainConfig) -> AutoencoderKL:
    n = len(cfg.channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels, block_out_channels=cfg.channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=cfg.layers_per_block, norm_num_groups=8, sample_size=64,
    )


def _recon_loss(rec: torch.Tensor, x: torch.Tensor, grad_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1 + grad_weight * gradient-L1, L1) between images in [-1, 1]."""
    l1 = (rec - x).abs().mean()
    return l1 + grad_weight * sum((a - b).abs().mean() for a, b in zip(_grads(rec), _grads(x))), l1


def _grads(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


@torch.no_grad()
def latent_std(vae: AutoencoderKL, data: WorldData, n: int = 2048) -> float:
    """Std of posterior samples over the first ``n`` images (SD's ``scaling_factor`` is its inverse)."""
    n = min(n, len(data.images))
    zs = [vae.encode(data.tensor(np.arange(i, min(i + 256, n))) * 2 - 1).latent_dist.sample() for i in range(0, n, 256)]
    return torch.cat(zs).std().item()


def train_vae(data: WorldData, out_dir: Path, cfg: VAETrainConfig = VAETrainConfig()) -> dict:
    """Train and save to ``out_dir`` (config ``scaling_factor`` = 1 / latent std)."""
    gen = seed_all(cfg.seed)
    vae = make_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    n, losses = len(data.images), []
    vae.train()
    for step in range(cfg.steps):
        x = data.tensor(torch.randint(n, (cfg.batch,), generator=gen).numpy()) * 2 - 1
        if step < (1 - cfg.full_res_frac) * cfg.steps:
            i, j = torch.randint(64 - cfg.crop + 1, (2,), generator=gen).tolist()
            x = x[..., i : i + cfg.crop, j : j + cfg.crop]
        post = vae.encode(x).latent_dist
        rec_loss, l1 = _recon_loss(vae.decode(post.sample(generator=gen)).sample, x, cfg.grad_weight)
        kl = post.kl().mean()
        loss = rec_loss + cfg.kl_weight * kl
        optimizer_step(opt, loss, vae.parameters(), cosine_lr(step, cfg.steps, cfg.lr))
        losses.append(l1.item())
        if step % 100 == 0 or step == cfg.steps - 1:
            log.info("vae step %d/%d l1 %.4f kl %.1f", step, cfg.steps, float(np.mean(losses[-100:])), kl.item())
    vae.eval()
    std = latent_std(vae, data)
    vae.register_to_config(scaling_factor=1.0 / std)
    with written_atomically(out_dir) as tmp:
        vae.save_pretrained(tmp)
    return {"params": n_params(vae), "final_l1": round(float(np.mean(losses[-100:])), 4),
            "latent_std": round(std, 4), "scaling_factor": round(1.0 / std, 4),
            "recon_psnr_db": recon_psnr(vae, data), "steps": cfg.steps}


def _drop_source_path(config_json: Path) -> None:
    """Remove the ``_name_or_path`` that diffusers saves for a model loaded from disk: in a shipped config it would
    name the build machine's cache folder."""
    config = json.loads(config_json.read_text())
    config.pop("_name_or_path", None)
    config_json.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@torch.no_grad()
def recon_psnr(vae: AutoencoderKL, data: WorldData, n: int = 512) -> float:
    """PSNR (dB, images in [0, 1]) of mode reconstructions of the last ``n`` images."""
    n = min(n, len(data.images))
    x = data.tensor(np.arange(len(data.images) - n, len(data.images))) * 2 - 1
    mse = F.mse_loss(vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1), x).item() / 4
    return round(float(10 * np.log10(1.0 / mse)), 2)


def dino_loss(dino: nn.Module, rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` of the DINO CLS features of ``rec`` and ``x`` (images ``[B, 3, 64, 64]`` in [-1, 1])."""
    f = lambda im: dino(dino_normalize((im.clamp(-1, 1) + 1) / 2))  # noqa: E731
    with torch.no_grad():
        target = f(x)
    return (1 - F.cosine_similarity(f(rec), target, dim=-1)).mean()


def refine_decoder(data: WorldData, vae_dir: Path, out_dir: Path, cfg: VAETrainConfig = VAETrainConfig(),
                   dino: nn.Module | None = None) -> dict:
    """Second VAE stage: train only the decoder of the VAE in ``vae_dir`` (frozen encoder, so latents and
    ``scaling_factor`` stay fixed) and save it to ``out_dir``. With ``cfg.dino_weight > 0`` the loss adds
    ``dino_weight * dino_loss`` with the frozen ViT ``dino`` (timm, 64 px input)."""
    if cfg.dino_weight > 0 and dino is None:
        raise ValueError("VAETrainConfig.dino_weight > 0 needs a DINO ViT: pass dino= (the build passes its `dino`)")
    if dino is not None:
        dino.eval().requires_grad_(False)
    gen = seed_all(cfg.seed + 1)
    vae = AutoencoderKL.from_pretrained(vae_dir)
    vae.requires_grad_(False)
    dec = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in dec:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(dec, lr=cfg.decoder_lr, weight_decay=0.0)
    n, losses = len(data.images), []
    for step in range(cfg.decoder_steps):
        x = data.tensor(torch.randint(n, (cfg.batch,), generator=gen).numpy()) * 2 - 1
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=gen)
        rec = vae.decode(z).sample
        loss, l1 = _recon_loss(rec, x, cfg.grad_weight)
        if cfg.decoder_mse_weight > 0:
            loss = loss + cfg.decoder_mse_weight * F.mse_loss(rec, x)
        if cfg.dino_weight > 0:
            loss = loss + cfg.dino_weight * dino_loss(dino, rec, x)
        optimizer_step(opt, loss, dec, cosine_lr(step, cfg.decoder_steps, cfg.decoder_lr, warmup=20))
        losses.append(l1.item())
        if step % 100 == 0 or step == cfg.decoder_steps - 1:
            log.info("vae decoder step %d/%d l1 %.4f", step, cfg.decoder_steps, float(np.mean(losses[-100:])))
    vae.eval()
    with written_atomically(out_dir) as tmp:
        vae.save_pretrained(tmp)
        _drop_source_path(tmp / "config.json")
    final_l1 = round(float(np.mean(losses[-100:])), 4) if losses else None  # None: no decoder step (a copy)
    return {"final_l1": final_l1, "recon_psnr_db": recon_psnr(vae, data), "steps": cfg.decoder_steps}
