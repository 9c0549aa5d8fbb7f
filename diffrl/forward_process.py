"""The forward process q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I) and its two inversions, written once.

x_t itself is drawn by the schedule (`diffrl.envs.scheduling.BatchedScheduler.add_noise`, diffusers' own
``add_noise``); given x_t:

- `look_forward`: the clean sample an action implies, x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t), so
  ||x0_hat - x0||^2 = (1 - abar_t) / abar_t ||eps_hat - eps||^2;
- `true_noise`: the noise that took x0 to x_t, eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t), the regression
  target of eps_hat;
- `eps_per_x0_hat`: |d eps_hat| / |d x0_hat| = sqrt(abar_t / (1 - abar_t)) = sqrt(SNR_t), how a change of the
  action scales to a change of the clean sample it implies.

``abar`` is abar_t per sample ``[B]``; latents are ``[B, C, h, w]``.
"""

from __future__ import annotations

from torch import Tensor


def _per_sample(abar: Tensor, like: Tensor) -> Tensor:
    return abar.to(like).view(-1, *([1] * (like.ndim - 1)))  # dtype and device of the latents


def look_forward(latents: Tensor, action: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """x0_hat = (x_t - sqrt(1 - abar_t) * eps_hat) / sqrt(abar_t), ``[B, C, h, w]``.

    Args:
        latents: x_t, ``[B, C, h, w]``.
        action: predicted noise eps_hat, ``[B, C, h, w]``.
        alphas_cumprod: abar_t per sample, ``[B]``.
    """
    abar = _per_sample(alphas_cumprod, latents)
    return (latents - (1 - abar).sqrt() * action) / abar.sqrt()


def true_noise(latents: Tensor, x0: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """eps = (x_t - sqrt(abar_t) * x0) / sqrt(1 - abar_t), ``[B, C, h, w]`` (same arguments as `look_forward`, with
    the clean latents ``x0`` in place of the action)."""
    abar = _per_sample(alphas_cumprod, latents)
    return (latents - abar.sqrt() * x0) / (1 - abar).sqrt()


def eps_per_x0_hat(alphas_cumprod: Tensor) -> Tensor:
    """sqrt(abar_t / (1 - abar_t)) = sqrt(SNR_t) per sample ``[B]``: a change d of x0_hat is a change
    sqrt(abar_t / (1 - abar_t)) d of eps_hat at the same x_t."""
    return (alphas_cumprod / (1 - alphas_cumprod)).sqrt()
