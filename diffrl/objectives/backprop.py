"""Direct reward backpropagation through the last K sampling steps (DRaFT-K)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from diffrl.agents.actor import UNetActor
from diffrl.envs.denoising import DenoisingEnv
from diffrl.objectives.base import INSTANCE_KEYS, PROMPT_KEYS, DiffusionLoss, check_weight, metric


@dataclass
class RewardBackpropConfig:
    """Attributes:
    k: number of final sampling steps differentiated through (1 <= k <= the env's num_inference_steps).
    reward_scale: multiplies the terminal reward in the loss.
    eps_weight: weight of the DreamBooth eps-MSE on the instance batch (needs a ``reference_env``); 0 disables it.
    prior_weight: weight of the prior-preservation eps-MSE (needs a ``reference_env`` and ``"prior"`` in the batch).
    """

    k: int = 1
    reward_scale: float = 1.0
    eps_weight: float = 0.0
    prior_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k (steps differentiated through) must be >= 1, got {self.k}.")
        check_weight("reward_scale", self.reward_scale)
        check_weight("eps_weight", self.eps_weight)
        check_weight("prior_weight", self.prior_weight)


class RewardBackpropLoss(DiffusionLoss):
    """``loss_actor = -reward_scale * mean R(x_0) [+ eps_weight * eps_mse + prior_weight * prior_mse]``.

    Samples x_T -> x_0 with the env (sampling mode, terminal reward) from the batch's instance prompt embeddings; the
    first N - K steps run under ``no_grad``, the last K with gradients, so the reward's gradient reaches the U-Net
    (and the prompt embeddings) only through the last K actor calls. The reward must be differentiable.

    Logged: ``"reward"`` (mean terminal reward), ``"eps_mse"`` / ``"prior_mse"`` when their weights are > 0.

    Args:
        env: a sampling-mode `DenoisingEnv` with ``reward_mode="terminal"`` and a differentiable reward.
        actor: the policy (classifier-free guidance as configured in the actor).
        config: hyperparameters.
        reference_env: a reference-mode env for the eps-MSE / prior terms (required when their weights are > 0).
        text_encoder: the text encoder when it is trained too.
    """

    def __init__(
        self,
        env: DenoisingEnv,
        actor: UNetActor,
        config: RewardBackpropConfig | None = None,
        *,
        reference_env: DenoisingEnv | None = None,
        text_encoder: nn.Module | None = None,
    ) -> None:
        config = config or RewardBackpropConfig()
        if env.config.mode != "sampling":
            raise ValueError(f"RewardBackpropLoss samples from x_T: the env must be in sampling mode, got {env.config.mode!r}.")
        if env.config.reward_mode != "terminal":
            raise ValueError(f"RewardBackpropLoss scores the final sample: use reward_mode='terminal', got {env.config.reward_mode!r}.")
        if env.reward_fn is None:
            raise ValueError("RewardBackpropLoss needs a reward: build the env with `reward=...`.")
        if not env.reward_fn.differentiable:
            raise ValueError(
                f"Reward '{env.reward_fn.name}' is not differentiable: RewardBackpropLoss backpropagates through it. "
                "Use DPGLoss (a critic supplies the gradients) for black-box rewards."
            )
        steps = env.config.num_inference_steps
        if config.k > steps:
            raise ValueError(f"k must be in [1, num_inference_steps={steps}], got {config.k}.")
        if (config.eps_weight > 0 or config.prior_weight > 0) and reference_env is None:
            raise ValueError("eps_weight / prior_weight > 0 need a reference-mode `reference_env` to noise x0.")
        super().__init__(env, actor, reference_env=reference_env, text_encoder=text_encoder)
        self.config = config

    def forward(self, batch: TensorDictBase) -> TensorDict:
        """``batch``: the prompt embeddings to sample from (``"prompt_embeds"``, ``"negative_prompt_embeds"``), and
        the instance images ``"x0"`` when the eps-MSE or prior terms are on."""
        reconstructs = self.config.eps_weight > 0 or self.config.prior_weight > 0
        self.check_batch(batch, INSTANCE_KEYS if reconstructs else PROMPT_KEYS)
        start = TensorDict(
            prompt_embeds=batch["prompt_embeds"], negative_prompt_embeds=batch["negative_prompt_embeds"], batch_size=batch.batch_size
        )
        state = self.env.reset(start, set_state=True)
        steps = self.env.config.num_inference_steps
        for index in range(steps):
            with torch.set_grad_enabled(torch.is_grad_enabled() and index >= steps - self.config.k):
                state = self.env.step(self.actor(state))["next"]
        reward = state["reward"].squeeze(-1)
        if torch.is_grad_enabled() and self.actor_parameters() and not reward.requires_grad:
            raise RuntimeError(f"Reward '{self.env.reward_fn.name}' returned no gradient although it claims to be differentiable.")
        loss = -self.config.reward_scale * reward.mean()
        out = {"reward": metric(reward)}
        if self.config.eps_weight > 0:
            noised = self.noised_state(batch)
            eps_mse = self.eps_mse(self.regression_actor(noised))
            loss = loss + self.config.eps_weight * eps_mse
            out["eps_mse"] = metric(eps_mse)
        if self.config.prior_weight > 0:
            loss = self.add_prior(loss, batch, out, self.config.prior_weight)
        out["loss_actor"] = loss
        return TensorDict(out, batch_size=[])
