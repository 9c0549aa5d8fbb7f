"""The reverse diffusion process as a batched TorchRL environment."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import EnvBase

from diffrl.envs.scheduling import BatchedScheduler
from diffrl.models import SDComponents, decode_latents, encode_prompts
from diffrl.rewards import Reward, RewardInputs


@dataclass
class DenoisingConfig:
    """How episodes of `DenoisingEnv` start, step and are rewarded.

    Attributes:
        num_inference_steps: N, the length of the inference schedule (episode length from x_T).
        eta: DDIM stochasticity (ignored by DDPM, which is always stochastic).
        mode: ``"sampling"`` starts from x_T ~ N(0, I); ``"reference"`` starts from a reference latent x0 noised to
            the timestep of `start_step` (or a uniformly random schedule index per sample when ``None``).
        start_step: reference mode only: schedule index to start from, in ``[0, N)``.
        reward_mode: ``"per_step"`` rewards r(s_t, a_t) at every step; ``"terminal"`` scores only the final sample.
        height, width: image size in pixels; ``None`` uses the U-Net's native ``sample_size``.
    """

    num_inference_steps: int = 25
    eta: float = 0.0
    mode: Literal["sampling", "reference"] = "sampling"
    start_step: int | None = None
    reward_mode: Literal["per_step", "terminal"] = "per_step"
    height: int | None = None
    width: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("sampling", "reference"):
            raise ValueError(f"mode must be 'sampling' or 'reference', got {self.mode!r}.")
        if self.reward_mode not in ("per_step", "terminal"):
            raise ValueError(f"reward_mode must be 'per_step' or 'terminal', got {self.reward_mode!r}.")
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}.")
        if self.start_step is not None and not 0 <= self.start_step < self.num_inference_steps:
            raise ValueError(f"start_step must be in [0, {self.num_inference_steps}), got {self.start_step}.")


class DenoisingEnv(EnvBase):
    """Denoising x_T -> x_0 with a Stable-Diffusion-format model as an MDP (see DESIGN.md for the keys).

    state s_t = (x_t, t, tau(y)); action = predicted noise eps_hat (same shape as x_t); the transition is the
    scheduler's reverse step; done after the last scheduler step. Prompt embeddings are shared by reference across
    steps (``rollout(..., return_contiguous=False)`` avoids stacking copies of them).

    Args:
        components: loaded pipeline components (their scheduler must be DDIM or DDPM).
        prompts: one prompt per batch element, or a single prompt for the whole batch.
        batch_size: B.
        config: episode settings.
        reward: a `Reward` (``None``: zero reward).
        references: reference mode: clean latents ``[N, C, h, w]`` to sample x0 from (or pass ``"x0"`` to `reset`).
        seed: seed of the environment's generator (initial noise, DDPM / DDIM-eta noise, random starts).
    """

    _supports_set_state = True
    batch_locked = True

    def __init__(
        self,
        components: SDComponents,
        prompts: Sequence[str] | str,
        *,
        batch_size: int,
        config: DenoisingConfig | None = None,
        reward: Reward | None = None,
        references: Tensor | None = None,
        seed: int | None = None,
    ) -> None:
        config = config or DenoisingConfig()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        super().__init__(device=components.device, batch_size=torch.Size([batch_size]))
        self.components = components
        self.latent_dtype = components.dtype  # cached: reading a module's dtype walks all its parameters
        self.config = config
        self.reward_fn = reward
        self.schedule = BatchedScheduler(components.scheduler, config.num_inference_steps, config.eta)
        self.schedule.timesteps = self.schedule.timesteps.to(self.device)
        factor = components.vae_scale_factor
        channels, size, _ = components.latent_shape
        height, width = config.height or size * factor, config.width or size * factor
        if height % factor or width % factor:
            raise ValueError(f"height and width must be multiples of the VAE scale factor {factor}, got {height}x{width}.")
        self.latent_shape = (channels, height // factor, width // factor)
        self.rng = torch.Generator(device=self.device)
        self._set_seed(seed)
        self.set_prompts(prompts)
        self.references: Tensor | None = None
        if references is not None:
            self.set_references(references)
        self._make_specs()

    # ----------------------------------------------------------------- inputs
    def set_prompts(self, prompts: Sequence[str] | str) -> None:
        """Encode the prompts (and the empty prompt for guidance) once; episodes share the embeddings."""
        batch = self.batch_size[0]
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if len(prompts) == 1:
            prompts = prompts * batch
        if len(prompts) != batch:
            raise ValueError(f"Got {len(prompts)} prompts for batch_size={batch}: pass one prompt or exactly {batch}.")
        with torch.no_grad():
            embeds = encode_prompts(self.components.tokenizer, self.components.text_encoder, [*prompts, ""])
        self.prompts = prompts
        self.prompt_embeds = embeds[:batch]
        self.negative_prompt_embeds = embeds[batch:].expand(batch, -1, -1)

    def set_references(self, latents: Tensor) -> None:
        """Reference mode: clean latents ``[N, C, h, w]`` (already scaled by the VAE ``scaling_factor``)."""
        if latents.ndim != 4 or tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"reference latents must have shape [N, {', '.join(map(str, self.latent_shape))}], got {tuple(latents.shape)}."
            )
        self.references = latents.to(self.device)

    # ------------------------------------------------------------------ specs
    def _make_specs(self) -> None:
        batch = self.batch_size
        latent = Unbounded(shape=(*batch, *self.latent_shape), dtype=self.latent_dtype, device=self.device)
        embeds = Unbounded(shape=(*batch, *self.prompt_embeds.shape[1:]), dtype=self.prompt_embeds.dtype, device=self.device)
        observation = Composite(
            latents=latent,
            timestep=Bounded(0, self.schedule.num_train_timesteps - 1, shape=batch, dtype=torch.int64, device=self.device),
            step=Bounded(0, self.config.num_inference_steps, shape=batch, dtype=torch.int64, device=self.device),
            prompt_embeds=embeds,
            negative_prompt_embeds=embeds.clone(),
            shape=batch,
            device=self.device,
        )
        if self.config.mode == "reference":
            observation["x0"] = latent.clone()
        if self.schedule.stochastic:  # log pi(x_{t_prev} | x_t) of the step that led here (0 after a reset)
            observation["sample_log_prob"] = Unbounded(shape=batch, dtype=torch.float32, device=self.device)
        self.observation_spec = observation
        self.state_spec = observation.clone()
        self.action_spec = latent.clone()
        self.reward_spec = Unbounded(shape=(*batch, 1), dtype=self.latent_dtype, device=self.device)

    # -------------------------------------------------------------- dynamics
    def _set_seed(self, seed: int | None) -> None:
        self.rng.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()) if seed is None else seed)

    def _randn(self, shape: Sequence[int]) -> Tensor:
        return torch.randn(tuple(shape), generator=self.rng, device=self.device, dtype=self.latent_dtype)

    def _check_batch(self, name: str, value: Tensor, shape: tuple[int, ...]) -> Tensor:
        expected = (*self.batch_size, *shape)
        if tuple(value.shape) != expected:
            raise ValueError(f"'{name}' has shape {tuple(value.shape)}, expected {expected} (batch_size, *shape).")
        return value

    def _reset(self, tensordict: TensorDictBase | None, set_state: bool = False, **kwargs) -> TensorDictBase:
        given = tensordict if (set_state and tensordict is not None) else TensorDict(batch_size=self.batch_size)
        batch = self.batch_size[0]
        prompt_embeds = given.get("prompt_embeds", self.prompt_embeds)
        negative_prompt_embeds = given.get("negative_prompt_embeds", self.negative_prompt_embeds)
        self._check_batch("prompt_embeds", prompt_embeds, tuple(self.prompt_embeds.shape[1:]))
        state = {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds}
        if self.config.mode == "sampling":
            step = given.get("step", torch.zeros(batch, dtype=torch.int64, device=self.device))
            latents = given.get("latents", None)
            if latents is None:
                latents = self._randn((batch, *self.latent_shape)) * self.components.scheduler.init_noise_sigma
        else:
            x0 = given.get("x0", None)
            if x0 is None:
                if self.references is None:
                    raise ValueError("Reference mode needs reference latents: call set_references(...) or reset with 'x0'.")
                x0 = self.references[torch.randint(len(self.references), (batch,), generator=self.rng, device=self.device)]
            state["x0"] = self._check_batch("x0", x0, self.latent_shape)
            step = given.get("step", None)
            if step is None:
                step = self._random_start_steps(batch)
            latents = given.get("latents", None)
            if latents is None:
                noise = self._randn((batch, *self.latent_shape))
                latents = self.schedule.add_noise(x0, noise, self.schedule.timesteps[step])
        self._check_batch("latents", latents, self.latent_shape)
        step = self._check_batch("step", step, ())
        if ((step < 0) | (step >= self.config.num_inference_steps)).any():
            raise ValueError(f"'step' must be in [0, {self.config.num_inference_steps}), got {step.tolist()}.")
        if self.schedule.stochastic:
            state["sample_log_prob"] = torch.zeros(batch, dtype=torch.float32, device=self.device)
        return TensorDict(
            latents=latents,
            step=step,
            timestep=self.schedule.timesteps[step],
            **state,
            done=torch.zeros(batch, 1, dtype=torch.bool, device=self.device),
            terminated=torch.zeros(batch, 1, dtype=torch.bool, device=self.device),
            batch_size=self.batch_size,
            device=self.device,
        )

    def _random_start_steps(self, batch: int) -> Tensor:
        if self.config.start_step is not None:
            return torch.full((batch,), self.config.start_step, dtype=torch.int64, device=self.device)
        return torch.randint(self.config.num_inference_steps, (batch,), generator=self.rng, device=self.device)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action, latents, step = tensordict["action"], tensordict["latents"], tensordict["step"]
        self._check_batch("action", action, self.latent_shape)
        if not torch.isfinite(action).all():
            bad = (~torch.isfinite(action)).flatten(1).any(1).nonzero().flatten().tolist()
            raise ValueError(f"The action (predicted noise) contains NaN or inf at batch indices {bad}; check the policy.")
        timestep = self.schedule.timesteps[step]
        noise = self._randn(action.shape) if self.schedule.stochastic else None
        transition = self.schedule.step(action, step, latents, noise)
        next_latents = transition.prev_sample
        next_step, next_timestep, done = self.following_step(step)
        done = done.unsqueeze(-1)
        x0 = tensordict.get("x0", None)
        reward = self._reward(tensordict, action, latents, timestep, x0, next_latents, done)
        out = TensorDict(
            latents=next_latents,
            step=next_step,
            timestep=next_timestep,
            prompt_embeds=tensordict["prompt_embeds"],
            negative_prompt_embeds=tensordict["negative_prompt_embeds"],
            reward=reward,
            done=done,
            terminated=done.clone(),
            batch_size=self.batch_size,
            device=self.device,
        )
        if x0 is not None:
            out["x0"] = x0
        if self.schedule.stochastic:
            out["sample_log_prob"] = transition.log_prob(next_latents)
        return out

    def following_step(self, step: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The schedule position after ``step`` ``[B]``: next step index, its timestep (0 once done) and done, ``[B]``
        each."""
        next_step = step + 1
        done = next_step >= self.config.num_inference_steps
        last = self.config.num_inference_steps - 1
        return next_step, torch.where(done, 0, self.schedule.timesteps[next_step.clamp(max=last)]), done

    def log_prob(self, tensordict: TensorDictBase, action: Tensor) -> Tensor:
        """log pi(x_{t_prev} | x_t) ``[B]`` (float32) of stored transitions under ``action``.

        ``tensordict`` holds the states (``"latents"``, ``"step"``) and the samples they led to (``("next",
        "latents")``), e.g. a rollout's steps; ``action`` is eps_hat ``[B, C, h, w]`` for those states, typically the
        current policy's, with gradients (a PPO ratio is ``exp(log_prob - tensordict["next", "sample_log_prob"])``).
        0 for deterministic steps (see `diffrl.envs.scheduling.StepOutput.log_prob`)."""
        step = self.schedule.distribution(action, tensordict["step"], tensordict["latents"])
        return step.log_prob(tensordict["next", "latents"])

    def _reward(self, tensordict, action, latents, timestep, x0, next_latents, done) -> Tensor:
        batch = self.batch_size[0]
        zeros = torch.zeros(batch, 1, dtype=self.latent_dtype, device=self.device)
        if self.reward_fn is None or (self.config.reward_mode == "terminal" and not done.any()):
            return zeros
        inputs = RewardInputs(
            latents=latents,
            timesteps=timestep,
            action=action,
            alphas_cumprod=self.schedule.abar(timestep),
            x0=x0,
            prompts=self.prompts,
            decode=self.decode,
            x0_hat=next_latents if self.config.reward_mode == "terminal" else None,
        )
        reward = self.reward_fn(inputs).unsqueeze(-1).to(self.latent_dtype)
        return torch.where(done, reward, zeros) if self.config.reward_mode == "terminal" else reward

    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``[B, C, h, w]`` -> images ``[B, 3, H, W]`` in ``[0, 1]`` with the pipeline's VAE."""
        return decode_latents(self.components.vae, latents)
