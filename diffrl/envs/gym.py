"""A `gymnasium.Env` over the same denoising process, with numpy spaces (batch size 1).

Registered as ``diffrl/Denoising-v0``::

    env = gymnasium.make("diffrl/Denoising-v0", pretrained="path/to/pipeline", prompt="a photo of a dog")
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from tensordict import TensorDict

from diffrl.envs.denoising import DenoisingConfig, DenoisingEnv
from diffrl.models import SDComponents, load_sd_components
from diffrl.rewards import Reward

ENV_ID = "diffrl/Denoising-v0"


class DenoisingGymEnv(gymnasium.Env):
    """Observation ``{"latents": float32 [C, h, w], "timestep": int64 [], "step": int64 []}``; action: predicted
    noise, float32 ``[C, h, w]``; reward: float; terminated after the last scheduler step.

    Args:
        pretrained: a hub id or local pipeline folder, or already loaded `SDComponents`.
        prompt: the text condition of every episode.
        config, reward: as for `DenoisingEnv`; reference mode needs ``references``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        pretrained: str | SDComponents,
        prompt: str = "",
        config: DenoisingConfig | None = None,
        reward: Reward | None = None,
        references: torch.Tensor | None = None,
        render_mode: str | None = None,
        scheduler: str = "ddim",
    ) -> None:
        components = pretrained if isinstance(pretrained, SDComponents) else load_sd_components(pretrained, scheduler=scheduler)
        self.env = DenoisingEnv(components, prompt, batch_size=1, config=config, reward=reward, references=references)
        self.render_mode = render_mode
        shape = self.env.latent_shape
        steps = self.env.config.num_inference_steps
        self.observation_space = spaces.Dict(
            latents=spaces.Box(-np.inf, np.inf, shape=shape, dtype=np.float32),
            timestep=spaces.Box(0, self.env.schedule.num_train_timesteps - 1, shape=(), dtype=np.int64),
            step=spaces.Box(0, steps, shape=(), dtype=np.int64),
        )
        self.action_space = spaces.Box(-np.inf, np.inf, shape=shape, dtype=np.float32)
        self._state: TensorDict | None = None

    def _observation(self) -> dict[str, np.ndarray]:
        state = self._state
        return {
            "latents": state["latents"][0].detach().float().cpu().numpy(),
            "timestep": np.asarray(state["timestep"][0].item(), dtype=np.int64),
            "step": np.asarray(state["step"][0].item(), dtype=np.int64),
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.env.set_seed(seed)
        self._state = self.env.reset()
        return self._observation(), {}

    def step(self, action: np.ndarray):
        if self._state is None:
            raise RuntimeError("Call reset() before step().")
        action = torch.as_tensor(np.asarray(action, dtype=np.float32), device=self.env.device).to(self.env.components.dtype)
        self._state["action"] = action.unsqueeze(0)
        with torch.no_grad():
            transition = self.env.step(self._state)["next"]
        self._state = transition.exclude("reward", "done", "terminated", "truncated")
        reward = float(transition["reward"].item())
        terminated = bool(transition["terminated"].item())
        return self._observation(), reward, terminated, False, {}

    def render(self) -> np.ndarray | None:
        """The current x_t decoded by the VAE, uint8 ``[H, W, 3]``."""
        if self.render_mode != "rgb_array" or self._state is None:
            return None
        with torch.no_grad():
            image = self.env.decode(self._state["latents"])[0]
        return (image.permute(1, 2, 0).float().cpu().numpy() * 255).round().astype(np.uint8)


def register() -> None:
    """Register ``diffrl/Denoising-v0`` with gymnasium (idempotent)."""
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point="diffrl.envs.gym:DenoisingGymEnv", disable_env_checker=True)


register()
