"""The U-Net as a deterministic policy mu(s_t) = eps_hat."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from tensordict.nn import TensorDictModule
from torch import Tensor, nn

ACTOR_IN_KEYS = ["latents", "timestep", "prompt_embeds", "negative_prompt_embeds"]


class GuidedUNet(nn.Module):
    """eps_hat = eps(x_t, t, "") + g * (eps(x_t, t, y) - eps(x_t, t, "")), as `StableDiffusionPipeline` computes it.

    With ``guidance_scale <= 1`` only the conditional prediction is computed (as the pipeline does).
    """

    def __init__(self, unet: UNet2DConditionModel, guidance_scale: float = 7.5) -> None:
        super().__init__()
        self.unet = unet
        self.guidance_scale = float(guidance_scale)

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1 and self.unet.config.time_cond_proj_dim is None

    def forward(self, latents: Tensor, timestep: Tensor, prompt_embeds: Tensor, negative_prompt_embeds: Tensor) -> Tensor:
        """latents ``[B, C, h, w]``, timestep ``[B]``, embeddings ``[B, L, D]`` -> eps_hat ``[B, C, h, w]``."""
        if not self.guided:
            return self.unet(latents, timestep, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
        noise = self.unet(
            torch.cat([latents, latents]),
            torch.cat([timestep, timestep]),
            encoder_hidden_states=torch.cat([negative_prompt_embeds, prompt_embeds]),
            return_dict=False,
        )[0]
        uncond, cond = noise.chunk(2)
        return uncond + self.guidance_scale * (cond - uncond)


class UNetActor(TensorDictModule):
    """TensorDictModule reading the `DenoisingEnv` observation and writing ``"action"`` (predicted noise).

    ``env.rollout(max_steps, policy=UNetActor(components.unet, guidance_scale=7.5))`` samples images.
    """

    def __init__(self, unet: UNet2DConditionModel, guidance_scale: float = 7.5, out_key: str = "action") -> None:
        super().__init__(GuidedUNet(unet, guidance_scale), in_keys=list(ACTOR_IN_KEYS), out_keys=[out_key])

    @property
    def unet(self) -> UNet2DConditionModel:
        return self.module.unet

    @property
    def guidance_scale(self) -> float:
        return self.module.guidance_scale
