"""Contrastive pretraining of a tiny CLIP (transformers ``CLIPModel``) on (render, caption) pairs."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from diffrl.zoo.training.common import (CaptionSampler, WorldData, cosine_lr, log, n_params, optimizer_step, seed_all,
                                        written_atomically)
from diffrl.zoo.render import render_dataset
from diffrl.zoo.training.tokenizer import build_tokenizer
from diffrl.zoo.world import SUBJECTS

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class CLIPTrainConfig:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    patch: int = 16
    projection_dim: int = 128
    steps: int = 800
    batch: int = 96
    lr: float = 1e-3
    train_text_len: int = 16  # captions are short: train on the first 16 positions (77 at inference)
    vision_patch: int = 8  # second stage: a fresh, finer vision tower against the frozen text tower (= SD's)
    # v3 (21 contexts, subject scenes): 1,500 steps classified real renders at 0.68 and base generations at 0.76,
    # 3,000 steps at 0.71 and 0.81 (zoo_v3_ablations.md, section 8)
    vision_steps: int = 3000
    vision_lr: float = 1e-3
    recon_images: int = 6000  # stage 2 also sees VAE reconstructions of this many scenes (half of each batch)
    # stage 2 also sees this many scenes of the held-out subjects (see refine_clip_vision): without them the evaluator
    # scores true renders of the subjects at CLIP-T 0.47 (zoo_v3_ablations.md, section 1)
    subject_scenes: int = 4000
    identifier_rate: float = 0.1  # stage 1: fraction of captions with a no-op identifier word (`CaptionSampler`)
    selector_rate: float = 0.0  # stage 1: fraction of captions with the glyph's selector word
    context_dropout: float = 0.0  # stage 1: fraction of captions without their context phrase
    seed: int = 0


def clip_config(tok: CLIPTokenizer, cfg: CLIPTrainConfig) -> CLIPConfig:
    common = dict(hidden_size=cfg.hidden, intermediate_size=4 * cfg.hidden, num_hidden_layers=cfg.layers,
                  num_attention_heads=cfg.heads)
    text = dict(common, vocab_size=len(tok), max_position_embeddings=tok.model_max_length,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(common, image_size=64, patch_size=cfg.patch)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.projection_dim)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, 64, 64]`` in [0, 1] -> CLIP-normalised pixel values."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def augment(x: torch.Tensor, gen: torch.Generator, strong: bool = False) -> torch.Tensor:
    """Horizontal flips and, for half of the batch, a 3x3 blur; ``strong`` adds 4x down/up-sampling blur
    for a quarter of the batch (robustness to VAE-decoded samples)."""
    b = x.shape[0]
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    u = torch.rand(b, generator=gen).view(b, 1, 1, 1)
    out = torch.where(u < 0.5, blur, x)
    if strong:
        coarse = F.interpolate(F.interpolate(x, size=16, mode="area"), size=64, mode="bilinear", align_corners=False)
        out = torch.where(u < 0.25, coarse, out)
    return out


def train_clip(data: WorldData, out_dir: Path, cfg: CLIPTrainConfig = CLIPTrainConfig()) -> dict:
    """Stage 1: train text and vision towers jointly; ``save_pretrained`` model + processor (tokenizer, 64 px image
    processor) to ``out_dir``."""
    gen = seed_all(cfg.seed)
    with written_atomically(out_dir) as tmp:
        tok = build_tokenizer(tmp)
        model = CLIPModel(clip_config(tok, cfg))
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.1)
        n, losses = len(data.images), []
        sampler = CaptionSampler(data, cfg.identifier_rate, cfg.selector_rate, cfg.context_dropout)
        model.train()
        for step in range(cfg.steps):
            idx = torch.randint(n, (cfg.batch,), generator=gen)
            pixels = normalize(augment(data.tensor(idx.numpy()), gen))
            captions = [sampler.texts[i] for i in sampler.draw(idx, gen).tolist()]
            ids = tok(captions, padding="max_length", max_length=cfg.train_text_len, truncation=True,
                      return_tensors="pt").input_ids
            out = model(input_ids=ids, pixel_values=pixels, return_loss=True)
            optimizer_step(opt, out.loss, model.parameters(), cosine_lr(step, cfg.steps, cfg.lr))
            losses.append(out.loss.item())
            if step % 100 == 0 or step == cfg.steps - 1:
                log.info("clip step %d/%d loss %.4f", step, cfg.steps, float(np.mean(losses[-100:])))
        model.eval()
        model.save_pretrained(tmp)
        proc = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
                                  image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
        CLIPProcessor(image_processor=proc, tokenizer=tok).save_pretrained(tmp)
    return {"params": n_params(model), "final_loss": round(float(np.mean(losses[-100:])), 4), "steps": cfg.steps}


@torch.no_grad()
def vae_reconstructions(vae_dir: Path, data: WorldData, n: int, batch: int = 100) -> torch.Tensor:
    """Mode reconstructions of the first ``n`` scenes through the zoo VAE: ``[n, 3, 64, 64]`` in [0, 1]."""
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    out = []
    for i in range(0, n, batch):
        x = data.tensor(np.arange(i, min(i + batch, n))) * 2 - 1
        out.append((vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1) + 1) / 2)
    return torch.cat(out)


def refine_clip_vision(data: WorldData, joint_dir: Path, vae_dir: Path, out_dir: Path,
                       cfg: CLIPTrainConfig = CLIPTrainConfig()) -> dict:
    """Second CLIP stage: replace the vision tower by a fresh one with ``cfg.vision_patch`` pixel patches and train
    it (+ projection, temperature) against the frozen text tower (locked-text contrastive tuning), on scenes
    (strong blur augmentation) and, for half of each batch, their VAE reconstructions (robustness to decoded
    samples). The text tower of the stage-1 CLIP in ``joint_dir`` stays bit-identical (it is the SD pipeline's text
    encoder); the model and the stage-1 tokenizer and processor files are saved to ``out_dir``.

    With ``cfg.subject_scenes`` the scene half of the batches also draws from that many renders of the held-out
    subjects with their class captions ("a boot in the snow" for the fancy boot): the evaluator then knows a fancy
    boot is a boot, as a web-trained CLIP does, while the generator (U-Net, VAE, the frozen text tower) never sees a
    subject. Without it, renders of the subjects drawn exactly as their prompts ask score CLIP-T 0.23-0.79 against
    0.89-0.93 for the pretraining glyphs of their classes (benchmarks/zoo_v3_ablations.md)."""
    gen = seed_all(cfg.seed + 1)
    recon = vae_reconstructions(vae_dir, data, cfg.recon_images)
    log.info("clip vision: %d VAE reconstructions ready", len(recon))
    if cfg.subject_scenes:
        data = data.extended(render_dataset(cfg.subject_scenes, cfg.seed + 2, glyphs=SUBJECTS))
        log.info("clip vision: %d subject scenes added", cfg.subject_scenes)
    joint = CLIPModel.from_pretrained(joint_dir)
    tok = CLIPTokenizer.from_pretrained(joint_dir)
    config = joint.config.to_dict()
    vision = dict(config["vision_config"], patch_size=cfg.vision_patch)
    model = CLIPModel(CLIPConfig(text_config=config["text_config"], vision_config=vision,
                                 projection_dim=joint.config.projection_dim))
    model.text_model.load_state_dict(joint.text_model.state_dict())
    model.text_projection.load_state_dict(joint.text_projection.state_dict())
    model.requires_grad_(False)
    params = list(model.vision_model.parameters()) + list(model.visual_projection.parameters()) + [model.logit_scale]
    for p in params:
        p.requires_grad_(True)
    uniq = sorted(set(data.captions))
    cap_idx = torch.tensor([uniq.index(c) for c in data.captions])
    with torch.no_grad():
        ids = tok(uniq, padding="max_length", max_length=cfg.train_text_len, truncation=True, return_tensors="pt")
        txt = model.get_text_features(**ids)
        txt = F.normalize(txt if isinstance(txt, torch.Tensor) else txt.pooler_output, dim=-1)
    opt = torch.optim.AdamW(params, lr=cfg.vision_lr, weight_decay=0.1)
    n, losses = len(data.images), []
    model.train()
    for step in range(cfg.vision_steps):
        idx = torch.randint(n, (cfg.batch,), generator=gen)
        idx[: cfg.batch // 2] = torch.randint(cfg.recon_images, (cfg.batch // 2,), generator=gen)
        x = torch.cat([recon[idx[: cfg.batch // 2]], data.tensor(idx[cfg.batch // 2 :].numpy())])
        img = model.get_image_features(pixel_values=normalize(augment(x, gen, strong=True)))
        img = F.normalize(img if isinstance(img, torch.Tensor) else img.pooler_output, dim=-1)
        c = cap_idx[idx]
        logits = model.logit_scale.exp() * img @ txt[c].T
        same = (c[:, None] == c[None, :]).float()  # identical captions in a batch are all positives
        loss = 0.5 * (-(same / same.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
                      - (same / same.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean())
        optimizer_step(opt, loss, params, cosine_lr(step, cfg.vision_steps, cfg.vision_lr, warmup=100))
        losses.append(loss.item())
        if step % 100 == 0 or step == cfg.vision_steps - 1:
            log.info("clip vision step %d/%d loss %.4f", step, cfg.vision_steps, float(np.mean(losses[-100:])))
    model.eval()
    with written_atomically(out_dir) as tmp:
        for f in joint_dir.iterdir():  # tokenizer and image processor of stage 1
            if f.is_file() and f.name not in ("config.json", "model.safetensors"):
                shutil.copy(f, tmp / f.name)
        model.save_pretrained(tmp)
    return {"params": n_params(model), "final_loss": round(float(np.mean(losses[-100:])), 4), "steps": cfg.vision_steps,
            "patch": cfg.vision_patch, "recon_images": cfg.recon_images, "subject_scenes": cfg.subject_scenes}
