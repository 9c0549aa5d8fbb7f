"""Deterministic policy gradients for personalisation (arXiv 2407.06642): a critic Q_phi and a DreamBooth actor."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from torch import Tensor, nn
from torchrl.objectives import SoftUpdate

from diffrl.agents.actor import ACTOR_IN_KEYS, UNetActor
from diffrl.agents.critic import QCritic
from diffrl.envs.denoising import DenoisingEnv
from diffrl.objectives.base import DiffusionLoss, check_reference_env, check_unguided, check_weight, metric
from diffrl.rewards import look_forward


@dataclass
class DPGConfig:
    """Attributes:
    gamma: discount in ``[0, 1]`` of the Bellman target (per inference step).
    lam: lambda, the weight of ``-Q(s, mu(s))`` in the actor loss.
    bootstrap: ``True``: y = r + gamma (1 - done) Q_target(s', mu(s')); ``False``: y = r, the one-step regressor of
        the authors' released code.
    eps_weight: weight of the DreamBooth eps-MSE on the instance batch (the paper uses 1).
    prior_weight: weight of the prior-preservation eps-MSE (used when the batch has ``"prior"``).
    exploration_std: std of the Gaussian noise added to the action of the critic's transition (DDPG's behaviour policy
        a + N(0, std^2), drawn from the env's generator). Without it the critic only sees on-policy actions and its
        action-gradient is not identified (except through look-forward features aligned with the reward).
    tau: Polyak rate of the target critic, ``target <- (1 - tau) target + tau critic`` per ``target_updater.step()``.
    reward_scale: multiplies the env's reward in the critic target.
    """

    gamma: float = 0.9986
    lam: float = 1.0
    bootstrap: bool = True
    eps_weight: float = 1.0
    prior_weight: float = 1.0
    exploration_std: float = 0.1
    tau: float = 0.005
    reward_scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}.")
        check_weight("lam", self.lam)
        check_weight("eps_weight", self.eps_weight)
        check_weight("prior_weight", self.prior_weight)
        check_weight("exploration_std", self.exploration_std)
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau (the soft target update rate) must be in (0, 1], got {self.tau}.")
        check_weight("reward_scale", self.reward_scale)


class DPGLoss(DiffusionLoss):
    """Actor-critic loss of deterministic policy gradients on noised reference latents.

    A transition: s_t = x0 noised by the reference env to a random step; mu(s_t) the U-Net's action (with gradients);
    b = mu(s_t).detach() + exploration noise the behaviour action; s' = the env's scheduler step from s_t with b and
    r = r(s_t, b) its per-step reward (both computed under ``no_grad``: the next state and the reward are data for the
    critic, not a path for actor gradients).

    - ``loss_critic = mean (Q(s, b) - y)^2`` with ``y = reward_scale * r + gamma (1 - done) Q_target(s', mu(s'))``
      where mu(s') is the same actor under ``no_grad`` (no U-Net copy) and Q_target uses the target critic params.
    - ``loss_actor = -lam * mean Q(s, mu(s)) + eps_weight * mse(a, eps) + prior_weight * prior_mse``, the critic read
      with detached parameters so that only the actor moves.

    Logged: ``"reward"`` (mean r of the behaviour action), ``"q_value"`` (mean Q(s, b)), ``"td_target"`` (mean y),
    ``"td_error"`` (mean |Q(s, b) - y|), ``"eps_mse"`` and, with a prior batch, ``"prior_mse"``.

    Args:
        env: a reference-mode `DenoisingEnv` with a per-step reward (typically ``num_inference_steps=999``, the t -> t-1 chain of SD v1).
        actor: ``UNetActor(unet, guidance_scale=1.0)``.
        critic: the `QCritic`; its parameters are the trainable critic parameters, a target copy is created.
        config: hyperparameters.
        text_encoder: the text encoder when it is trained too.
    """

    critic: QCritic
    critic_params: TensorDictParams
    target_critic_params: TensorDictParams

    def __init__(
        self,
        env: DenoisingEnv,
        actor: UNetActor,
        critic: QCritic,
        config: DPGConfig | None = None,
        *,
        text_encoder: nn.Module | None = None,
    ) -> None:
        check_reference_env(env, "DPGLoss")
        check_unguided(actor, "DPGLoss")
        if env.reward_fn is None:
            raise ValueError("DPGLoss learns a critic of the env's reward: build the env with `reward=...`.")
        if env.config.reward_mode != "per_step":
            raise ValueError(f"DPGLoss needs per-step rewards r(s_t, a): got reward_mode={env.config.reward_mode!r}.")
        if critic.latent_shape != tuple(env.latent_shape):
            raise ValueError(f"critic latent_shape {critic.latent_shape} != env latent shape {tuple(env.latent_shape)}.")
        super().__init__(env, actor, text_encoder=text_encoder)
        self.config = config or DPGConfig()
        self.convert_to_functional(critic, "critic", create_target_params=True)
        self.target_updater = SoftUpdate(self, tau=self.config.tau)

    def critic_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.critic_params.values(True, True) if isinstance(p, nn.Parameter) and p.requires_grad]

    # ---------------------------------------------------------------- pieces
    def q_value(self, params: TensorDictBase, state: TensorDictBase, action: Tensor) -> Tensor:
        """Q(s, a) ``[B]`` with the given critic parameters (``critic_params``, detached, or target)."""
        latents, timestep = state["latents"], state["timestep"]
        x0_hat = None
        if self.critic.lookforward_features:
            x0_hat = look_forward(latents, action, self.env.schedule.abar(timestep))
        with params.to_module(self.critic):
            return self.critic(latents, timestep, state["prompt_embeds"], action, x0_hat=x0_hat, x0=state.get("x0", None))

    def explore(self, action: Tensor) -> Tensor:
        """The behaviour action ``a.detach() + exploration_std * N(0, I)`` (noise from the env's generator)."""
        action = action.detach()
        if self.config.exploration_std == 0:
            return action
        noise = torch.randn(action.shape, generator=self.env.rng, device=action.device, dtype=action.dtype)
        return action + self.config.exploration_std * noise

    def transition(self, state: TensorDictBase) -> TensorDictBase:
        """The env's step from a state with ``"action"``, as data: a detached copy of ``state`` with ``"next"``."""
        with torch.no_grad():
            return self.env.step(state.detach())

    def td_target(self, transition: TensorDictBase) -> Tensor:
        """y = reward_scale * r + gamma * (1 - done) * Q_target(s', mu(s')) ``[B]`` (r only without bootstrap); no grad."""
        next_state = transition["next"]
        with torch.no_grad():
            reward = self.config.reward_scale * next_state["reward"].squeeze(-1)
            if not self.config.bootstrap:
                return reward
            next_state = next_state.select(*ACTOR_IN_KEYS, "x0").detach()
            next_action = self.actor(next_state)["action"]
            next_q = self.q_value(self.target_critic_params, next_state, next_action)
            not_done = (~transition["next", "done"].squeeze(-1)).to(next_q)
            return reward + self.config.gamma * not_done * next_q

    # --------------------------------------------------------------- forward
    def forward(self, batch: TensorDictBase) -> TensorDict:
        self.check_batch(batch)
        state = self.actor(self.noised_state(batch["x0"], batch["prompt_embeds"], batch["negative_prompt_embeds"]))
        action = state["action"]
        transition = self.transition(state.exclude("action").set("action", self.explore(action)))
        target = self.td_target(transition)

        q_pred = self.q_value(self.critic_params, transition, transition["action"])
        loss_critic = nn.functional.mse_loss(q_pred, target)

        q_actor = self.q_value(self.critic_params.detach(), transition, action)
        eps_mse = self.eps_mse(state)
        loss_actor = -self.config.lam * q_actor.mean() + self.config.eps_weight * eps_mse
        out = {
            "loss_critic": loss_critic,
            "reward": metric(transition["next", "reward"]),
            "q_value": metric(q_pred),
            "td_target": metric(target),
            "td_error": metric((q_pred - target).abs()),
            "eps_mse": metric(eps_mse),
        }
        prior_mse = self.prior_mse(batch)
        if prior_mse is not None:
            loss_actor = loss_actor + self.config.prior_weight * prior_mse
            out["prior_mse"] = metric(prior_mse)
        out["loss_actor"] = loss_actor
        return TensorDict(out, batch_size=[])
