"""Per-sample DDIM / DDPM steps over a diffusers scheduler's noise schedule, with their Gaussian densities.

diffusers' ``DDIMScheduler.step`` accepts one timestep for the whole batch; RL training needs a different t per sample.
`BatchedScheduler` reproduces diffusers' update rules term by term (same operations, same float32 tables), so that
for a uniform batch it matches ``scheduler.step`` bit for bit, and it broadcasts per-sample timesteps.

Every step is a Gaussian, x_{t_prev} = mean + std * z with z ~ N(0, I): `StepOutput` returns mean and std beside the
sample, and ``log_prob`` gives log pi(x_{t_prev} | x_t), the density that policy-gradient methods (DDPO, GRPO) need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler, SchedulerMixin
from torch import Tensor


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    """``[B]`` -> ``[B, 1, ..., 1]`` broadcastable against ``like``."""
    return values.view(-1, *([1] * (like.ndim - 1)))


@dataclass
class StepOutput:
    """One reverse step of every sample: x_{t_prev} ~ N(mean, std^2 I).

    Attributes:
        prev_sample: x_{t_prev} ``[B, C, h, w]``.
        pred_original_sample: the look-forward x0_hat of the action ``[B, C, h, w]``.
        mean: the step's mean ``[B, C, h, w]``.
        std: the step's standard deviation ``[B, 1, 1, 1]``; 0 where the step is deterministic (DDIM with eta = 0,
            DDPM's last step).
    """

    prev_sample: Tensor
    pred_original_sample: Tensor
    mean: Tensor
    std: Tensor

    def log_prob(self, value: Tensor) -> Tensor:
        """log N(value; mean, std^2 I) per sample ``[B]`` (summed over C, h, w), in float32; 0 for a deterministic
        step (std = 0), which has no density and contributes nothing to a likelihood-ratio gradient."""
        std, safe = _std(self.std, self.mean)
        # -(x - mu)^2 / (2 sigma^2) - log sigma - log(2 pi) / 2, element by element
        density = -((value.float() - self.mean.float()) ** 2) / (2 * safe**2) - safe.log() - 0.5 * math.log(2 * math.pi)
        return _sum_random(density, std)

    def kl(self, other: StepOutput) -> Tensor:
        """KL(self || other) per sample ``[B]`` (float32) for a step of the same std (another action at the same state):
        ||mean - other.mean||^2 / (2 std^2) summed over C, h, w; 0 for a deterministic step."""
        std, safe = _std(self.std, self.mean)
        return _sum_random((self.mean.float() - other.mean.float()) ** 2 / (2 * safe**2), std)


def _std(std: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """The per-sample std expanded to ``like`` (float32), and the same with 1 where it is 0 (safe to divide by)."""
    std = std.float().expand_as(like)
    return std, torch.where(std > 0, std, torch.ones_like(std))


def _sum_random(values: Tensor, std: Tensor) -> Tensor:
    """Sum over the non-batch dims of ``values`` ``[B, ...]``; a deterministic sample (std 0) contributes 0."""
    return torch.where(std > 0, values, torch.zeros_like(values)).flatten(1).sum(1)


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

    def step(self, action: Tensor, step_index: Tensor, sample: Tensor, noise: Tensor | None = None) -> StepOutput:
        """One reverse step x_t -> x_{t_prev} for every sample.

        Args:
            action: predicted noise eps_hat ``[B, C, h, w]``.
            step_index: position of each sample's t in `timesteps`, ``[B]`` int64.
            sample: x_t ``[B, C, h, w]``.
            noise: standard normal noise ``[B, C, h, w]``; required iff `stochastic`.
        Returns:
            `StepOutput`: x_{t_prev} = mean + std * noise, with the mean, std and x0_hat of the step.
        """
        if self.stochastic and noise is None:
            raise ValueError("This schedule is stochastic (DDPM or DDIM with eta > 0): pass `noise`.")
        out = self.distribution(action, step_index, sample)
        if self.stochastic:  # 4. the sample (diffusers adds the noise term the same way)
            out.prev_sample = out.mean + out.std * noise
        return out

    def distribution(self, action: Tensor, step_index: Tensor, sample: Tensor) -> StepOutput:
        """Mean and std of x_{t_prev} given x_t and the action; ``prev_sample`` is the mean (no noise drawn)."""
        step_index = step_index.to(self.timesteps.device)
        t = self.timesteps[step_index]
        alpha_prod_t = _per_sample(self.alphas_cumprod[t], sample).to(sample.device)
        alpha_prod_t_prev = _per_sample(self.alphas_cumprod_prev[step_index], sample).to(sample.device)
        beta_prod_t = 1 - alpha_prod_t
        pred_original_sample = (sample - beta_prod_t ** (0.5) * action) / alpha_prod_t ** (0.5)
        if self.clip_sample_range is not None:
            pred_original_sample = pred_original_sample.clamp(-self.clip_sample_range, self.clip_sample_range)
        if self.is_ddim:
            mean, std = self._ddim(action, pred_original_sample, alpha_prod_t, alpha_prod_t_prev)
        else:
            mean, std = self._ddpm(sample, pred_original_sample, alpha_prod_t, alpha_prod_t_prev, _per_sample(t, sample))
        return StepOutput(prev_sample=mean, pred_original_sample=pred_original_sample, mean=mean, std=std)

    def _ddim(self, action, pred_original_sample, alpha_prod_t, alpha_prod_t_prev) -> tuple[Tensor, Tensor]:
        # DDIM (Song et al. 2021, eq. 12): 1. sigma_t = eta * sqrt((1 - abar_prev) / (1 - abar_t)) *
        # sqrt(1 - abar_t / abar_prev); 2. the direction pointing to x_t; 3. mean = sqrt(abar_prev) x0_hat + direction
        beta_prod_t = 1 - alpha_prod_t
        variance = ((1 - alpha_prod_t_prev) / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = self.eta * variance ** (0.5)
        pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** (0.5) * action
        return alpha_prod_t_prev ** (0.5) * pred_original_sample + pred_sample_direction, std_dev_t

    def _ddpm(self, sample, pred_original_sample, alpha_prod_t, alpha_prod_t_prev, t) -> tuple[Tensor, Tensor]:
        # DDPM posterior q(x_prev | x_t, x0_hat) (Ho et al. 2020, eqs. 6-7): 1. mean = c0 x0_hat + ct x_t;
        # 2. variance = (1 - abar_prev) / (1 - abar_t) * beta_t ("fixed_small"), no noise at t = 0
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t
        pred_original_sample_coeff = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
        current_sample_coeff = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
        mean = pred_original_sample_coeff * pred_original_sample + current_sample_coeff * sample
        variance = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, min=1e-20)
        return mean, torch.where(t > 0, variance ** (0.5), torch.zeros_like(variance))
