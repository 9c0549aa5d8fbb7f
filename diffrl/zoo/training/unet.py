"""Train the tiny text-conditional ``UNet2DConditionModel`` on VAE latents and assemble the SD pipeline folder."""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

from diffrl.models.loading import FINETUNING_FILE
from diffrl.zoo.training.common import (CaptionSampler, WorldData, cosine_lr, install, log, n_params, optimizer_step,
                                        seed_all)

SD_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    steps_offset=1, clip_sample=False, set_alpha_to_one=False, prediction_type="epsilon",
)


@dataclass
class UNetTrainConfig:
    channels: tuple[int, ...] = (32, 64, 64)
    heads: int = 4
    steps: int = 11000
    batch: int = 64
    lr: float = 1e-3
    ema: float = 0.999
    cfg_dropout: float = 0.1  # fraction of empty captions, enables classifier-free guidance
    identifier_rate: float = 0.1  # fraction of captions with a no-op identifier word (`CaptionSampler`)
    selector_rate: float = 0.0  # fraction of captions with the glyph's selector word
    context_dropout: float = 0.0  # fraction of captions without their context phrase
    max_images: int = 24000  # pretraining scenes encoded to latents (v3: 21 contexts, more than v2's 9)
    time_budget_s: float | None = None  # stop early when exceeded (the LR schedule follows elapsed time too)
    # the DreamBooth learning rate the pipeline folder recommends (`diffrl.models.FINETUNING_FILE`; TrainConfig's
    # `lr_actor=None` reads it): SD's 5e-6 does not move this 1.8M-parameter UNet, 1e-3 collapses it, 3e-4 learned
    # most (benchmarks/zoo_v2_ablations.md, section 2)
    finetune_lr: float = 3e-4
    seed: int = 0


def make_unet(cfg: UNetTrainConfig, cross_dim: int, latent_channels: int = 4) -> UNet2DConditionModel:
    """The U-Net over ``[B, latent_channels, 8, 8]`` latents (the VAE's ``latent_channels``)."""
    n = len(cfg.channels)
    return UNet2DConditionModel(
        sample_size=8, in_channels=latent_channels, out_channels=latent_channels, block_out_channels=cfg.channels,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * n, up_block_types=("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=cross_dim, attention_head_dim=cfg.heads, norm_num_groups=32,
    )


def text_encoder_from_clip(clip_dir: Path) -> tuple[CLIPTextModel, CLIPTokenizer]:
    """The tiny CLIP's text tower as a standalone ``CLIPTextModel`` (frozen, eval mode) and its tokenizer."""
    clip = CLIPModel.from_pretrained(clip_dir)
    text = CLIPTextModel(clip.config.text_config)
    text.load_state_dict(clip.text_model.state_dict())
    return text.eval().requires_grad_(False), CLIPTokenizer.from_pretrained(clip_dir)


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, data: WorldData, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image: two ``[N, C, 8, 8]`` tensors (unscaled, C = latent channels)."""
    means, stds = [], []
    for i in range(0, len(data.images), batch):
        dist = vae.encode(data.tensor(np.arange(i, min(i + batch, len(data.images)))) * 2 - 1).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def embed_captions(text: CLIPTextModel, tok: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    """``[U, 77, D]`` last hidden states, padded to ``model_max_length`` as the SD pipeline does."""
    ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    return torch.cat([text(ids.input_ids[i : i + 256])[0] for i in range(0, len(captions), 256)])


def train_unet(data: WorldData, vae_dir: Path, clip_dir: Path, sd_dir: Path,
               cfg: UNetTrainConfig = UNetTrainConfig()) -> dict:
    """Train on ``data`` (latents from the VAE encoder in ``vae_dir``, captions through the frozen text tower of the
    CLIP in ``clip_dir``) and save every part of the SD pipeline folder ``sd_dir`` except ``vae`` (the VAE
    stages write that): unet (EMA weights), text_encoder, tokenizer, scheduler, model_index.json."""
    gen = seed_all(cfg.seed)
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    text, tok = text_encoder_from_clip(clip_dir)
    data = WorldData(data.images[: cfg.max_images], *(x[: cfg.max_images] for x in
                     (data.captions, data.nouns, data.glyphs, data.contexts)))
    log.info("encoding %d images to latents", len(data.images))
    mean, std = encode_latents(vae, data)
    sf = vae.config.scaling_factor
    sampler = CaptionSampler(data, cfg.identifier_rate, cfg.selector_rate, cfg.context_dropout)
    embeds = embed_captions(text, tok, sampler.texts + [""])  # every caption that can be drawn, embedded once
    empty = len(sampler.texts)
    unet = make_unet(cfg, text.config.hidden_size, vae.config.latent_channels)
    ema = copy.deepcopy(unet).requires_grad_(False)
    noise_sched = DDPMScheduler(**{k: v for k, v in SD_SCHEDULER.items() if k != "set_alpha_to_one"})
    abar = noise_sched.alphas_cumprod
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.01)
    n, losses, t0 = len(data.images), [], time.time()
    unet.train()
    for step in range(cfg.steps):
        progress = step / cfg.steps
        if cfg.time_budget_s:
            progress = max(progress, (time.time() - t0) / cfg.time_budget_s)
            if progress >= 1:
                break
        idx = torch.randint(n, (cfg.batch,), generator=gen)
        x0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * sf
        c = torch.where(torch.rand(cfg.batch, generator=gen) < cfg.cfg_dropout, empty, sampler.draw(idx, gen))
        t = torch.randint(1000, (cfg.batch,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = F.mse_loss(unet(xt, t, encoder_hidden_states=embeds[c]).sample, eps)
        lr = cosine_lr(int(progress * cfg.steps), cfg.steps, cfg.lr, warmup=200)
        optimizer_step(opt, loss, unet.parameters(), lr)
        with torch.no_grad():
            d = min(cfg.ema, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - d)
        losses.append(loss.item())
        if step % 100 == 0 or step == cfg.steps - 1:
            log.info("unet step %d/%d loss %.4f", step, cfg.steps, float(np.mean(losses[-100:])))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tok, unet=ema.eval(), scheduler=DDIMScheduler(**SD_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    sd_dir.mkdir(parents=True, exist_ok=True)
    # staged inside sd_dir (same filesystem), so each part is moved into place whole
    with tempfile.TemporaryDirectory(prefix=".staging.", dir=sd_dir) as staging:
        tmp = Path(staging)
        pipe.save_pretrained(tmp)
        for f in ("vocab.json", "merges.txt"):  # also keep the classic CLIP BPE files next to tokenizer.json
            shutil.copy(clip_dir / f, tmp / "tokenizer" / f)
        (tmp / FINETUNING_FILE).write_text(json.dumps({"lr_actor": cfg.finetune_lr}, indent=2) + "\n")
        for part in ("unet", "text_encoder", "tokenizer", "scheduler", "model_index.json", FINETUNING_FILE):
            install(tmp / part, sd_dir / part)
    return {"params": n_params(unet), "text_encoder_params": n_params(text),
            "final_loss": round(float(np.mean(losses[-100:])), 4), "steps": len(losses), "batch": cfg.batch,
            "max_steps": cfg.steps, "time_budget_s": cfg.time_budget_s, "latent_images": n}
