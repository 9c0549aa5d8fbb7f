"""Per-timestep weighting w(t) of an actor term (a reward or a critic value of the policy's own action)."""

from __future__ import annotations

import torch
from torch import Tensor

from diffrl.forward_process import eps_per_x0_hat

ACTOR_WEIGHTINGS = ("none", "gamma_t", "snr")


def actor_weight(kind: str, timesteps: Tensor, alphas_cumprod: Tensor, gamma: float) -> Tensor:
    """w(t) per sample, ``[B]`` float32 (dimensionless), on ``timesteps``' device.

    - ``"none"``: w = 1.
    - ``"gamma_t"``: w = gamma ** t, t the training timestep (0..999 for SD; not the inference step index): the
      paper's discounting of the actor term, which favours low-noise states (0.9986 ** 999 = 0.247).
    - ``"snr"``: w = min(1, sqrt(abar_t / (1 - abar_t))), the square root of the signal-to-noise ratio capped at 1.
      A change of eps_hat moves x0_hat by sqrt((1 - abar_t) / abar_t) times as much, so this cancels that
      amplification of a reward's gradient where it exceeds 1 (high noise) and leaves low-noise states at 1.

    Args:
        kind: one of `ACTOR_WEIGHTINGS`.
        timesteps: t ``[B]``, int64 training timesteps.
        alphas_cumprod: abar_t per sample ``[B]`` (``schedule.abar(timesteps)``), in ``(0, 1]``.
        gamma: the discount in ``[0, 1]`` (used by ``"gamma_t"`` only).
    """
    if kind not in ACTOR_WEIGHTINGS:
        raise ValueError(f"actor weighting must be one of {list(ACTOR_WEIGHTINGS)}, got {kind!r}.")
    if timesteps.shape != alphas_cumprod.shape or timesteps.ndim != 1:
        raise ValueError(
            f"timesteps {tuple(timesteps.shape)} and alphas_cumprod {tuple(alphas_cumprod.shape)} must both be [B]."
        )
    if kind == "gamma_t":
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}.")
        return torch.pow(gamma, timesteps.float())
    if kind == "snr":
        return eps_per_x0_hat(alphas_cumprod.float().to(timesteps.device)).clamp(max=1.0)
    return torch.ones(timesteps.shape, dtype=torch.float32, device=timesteps.device)
