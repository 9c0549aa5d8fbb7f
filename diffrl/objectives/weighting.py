"""Per-timestep weights w(t) of a reward or value term in the actor loss."""

from __future__ import annotations

from torch import Tensor

ACTOR_WEIGHTINGS = ("none", "gamma_t", "snr")


def actor_weight(kind: str, timesteps: Tensor, alphas_cumprod: Tensor, gamma: float) -> Tensor:
    """w(t) ``[B]`` for timesteps ``[B]`` (training timesteps 0..T-1) and their abar_t ``[B]``.

    - ``"none"``: w = 1.
    - ``"gamma_t"``: w = gamma ** t, the paper's discount of the actor term (arXiv 2407.06642): states near the clean
      image (small t) weigh most; with gamma = 0.9986, w(999) = 0.25.
    - ``"snr"``: w = min(1, sqrt(abar_t / (1 - abar_t))). d x0_hat / d eps_hat = -sqrt((1 - abar_t) / abar_t), so a
      value gradient in x0_hat space reaches the action multiplied by 1 / sqrt(SNR); this weight undoes that
      amplification at high noise (x14.6 at t = 999 for SD's schedule) and leaves low-noise states at 1.
    """
    if kind == "none":
        return alphas_cumprod.new_ones(alphas_cumprod.shape)
    if kind == "gamma_t":
        return gamma ** timesteps.to(alphas_cumprod.dtype)
    if kind == "snr":
        return (alphas_cumprod / (1 - alphas_cumprod)).sqrt().clamp(max=1.0)
    raise ValueError(f"actor_weighting must be one of {list(ACTOR_WEIGHTINGS)}, got {kind!r}.")
