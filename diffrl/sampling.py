"""Sampling images with the environment and the U-Net actor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from diffrl.agents import UNetActor
from diffrl.envs import DenoisingConfig, DenoisingEnv
from diffrl.models import SDComponents, decode_latents


@torch.no_grad()
def generate_latents(
    components: SDComponents,
    prompts: Sequence[str],
    *,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    eta: float = 0.0,
    seed: int = 0,
) -> Tensor:
    """Final latents x_0 ``[B, C, h, w]`` for B prompts, from ``env.rollout`` with `UNetActor` (seeded)."""
    env = DenoisingEnv(
        components,
        list(prompts),
        batch_size=len(prompts),
        config=DenoisingConfig(num_inference_steps=num_inference_steps, eta=eta),
        seed=seed,
    )
    actor = UNetActor(components.unet, guidance_scale=guidance_scale)
    rollout = env.rollout(num_inference_steps, policy=actor, return_contiguous=False)
    return rollout[:, -1]["next", "latents"]


def generate(
    components: SDComponents,
    prompts: Sequence[str],
    *,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    eta: float = 0.0,
    seed: int = 0,
) -> Tensor:
    """Images ``[B, 3, H, W]`` in ``[0, 1]`` for B prompts (see `generate_latents`)."""
    latents = generate_latents(
        components, prompts, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, eta=eta, seed=seed
    )
    with torch.no_grad():
        return decode_latents(components.vae, latents)
