"""Prompt, image and latent conversions for Stable-Diffusion-format components."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import AutoencoderKL
from torch import Tensor
from transformers import CLIPTextModel, CLIPTokenizer


def encode_prompts(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompts: Sequence[str]) -> Tensor:
    """Text embeddings tau(y) exactly as `StableDiffusionPipeline.encode_prompt` computes them.

    Returns:
        ``[B, L, D]`` last hidden states (L = ``tokenizer.model_max_length``), in the text encoder's dtype.
        Encode ``[""] * B`` for the unconditional embeddings of classifier-free guidance.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not a single string; wrap it in a list.")
    tokens = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    device = text_encoder.device
    use_mask = getattr(text_encoder.config, "use_attention_mask", False)
    attention_mask = tokens.attention_mask.to(device) if use_mask else None
    embeds = text_encoder(tokens.input_ids.to(device), attention_mask=attention_mask)[0]
    return embeds.to(dtype=text_encoder.dtype)


def encode_images(vae: AutoencoderKL, images: Tensor, generator: torch.Generator | None = None, sample: bool = False) -> Tensor:
    """Images ``[B, 3, H, W]`` in ``[0, 1]`` -> scaled latents ``[B, C, H/f, W/f]`` (times ``scaling_factor``).

    ``sample=False`` takes the posterior mean; ``True`` draws from it with ``generator``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}.")
    posterior = vae.encode(images.to(vae.device, vae.dtype) * 2 - 1).latent_dist
    latents = posterior.sample(generator) if sample else posterior.mean
    return latents * vae.config.scaling_factor


def decode_latents(vae: AutoencoderKL, latents: Tensor) -> Tensor:
    """Scaled latents ``[B, C, h, w]`` -> images ``[B, 3, h*f, w*f]`` in ``[0, 1]`` (differentiable)."""
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return (images / 2 + 0.5).clamp(0, 1)
