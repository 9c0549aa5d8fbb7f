"""GRPO for diffusion (as in Flow-GRPO / DanceGRPO): group-relative advantages, clipped ratios, a KL anchor."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

from diffrl.agents.actor import UNetActor
from diffrl.envs.denoising import DenoisingEnv
from diffrl.objectives.ddpo import DDPOConfig, DDPOLoss


@dataclass
class GRPOConfig(DDPOConfig):
    """Attributes (besides `DDPOConfig`'s):
    kl_weight: beta, the weight of the mean per-step KL(pi_theta || pi_ref) to the frozen reference policy
        (0: no anchor, no reference forward pass).
    """

    kl_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.kl_weight >= 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}.")


class GRPOLoss(DDPOLoss):
    """`DDPOLoss`'s clipped surrogate with group-relative advantages and ``kl_weight * KL(pi_theta || pi_ref)``.

    The advantages come with the transitions: `diffrl.objectives.advantages.group_normalized` over the G samples of
    each prompt (the group's mean reward is the baseline, no critic). Both policies step with the same std, so the
    per-step KL is ``||mean_theta - mean_ref||^2 / (2 std^2)`` summed over the latent (`StepOutput.kl`; 0 for
    deterministic steps).

    Logged besides DDPO's: ``"kl"`` (mean per-step KL to the reference policy, when ``kl_weight > 0``).

    Args:
        env, actor: as `DDPOLoss`.
        config: clipping and KL settings.
        reference_actor: the frozen reference policy (e.g. the base model, or the LoRA model with adapters disabled),
            required when ``kl_weight > 0``.
    """

    def __init__(self, env: DenoisingEnv, actor: UNetActor, config: GRPOConfig | None = None, *,
                 reference_actor: UNetActor | None = None) -> None:
        config = config or GRPOConfig()
        super().__init__(env, actor, config)
        if config.kl_weight > 0 and reference_actor is None:
            raise ValueError("GRPOConfig.kl_weight > 0 needs the frozen reference policy: pass reference_actor=.")
        self.__dict__["reference_actor"] = reference_actor  # frozen, not trained: kept out of the parameters

    def kl(self, transitions: TensorDictBase, action: Tensor) -> Tensor:
        """Per-step KL(pi_theta || pi_ref) ``[N]`` (float32) for the current ``action``."""
        with torch.no_grad():
            reference = self.action(transitions, self.reference_actor)
        step, latents = transitions["step"], transitions["latents"]
        ours = self.env.schedule.distribution(action, step, latents)
        return ours.kl(self.env.schedule.distribution(reference, step, latents))

    def forward(self, transitions: TensorDictBase) -> TensorDict:
        action = self.action(transitions)
        loss, metrics = self.surrogate(transitions, action)
        if self.config.kl_weight > 0:
            kl = self.kl(transitions, action).mean()
            loss = loss + self.config.kl_weight * kl
            metrics["kl"] = kl.detach()
        return TensorDict({"loss_actor": loss, **metrics}, batch_size=[])
