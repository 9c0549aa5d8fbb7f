"""Compose a custom reward from a plain Python function and the look-forward reward, and evaluate it on one batch.

Runs offline on a tiny random Stable-Diffusion-format model: ``python examples/custom_reward.py``.
"""

import tempfile

import numpy as np
import torch

from diffrl.models import encode_images, encode_prompts, load_sd_components
from diffrl.models.tiny import build_tiny_sd
from diffrl.rewards import CallableReward, LookForwardReward, RewardInputs, make_decoder


def warmth(images: np.ndarray) -> np.ndarray:
    """Mean red minus mean blue in [-1, 1]: uint8 images [B, H, W, 3] -> scores [B]."""
    return (images[..., 0].astype(float) - images[..., 2]).mean(axis=(1, 2)) / 255


reward = 0.1 * CallableReward(warmth, input="numpy") + LookForwardReward()

with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
    sd = load_sd_components(build_tiny_sd(f"{tmp}/tiny-sd"))  # or a real folder / hub id
    torch.manual_seed(0)
    x0 = encode_images(sd.vae, torch.rand(4, 3, 16, 16))  # the reference latents
    t = torch.tensor([100, 400, 700, 950])
    x_t = sd.scheduler.add_noise(x0, torch.randn_like(x0), t)
    prompt_embeds = encode_prompts(sd.tokenizer, sd.text_encoder, ["a photo of sks dog"] * 4)
    inputs = RewardInputs(
        latents=x_t,
        timesteps=t,
        action=sd.unet(x_t, t, encoder_hidden_states=prompt_embeds).sample,  # eps_hat
        alphas_cumprod=sd.scheduler.alphas_cumprod[t],
        x0=x0,
        decode=make_decoder(sd.vae),  # images for `warmth`, decoded once from x0_hat
    )
    total = reward(inputs)

print(reward)
print(f"differentiable={reward.differentiable}, requires={sorted(reward.requires)}")
for name, value in [*reward.last_terms.items(), ("total", total)]:
    print(f"{name:>18}:", " ".join(f"{v:10.4f}" for v in value.tolist()))
