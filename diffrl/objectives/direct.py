"""DreamBooth plus the exact, differentiable reward of the policy's own look-forward: DPG with a perfect critic."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor, nn

from diffrl.agents.actor import UNetActor
from diffrl.envs.denoising import DenoisingEnv
from diffrl.objectives.base import DiffusionLoss, check_reference_env, check_unguided, check_weight, metric
from diffrl.objectives.dpg import DPGConfig
from diffrl.objectives.weighting import ACTOR_WEIGHTINGS, actor_weight
from diffrl.rewards import RewardInputs


@dataclass
class DirectRewardConfig:
    """Attributes:
    lam: lambda, the weight of ``-mean w(t) r(s, mu(s))`` in the actor loss (0: exactly DreamBooth).
    actor_weighting: w(t), one of `ACTOR_WEIGHTINGS` (see `diffrl.objectives.weighting.actor_weight`).
    gamma: the discount of the ``"gamma_t"`` weighting, w = gamma ** t (t the training timestep); DPG's default.
    prior_weight: weight of the prior-preservation eps-MSE (used when the batch has ``"prior"``).
    """

    lam: float = 1.0
    actor_weighting: str = "gamma_t"
    gamma: float = DPGConfig.gamma
    prior_weight: float = 1.0

    def __post_init__(self) -> None:
        check_weight("lam", self.lam)
        check_weight("prior_weight", self.prior_weight)
        if self.actor_weighting not in ACTOR_WEIGHTINGS:
            raise ValueError(f"actor_weighting must be one of {list(ACTOR_WEIGHTINGS)}, got {self.actor_weighting!r}.")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}.")


class DirectRewardLoss(DiffusionLoss):
    """``loss_actor = eps_mse + prior_weight * prior_mse - lam * mean_b w(t_b) r(s_b, mu(s_b))``, no critic.

    s is the noised reference state drawn exactly as `DreamBoothLoss` draws it (``noised_state`` on the reference
    env; the loss draws nothing else), so for one env seed both losses see the same t, eps and images, and with
    ``lam = 0`` the U-Net gradient is DreamBooth's. mu(s) is the U-Net's unguided action, with gradients; r is the
    env's reward on ``RewardInputs(x_t, t, mu(s), abar_t, x0, prompts, decode=env.decode)``: its gradient flows
    through x0_hat, the VAE decode and the reward's encoder into the U-Net. It is the actor term of DPG with the
    critic replaced by the reward itself (``Q = r``), the ceiling of what a perfect one-step critic could add.

    Output keys: ``"loss_actor"``; logged ``"eps_mse"``, ``"reward_policy"`` (mean r(s, mu(s)), unweighted) and,
    with a prior batch, ``"prior_mse"``.

    Args:
        env: a reference-mode `DenoisingEnv` whose reward is differentiable (e.g. `DINOReward`,
            `LookForwardReward`); its ``reward_mode`` is not used.
        actor: ``UNetActor(unet, guidance_scale=1.0)``.
        config: hyperparameters.
        text_encoder: the text encoder when it is trained too.
    """

    def __init__(
        self,
        env: DenoisingEnv,
        actor: UNetActor,
        config: DirectRewardConfig | None = None,
        *,
        text_encoder: nn.Module | None = None,
    ) -> None:
        check_reference_env(env, "DirectRewardLoss")
        check_unguided(actor, "DirectRewardLoss")
        if env.reward_fn is None:
            raise ValueError("DirectRewardLoss backpropagates the env's reward: build the env with `reward=...`.")
        if not env.reward_fn.differentiable:
            raise ValueError(
                f"Reward '{env.reward_fn.name}' is not differentiable: DirectRewardLoss backpropagates through it. "
                "Use DPGLoss (method 'dpg': a critic supplies the gradients) for black-box rewards."
            )
        super().__init__(env, actor, text_encoder=text_encoder)
        self.config = config or DirectRewardConfig()

    def policy_reward(self, state: TensorDictBase) -> Tensor:
        """r(s, mu(s)) ``[B]`` of a state carrying the policy's ``"action"`` (differentiable w.r.t. the action)."""
        timestep = state["timestep"]
        inputs = RewardInputs(
            latents=state["latents"],
            timesteps=timestep,
            action=state["action"],
            alphas_cumprod=self.env.schedule.abar(timestep),
            x0=state["x0"],
            prompts=self.env.prompts,
            decode=self.env.decode,
        )
        return self.env.reward_fn(inputs)

    def forward(self, batch: TensorDictBase) -> TensorDict:
        self.check_batch(batch)
        state = self.actor(self.noised_state(batch))
        eps_mse = self.eps_mse(state)
        differentiate = torch.is_grad_enabled() and self.config.lam > 0
        with torch.set_grad_enabled(differentiate):  # lam = 0: the reward is only logged, no graph is kept
            reward = self.policy_reward(state)
        if differentiate and self.actor_parameters() and not reward.requires_grad:
            name = self.env.reward_fn.name
            raise RuntimeError(f"Reward '{name}' returned no gradient although it claims to be differentiable.")
        timestep = state["timestep"]
        abar = self.env.schedule.abar(timestep)
        weight = actor_weight(self.config.actor_weighting, timestep, abar, self.config.gamma)
        loss_actor = eps_mse - self.config.lam * (weight.to(reward) * reward).mean()
        out = {"eps_mse": metric(eps_mse), "reward_policy": metric(reward)}
        out["loss_actor"] = self.add_prior(loss_actor, batch, out, self.config.prior_weight)
        return TensorDict(out, batch_size=[])
