"""Per-sample DDIM / DDPM steps over a diffusers scheduler's noise schedule.

diffusers' ``DDIMScheduler.step`` accepts one timestep for the whole batch; RL training needs a different t per sample.
`BatchedScheduler` reproduces diffusers' update rules term by term (same operations, same float32 tables), so that
for a uniform batch it matches ``scheduler.step`` bit for bit, and it broadcasts per-sample timesteps.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler, SchedulerMixin
from torch import Tensor


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    """``[B]`` -> ``[B, 1, ..., 1]`` broadcastable against ``like``."""
    return values.view(-1, *([1] * (like.ndim - 1)))


class BatchedScheduler:
    """The inference schedule of a DDIM (any eta) or DDPM scheduler, stepping each sample at its own timestep.

    Args:
        scheduler: a configured `DDIMScheduler` or `DDPMScheduler` (not modified; a copy is made from its config).
        num_inference_steps: length N of the inference schedule.
        eta: DDIM stochasticity (0 = deterministic DDIM, 1 = DDPM-like variance); ignored by DDPM.
    """

    def __init__(self, scheduler: SchedulerMixin, num_inference_steps: int, eta: float = 0.0) -> None:
        if not isinstance(scheduler, (DDIMScheduler, DDPMScheduler)):
            raise TypeError(f"BatchedScheduler supports DDIMScheduler and DDPMScheduler, got {type(scheduler).__name__}.")
        config = scheduler.config
        if config.prediction_type != "epsilon":
            raise ValueError(f"The action is predicted noise: prediction_type must be 'epsilon', got {config.prediction_type!r}.")
        if config.thresholding:
            raise ValueError("Dynamic thresholding is not supported; load the scheduler with thresholding=False.")
        if isinstance(scheduler, DDPMScheduler) and config.variance_type not in (None, "fixed_small"):
            raise ValueError(f"DDPM variance_type {config.variance_type!r} is not supported; use 'fixed_small'.")
        if not 1 <= num_inference_steps <= config.num_train_timesteps:
            raise ValueError(f"num_inference_steps must be in [1, {config.num_train_timesteps}], got {num_inference_steps}.")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}.")
        self.scheduler = type(scheduler).from_config(config)
        self.scheduler.set_timesteps(num_inference_steps)
        self.is_ddim = isinstance(scheduler, DDIMScheduler)
        self.eta = float(eta) if self.is_ddim else 1.0
        self.num_inference_steps = num_inference_steps
        self.num_train_timesteps = int(config.num_train_timesteps)
        self.timesteps: Tensor = self.scheduler.timesteps.long()  # [N], descending
        if int(self.timesteps.max()) >= self.num_train_timesteps:
            raise ValueError(
                f"{num_inference_steps} inference steps with steps_offset={config.steps_offset} reach timestep "
                f"{int(self.timesteps.max())}, outside the {self.num_train_timesteps} training timesteps; "
                f"use at most {self.num_train_timesteps - config.steps_offset} steps."
            )
        self.alphas_cumprod: Tensor = self.scheduler.alphas_cumprod  # [T], float32
        # abar at the "previous" timestep of each schedule index, as diffusers computes it.
        if self.is_ddim:
            prev = self.timesteps - self.num_train_timesteps // num_inference_steps
            final = self.scheduler.final_alpha_cumprod
        else:
            prev = torch.cat([self.timesteps[1:], self.timesteps.new_tensor([-1])])
            final = self.scheduler.one
        self.prev_timesteps: Tensor = prev
        self.alphas_cumprod_prev: Tensor = torch.where(prev >= 0, self.alphas_cumprod[prev.clamp(min=0)], final)
        self.clip_sample_range: float | None = float(config.clip_sample_range) if config.clip_sample else None

    @property
    def stochastic(self) -> bool:
        """Whether `step` consumes noise."""
        return self.eta > 0

    def abar(self, timesteps: Tensor) -> Tensor:
        """abar_t for timesteps ``[B]`` -> ``[B]`` (float32)."""
        return self.alphas_cumprod.to(timesteps.device)[timesteps]

    def add_noise(self, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """Forward process q(x_t | x0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, per-sample t ``[B]``."""
        return self.scheduler.add_noise(x0, noise, timesteps)

    def step(self, action: Tensor, step_index: Tensor, sample: Tensor, noise: Tensor | None = None) -> Tensor:
        """One reverse step x_t -> x_{t_prev} for every sample.

        Args:
            action: predicted noise eps_hat ``[B, C, h, w]``.
            step_index: position of each sample's t in `timesteps`, ``[B]`` int64.
            sample: x_t ``[B, C, h, w]``.
            noise: standard normal noise ``[B, C, h, w]``; required iff `stochastic`.
        Returns:
            x_{t_prev} ``[B, C, h, w]``.
        """
        if self.stochastic and noise is None:
            raise ValueError("This schedule is stochastic (DDPM or DDIM with eta > 0): pass `noise`.")
        step_index = step_index.to(self.timesteps.device)
        t = self.timesteps[step_index]
        alpha_prod_t = _per_sample(self.alphas_cumprod[t], sample).to(sample.device)
        alpha_prod_t_prev = _per_sample(self.alphas_cumprod_prev[step_index], sample).to(sample.device)
        beta_prod_t = 1 - alpha_prod_t
        pred_original_sample = (sample - beta_prod_t ** (0.5) * action) / alpha_prod_t ** (0.5)
        if self.clip_sample_range is not None:
            pred_original_sample = pred_original_sample.clamp(-self.clip_sample_range, self.clip_sample_range)
        if self.is_ddim:
            return self._ddim(action, sample, pred_original_sample, alpha_prod_t, alpha_prod_t_prev, noise)
        return self._ddpm(sample, pred_original_sample, alpha_prod_t, alpha_prod_t_prev, _per_sample(t, sample), noise)

    def _ddim(self, action, sample, pred_original_sample, alpha_prod_t, alpha_prod_t_prev, noise):
        beta_prod_t = 1 - alpha_prod_t
        variance = ((1 - alpha_prod_t_prev) / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = self.eta * variance ** (0.5)
        pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** (0.5) * action
        prev_sample = alpha_prod_t_prev ** (0.5) * pred_original_sample + pred_sample_direction
        if self.eta > 0:
            prev_sample = prev_sample + std_dev_t * noise
        return prev_sample

    def _ddpm(self, sample, pred_original_sample, alpha_prod_t, alpha_prod_t_prev, t, noise):
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t
        pred_original_sample_coeff = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
        current_sample_coeff = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
        prev_sample = pred_original_sample_coeff * pred_original_sample + current_sample_coeff * sample
        variance = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, min=1e-20)
        return prev_sample + torch.where(t > 0, variance ** (0.5) * noise, torch.zeros_like(noise))
