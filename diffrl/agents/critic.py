"""A small Q-network Q_phi(s_t, a) over diffusion latents (the critic of deterministic policy gradients)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of integer timesteps ``[B]`` -> ``[B, dim]`` (cos | sin, as diffusers' U-Net)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return nn.functional.pad(embedding, (0, dim % 2))


class _DownBlock(nn.Module):
    """3x3 conv (stride 2 halves h, w), a conditioning-dependent channel bias, SiLU.

    No normalisation layer: Q must track the absolute scale of its inputs (e.g. the look-forward error).
    """

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.cond = nn.Linear(cond_dim, out_channels)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return nn.functional.silu(self.conv(x) + self.cond(cond)[:, :, None, None])


class QCritic(nn.Module):
    """Q_phi(x_t, t, tau(y), a) -> ``[B]``: the expected cumulative reward of taking noise prediction ``a`` at x_t.

    Image inputs (x_t, a and, with ``lookforward_features``, x0_hat and (x0_hat - x0)^2) are stacked on channels and
    reduced by a stride-1 stem and ``log2(min(h, w)) - 2`` stride-2 blocks (at least one; 64x64 -> 4x4), then global
    average pooling. Every block receives a bias from the conditioning vector (sinusoidal timestep embedding + mean-pooled,
    projected text embedding), and the head reads the pooled features and the conditioning vector. The head's last
    layer starts at zero, so Q = 0 and dQ/da = 0 until the critic has learned something.
    With the defaults the network has ~0.25M parameters (the paper: 0.26M) for SD v1 latents ``(4, 64, 64)`` and
    ``text_dim=768``.

    Args:
        latent_shape: ``(C, h, w)`` of the latents.
        text_dim: D, the last dimension of the prompt embeddings.
        width: channels of the stem; block ``i`` has ``width * 2 ** min(i + 1, 2)`` channels.
        cond_dim: size of the timestep / text conditioning vector.
        lookforward_features: also read x0_hat and (x0_hat - x0)^2 (then ``forward`` needs ``x0_hat`` and ``x0``).
    """

    def __init__(
        self,
        latent_shape: tuple[int, int, int],
        text_dim: int,
        *,
        width: int = 20,
        cond_dim: int = 64,
        lookforward_features: bool = False,
    ) -> None:
        super().__init__()
        channels, height, width_px = latent_shape
        if width < 1 or cond_dim < 2:
            raise ValueError(f"width must be >= 1 and cond_dim >= 2, got width={width}, cond_dim={cond_dim}.")
        self.latent_shape = tuple(latent_shape)
        self.lookforward_features = lookforward_features
        self.cond_dim = cond_dim
        in_channels = channels * (4 if lookforward_features else 2)
        num_down = max(1, int(math.log2(min(height, width_px))) - 2)
        widths = [width] + [width * 2 ** min(i + 1, 2) for i in range(num_down)]
        self.time_mlp = nn.Sequential(nn.Linear(cond_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.text_proj = nn.Linear(text_dim, cond_dim)
        self.blocks = nn.ModuleList(
            _DownBlock(c_in, c_out, cond_dim, stride=1 if i == 0 else 2)
            for i, (c_in, c_out) in enumerate(zip([in_channels, *widths[:-1]], widths))
        )
        self.head = nn.Sequential(nn.Linear(widths[-1] + cond_dim, 2 * cond_dim), nn.SiLU(), nn.Linear(2 * cond_dim, 1))
        # Q starts at 0 with no sensitivity to the action: the actor's first gradients are not random directions
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(
        self,
        latents: Tensor,
        timestep: Tensor,
        prompt_embeds: Tensor,
        action: Tensor,
        x0_hat: Tensor | None = None,
        x0: Tensor | None = None,
    ) -> Tensor:
        """x_t, a, x0_hat, x0 ``[B, C, h, w]``; timestep ``[B]`` int; prompt_embeds ``[B, L, D]`` -> Q ``[B]``."""
        inputs = [latents, action]
        if self.lookforward_features:
            if x0_hat is None or x0 is None:
                raise ValueError("QCritic(lookforward_features=True) needs `x0_hat` and `x0`.")
            inputs += [x0_hat, (x0_hat - x0).pow(2)]
        cond = self.time_mlp(timestep_embedding(timestep, self.cond_dim)) + self.text_proj(prompt_embeds.mean(dim=1))
        x = torch.cat(inputs, dim=1)
        for block in self.blocks:
            x = block(x, cond)
        return self.head(torch.cat([x.mean(dim=(2, 3)), cond], dim=-1)).squeeze(-1)
