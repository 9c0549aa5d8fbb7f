"""DDPO (Black et al. 2023, arXiv 2305.13301): PPO with clipped importance ratios over stored denoising steps."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor, nn
from torchrl.objectives import LossModule

from diffrl.agents.actor import ACTOR_IN_KEYS, UNetActor
from diffrl.envs.denoising import DenoisingEnv

TRANSITION_KEYS = (*ACTOR_IN_KEYS, "step", ("next", "latents"), ("next", "sample_log_prob"), "advantage")


@dataclass
class DDPOConfig:
    """Attributes:
    clip_range: epsilon of the clipped ratio, ``clip(ratio, 1 - eps, 1 + eps)`` (DDPO: 1e-4).
    advantage_clip: advantages are clipped to ``[-advantage_clip, advantage_clip]`` (DDPO: 5).
    """

    clip_range: float = 1e-4
    advantage_clip: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.clip_range < 1:
            raise ValueError(f"clip_range must be in (0, 1), got {self.clip_range}.")
        if not self.advantage_clip > 0:
            raise ValueError(f"advantage_clip must be > 0, got {self.advantage_clip}.")


class DDPOLoss(LossModule):
    """``loss_actor = -mean min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)`` over stored transitions.

    A transition batch ``[N]`` (a rollout of ``env`` flattened over trajectories and steps) holds the state the
    policy saw (``"latents"``, ``"timestep"``, ``"step"``, the prompt embeddings), the sample it led to
    (``("next", "latents")``), that sample's log-probability under the behaviour policy (``("next",
    "sample_log_prob")``, recorded by a stochastic `DenoisingEnv`) and the trajectory's ``"advantage"`` (e.g.
    `diffrl.objectives.advantages.group_normalized` of the final rewards). The ratio is
    ``exp(log pi_theta(x_{t-1} | x_t) - log pi_old)``, the current log-probability from `DenoisingEnv.log_prob` with
    the actor's action (the guided eps_hat, as sampled). Deterministic steps (std 0) have log-probability 0 under
    every policy: their ratio is 1 and they carry no gradient.

    Logged: ``"ratio"`` (mean), ``"clip_fraction"``, ``"approx_kl"`` (mean of (ratio - 1) - log ratio).

    Args:
        env: the stochastic env that sampled the transitions (its schedule gives the step densities).
        actor: the policy, with the guidance scale it sampled with.
        config: clipping settings.
    """

    def __init__(self, env: DenoisingEnv, actor: UNetActor, config: DDPOConfig | None = None) -> None:
        super().__init__()
        if not env.schedule.stochastic:
            raise ValueError("DDPO needs stochastic steps with densities: build the env with DDPM or DDIM eta > 0.")
        self.__dict__["env"] = env
        self.actor = actor
        self.config = config or DDPOConfig()

    def actor_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.actor.parameters() if p.requires_grad]

    def critic_parameters(self) -> list[nn.Parameter]:
        """None: the advantages come from the rewards of the collected samples."""
        return []

    def action(self, transitions: TensorDictBase, actor: UNetActor | None = None) -> Tensor:
        """The (guided) eps_hat of ``actor`` (default: the trained one) at the stored states ``[N, C, h, w]``."""
        missing = [key for key in TRANSITION_KEYS if key not in transitions.keys(include_nested=True)]
        if missing:
            raise KeyError(f"{type(self).__name__} needs transition keys {missing} (see TRANSITION_KEYS).")
        return (actor or self.actor)(transitions.select(*ACTOR_IN_KEYS).clone())["action"]

    def surrogate(self, transitions: TensorDictBase, action: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The clipped surrogate loss (0-d) of the current policy's ``action`` and its metrics."""
        log_ratio = self.env.log_prob(transitions, action) - transitions["next", "sample_log_prob"].float()
        ratio = log_ratio.exp()
        limit = self.config.advantage_clip
        advantage = transitions["advantage"].float().clamp(-limit, limit)
        low, high = 1 - self.config.clip_range, 1 + self.config.clip_range
        loss = -torch.minimum(ratio * advantage, ratio.clamp(low, high) * advantage).mean()
        with torch.no_grad():
            metrics = {
                "ratio": ratio.mean(),
                "clip_fraction": ((ratio < low) | (ratio > high)).float().mean(),
                "approx_kl": ((ratio - 1) - log_ratio).mean(),
            }
        return loss, metrics

    def forward(self, transitions: TensorDictBase) -> TensorDict:
        loss, metrics = self.surrogate(transitions, self.action(transitions))
        return TensorDict({"loss_actor": loss, **metrics}, batch_size=[])
