"""A small Q-network Q_phi(s_t, a) over diffusion latents (the critic of deterministic policy gradients)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

CRITIC_INPUTS = ("x0_hat", "latents", "action", "x0", "lookforward_error")
"""Image inputs a `QCritic` can read: the look-forward latent x0_hat(s, a), x_t, the action eps_hat, the reference
latent x0 (reference mode) and the squared look-forward error (x0_hat - x0)^2."""


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of integer timesteps ``[B]`` -> ``[B, dim]`` (cos | sin, as diffusers' U-Net)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return nn.functional.pad(embedding, (0, dim % 2))


class _ConvBlock(nn.Module):
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

    **Inputs.** The image inputs named in ``inputs`` (see `CRITIC_INPUTS`) are stacked on channels. The default,
    ``("x0_hat",)``, reads the action only through its look-forward latent x0_hat(s, a): every image reward of this
    library (DINO, CLIP, any score of the decoded x0_hat) is a function of x0_hat, so what the critic learns about the
    action at one noise level carries over to the others. Add ``"latents"`` for rewards that depend on x_t itself, and
    ``"x0"`` / ``"lookforward_error"`` for rewards that compare x0_hat with the reference latent.

    **Network.** A stride-1 stem, ``max(1, log2(min(h, w)) - 2)`` stride-2 blocks (64x64 -> 4x4, 8x8 -> 4x4) and a
    stride-1 block, each with a channel bias from the conditioning vector (sinusoidal timestep embedding + projected
    mean-pooled text embedding). The final feature map is flattened (not pooled: where in the latent an action acts
    matters for dQ/da), projected to ``hidden`` features, modulated by the conditioning vector, and read by a head with
    one output per timestep band. About 0.3M parameters for SD v1 latents ``(4, 64, 64)`` and ``text_dim=768``.

    **Per-band value normalisation** (PopArt, van Hasselt et al. 2016, one statistic per timestep band). Cumulative
    rewards differ by orders of magnitude across noise levels (the DINO reward is about -0.01 below t = 800 and -0.5 to
    -0.8 above t = 900), so the network predicts Q in normalised units per band, ``Q = mean[b] + std[b] * Q_norm``,
    with b = ``band(t)``. `update_statistics` moves the statistics towards new regression targets and rescales the
    band's output row so that Q itself is unchanged. Regressing ``Q_norm`` on ``(y - mean[b]) / std[b]`` weighs every
    band's variance equally. Since mean and std are functions of t only, the direction of dQ/da is that of dQ_norm/da.

    Args:
        latent_shape: ``(C, h, w)`` of the latents.
        text_dim: D, the last dimension of the prompt embeddings.
        inputs: image inputs, a non-empty subset of `CRITIC_INPUTS`.
        width: channels of the stem; later blocks have ``2 * width`` and ``4 * width``.
        cond_dim: size of the timestep / text conditioning vector.
        hidden: size of the flattened-feature projection and of the head.
        num_bands: timestep bands of the value normalisation (band width ``num_train_timesteps / num_bands``).
        num_train_timesteps: the scheduler's training timesteps (SD: 1000).
        min_band_count: a band uses the statistics of all bands pooled until it has seen this many targets.
    """

    def __init__(
        self,
        latent_shape: tuple[int, int, int],
        text_dim: int,
        *,
        inputs: Sequence[str] = ("x0_hat",),
        width: int = 16,
        cond_dim: int = 64,
        hidden: int = 128,
        num_bands: int = 10,
        num_train_timesteps: int = 1000,
        min_band_count: int = 32,
    ) -> None:
        super().__init__()
        channels, height, width_px = latent_shape
        if width < 1 or cond_dim < 2 or hidden < 1 or num_bands < 1:
            raise ValueError(
                f"width, hidden and num_bands must be >= 1 and cond_dim >= 2, got width={width}, cond_dim={cond_dim}, "
                f"hidden={hidden}, num_bands={num_bands}."
            )
        unknown = sorted(set(inputs) - set(CRITIC_INPUTS))
        if unknown or not inputs:
            raise ValueError(f"inputs must be a non-empty subset of {list(CRITIC_INPUTS)}, got {list(inputs)}.")
        self.latent_shape = tuple(latent_shape)
        self.inputs = tuple(inputs)
        self.cond_dim = cond_dim
        self.num_bands = num_bands
        self.num_train_timesteps = num_train_timesteps
        num_down = max(1, int(math.log2(min(height, width_px))) - 2)
        widths = [width] + [width * 2 ** min(i + 1, 2) for i in range(num_down)] + [width * 2 ** min(num_down, 2)]
        strides = [1] + [2] * num_down + [1]
        self.time_mlp = nn.Sequential(nn.Linear(cond_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.text_proj = nn.Linear(text_dim, cond_dim)
        self.blocks = nn.ModuleList(
            _ConvBlock(c_in, c_out, cond_dim, stride)
            for c_in, c_out, stride in zip([channels * len(self.inputs), *widths[:-1]], widths, strides)
        )
        reduced = [height, width_px]
        for _ in range(num_down):
            reduced = [(size + 1) // 2 for size in reduced]
        self.project = nn.Linear(widths[-1] * reduced[0] * reduced[1], hidden)
        self.modulate = nn.Linear(cond_dim, hidden)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, num_bands))
        self.min_band_count = min_band_count
        # running statistics of the regression targets per band; index num_bands: all bands pooled
        self.register_buffer("value_mean", torch.zeros(num_bands + 1))
        self.register_buffer("value_sq_mean", torch.ones(num_bands + 1))
        self.register_buffer("value_count", torch.zeros(num_bands + 1))

    # ------------------------------------------------------------------ bands
    def band(self, timestep: Tensor) -> Tensor:
        """Band index ``[B]`` (int64) of each timestep."""
        width = self.num_train_timesteps / self.num_bands
        return (timestep.long().float() / width).floor().long().clamp(0, self.num_bands - 1)

    def statistics(self) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation (at least 1e-6) of the values per band, ``[num_bands]`` each: the band's own
        running statistics once it has seen ``min_band_count`` targets, the pooled ones before."""
        std = (self.value_sq_mean - self.value_mean.pow(2)).clamp_min(1e-12).sqrt()
        own = self.value_count[:-1] >= self.min_band_count
        return torch.where(own, self.value_mean[:-1], self.value_mean[-1]), torch.where(own, std[:-1], std[-1])

    # ---------------------------------------------------------------- forward
    def normalized(
        self,
        latents: Tensor,
        timestep: Tensor,
        prompt_embeds: Tensor,
        action: Tensor,
        x0_hat: Tensor | None = None,
        x0: Tensor | None = None,
    ) -> Tensor:
        """Q in its band's normalised units ``[B]`` (what the critic's regression loss compares)."""
        images = {"latents": latents, "action": action, "x0_hat": x0_hat, "x0": x0}
        if "lookforward_error" in self.inputs:
            images["lookforward_error"] = None if x0_hat is None or x0 is None else (x0_hat - x0).pow(2)
        missing = [name for name in self.inputs if images[name] is None]
        if missing:
            raise ValueError(f"QCritic(inputs={list(self.inputs)}) needs {missing}: pass x0_hat (and x0) to forward.")
        cond = self.time_mlp(timestep_embedding(timestep, self.cond_dim)) + self.text_proj(prompt_embeds.mean(dim=1))
        x = torch.cat([images[name] for name in self.inputs], dim=1)
        for block in self.blocks:
            x = block(x, cond)
        features = nn.functional.silu(self.project(x.flatten(1))) * (1 + self.modulate(cond))
        out = self.head(features)  # [B, num_bands]
        return out.gather(1, self.band(timestep)[:, None]).squeeze(1)

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
        return self.denormalize(self.normalized(latents, timestep, prompt_embeds, action, x0_hat, x0), timestep)

    def denormalize(self, values: Tensor, timestep: Tensor) -> Tensor:
        """Values ``[B]`` in their band's normalised units back in reward units (inverse of `normalize`)."""
        band = self.band(timestep)
        mean, std = self.statistics()
        return mean[band] + std[band] * values

    def normalize(self, values: Tensor, timestep: Tensor) -> Tensor:
        """Values (e.g. TD targets) ``[B]`` in their band's normalised units."""
        band = self.band(timestep)
        mean, std = self.statistics()
        return (values - mean[band]) / std[band]

    # ------------------------------------------------------------ statistics
    @torch.no_grad()
    def update_statistics(self, targets: Tensor, timestep: Tensor, rate: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Move each band's (and the pooled) mean / second moment towards ``targets`` ``[N]``: exact running averages
        while fewer than ``1 / rate`` targets were seen, then exponential averages with ``rate``. Then rescale the
        output rows (`rescale_output`) so that Q is unchanged (PopArt). Under torch.distributed the batch statistics
        are summed over processes first: every process keeps the same statistics and weights. Returns the old and
        new per-band mean and std, for rescaling a target copy of the critic the same way. The first update sets the statistics without
        rescaling: an untrained output has nothing to preserve."""
        targets = targets.detach().to(self.value_mean.dtype)
        band = torch.cat([self.band(timestep), torch.full_like(timestep, self.num_bands, dtype=torch.long)])
        targets = torch.cat([targets, targets])
        count = torch.bincount(band, minlength=self.num_bands + 1).to(self.value_count)
        sums = torch.stack([count, torch.zeros_like(self.value_mean).index_add_(0, band, targets),
                            torch.zeros_like(self.value_mean).index_add_(0, band, targets.pow(2))])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)  # one set of statistics (and one rescaling) in every process
        count, batch_mean, batch_sq = sums[0], sums[1] / sums[0].clamp_min(1), sums[2] / sums[0].clamp_min(1)
        old_mean, old_std = self.statistics()
        first = bool(self.value_count[-1] == 0)  # nothing learned yet: no output to preserve
        self.value_count += count
        step = torch.where(count > 0, (count / self.value_count.clamp_min(1)).clamp_min(rate), 0)
        self.value_mean.lerp_(batch_mean, step)
        self.value_sq_mean.lerp_(batch_sq, step)
        new_mean, new_std = self.statistics()
        if first:
            old_mean, old_std = new_mean, new_std
        self.rescale_output(old_mean, old_std, new_mean, new_std)
        return old_mean, old_std, new_mean, new_std

    @torch.no_grad()
    def rescale_output(self, old_mean: Tensor, old_std: Tensor, new_mean: Tensor, new_std: Tensor) -> None:
        """Rescale each band's row of the head's last layer so that mean + std * Q_norm is unchanged."""
        last = self.head[-1]
        last.weight.mul_((old_std / new_std)[:, None])
        last.bias.copy_((old_std * last.bias + old_mean - new_mean) / new_std)
