"""The critic's transitions for deterministic policy gradients (`diffrl.objectives.DPGLoss`): noised states of a
batch's x0, the policy's action and K explorations of it, each stepped by a reference-mode env that scores its reward,
and the replay buffer they join.

`CriticTransitionCollector.loss_input(batch)` is what a trainer hands `DPGLoss` for one actor step: a TensorDict
(batch size ``[]``) with ``"instance"`` (the actor's batch, unchanged), ``"transitions"`` (the freshly collected group,
before the critic has trained on it) and ``"replay"`` (a replay sample, the fresh group included); `sample()` gives
the replay samples of the critic-only updates. Every draw (schedule steps, noise, exploration, replay sampling) comes
from one generator, in that order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl.data import LazyTensorStorage, ReplayBuffer

from diffrl.agents.actor import ACTOR_IN_KEYS, UNetActor
from diffrl.envs.denoising import DenoisingEnv
from diffrl.forward_process import eps_per_x0_hat

DPG_INPUT_KEYS = ("instance", "transitions", "replay")
"""The keys of `CriticTransitionCollector.loss_input`, `DPGLoss`'s input."""


@dataclass(frozen=True)
class CriticTransitionConfig:
    """Attributes (the defaults are `diffrl.objectives.DPGConfig`'s):
    exploration_std: std of the Gaussian exploration noise of the behaviour actions.
    exploration_space: ``"x0"`` (the std is in x0_hat space, latent units) or ``"eps"`` (in eps space).
    exploration_actions: K behaviour actions per noised state, besides the policy's own action mu(s).
    replay_size: capacity of the replay buffer in noised states (each with its K + 1 transitions).
    critic_batch_size: noised states per replay sample.
    next_action: store the policy's next action mu(s') of every transition (a Q critic with the Bellman backup
        reads it; zeros otherwise).
    """

    exploration_std: float
    exploration_space: str
    exploration_actions: int
    replay_size: int
    critic_batch_size: int
    next_action: bool


class CriticTransitionCollector:
    """Collects the critic's transitions with the current policy (see the module docstring).

    Args:
        env: a reference-mode `DenoisingEnv` with a per-step reward: it noises and steps the states and scores each
            step; its batch size is M, the noised states per collection.
        actor: the policy mu, ``UNetActor(unet, guidance_scale=1.0)``.
        config: exploration and replay settings.
        generator: the generator of every draw (the caller owns it: it is checkpointed with the run's others).
    """

    def __init__(self, env: DenoisingEnv, actor: UNetActor, config: CriticTransitionConfig,
                 generator: torch.Generator) -> None:
        self.env, self.actor, self.config, self.rng = env, actor, config, generator
        storage = LazyTensorStorage(config.replay_size, device=env.device)
        self.replay = ReplayBuffer(storage=storage, batch_size=config.critic_batch_size, generator=generator)

    @torch.no_grad()
    def noised_states(self, batch: TensorDictBase, generator: torch.Generator | None = None) -> TensorDictBase:
        """M = ``env.batch_size`` states: the batch's ``"x0"`` cycled, noised to uniformly random schedule steps with
        ``generator`` (default: the collector's), with the policy's action mu(s)."""
        env, rng = self.env, generator or self.rng
        count, size = env.batch_size[0], batch.batch_size[0]
        given = batch.select("x0", "prompt_embeds", "negative_prompt_embeds")[torch.arange(count) % size].detach()
        step = torch.randint(env.config.num_inference_steps, (count,), generator=rng, device=env.device)
        x0 = given["x0"]
        noise = torch.randn(x0.shape, generator=rng, device=x0.device, dtype=x0.dtype)
        given.update({"step": step, "latents": env.schedule.add_noise(x0, noise, env.schedule.timesteps[step])})
        return self.actor(env.reset(given, set_state=True))

    def behaviour_actions(self, state: TensorDictBase, generator: torch.Generator | None = None) -> Tensor:
        """``[B, K + 1, C, h, w]`` (fp32): mu(s) (index 0, detached) and K explorations of it (noise from
        ``generator``, default the collector's). Computed in fp32: near t = 0, 1 - abar_t underflows in half
        precision."""
        mu = state["action"].detach().float()
        k = self.config.exploration_actions
        noise = torch.randn((mu.shape[0], k, *mu.shape[1:]), generator=generator or self.rng, device=mu.device)
        std = torch.full((mu.shape[0],), self.config.exploration_std, device=mu.device)
        if self.config.exploration_space == "x0":
            std = std * eps_per_x0_hat(self.env.schedule.abar(state["timestep"]).to(mu))
        return torch.cat([mu[:, None], mu[:, None] + std.view(-1, 1, 1, 1, 1) * noise], dim=1)

    @torch.no_grad()
    def collect(self, state: TensorDictBase, generator: torch.Generator | None = None) -> TensorDict:
        """One replay entry per noised state: ``[B]`` with its K + 1 transitions on a second dimension.

        Keys: ``"latents"``, ``"timestep"``, ``"x0"`` ``[B, ...]``; ``"prompt_embeds"`` ``[B, 1, D]`` (the mean over
        tokens, all the critic reads); ``"action"`` ``[B, K+1, C, h, w]`` (index 0: mu(s)), ``"reward"`` ``[B, K+1]``,
        ``("next", "latents" | "timestep" | "action" | "done")`` ``[B, K+1, ...]``; the next action mu(s') only with
        ``config.next_action`` (zeros otherwise: nothing reads it).
        """
        state = state.detach()
        actions = self.behaviour_actions(state, generator)
        steps = []
        for k in range(actions.shape[1]):
            step = self.env.step(state.exclude("action").set("action", actions[:, k]))["next"]
            reward = step["reward"].squeeze(-1)  # a non-finite reward is an error of the Reward itself
            if self.config.next_action:
                next_action = self.actor(step.select(*ACTOR_IN_KEYS).clone())["action"]
            else:
                next_action = torch.zeros_like(actions[:, k])
            steps.append({"latents": step["latents"], "timestep": step["timestep"], "action": next_action,
                          "done": step["done"].squeeze(-1), "reward": reward})
        stacked = {key: torch.stack([s[key] for s in steps], dim=1) for key in steps[0]}
        group = TensorDict(
            latents=state["latents"],
            timestep=state["timestep"],
            x0=state["x0"],
            prompt_embeds=state["prompt_embeds"].mean(dim=1, keepdim=True),
            action=actions,
            reward=stacked.pop("reward"),
            batch_size=state.batch_size,
        )
        group["next"] = TensorDict(stacked, batch_size=[*state.batch_size, actions.shape[1]])
        return group

    def loss_input(self, batch: TensorDictBase) -> TensorDict:
        """`DPGLoss`'s input for one actor step on ``batch`` (the actor's instance batch, with ``"x0"`` and the prompt
        embeddings): collect a group from it, add the group to the replay buffer, sample the buffer (keys
        `DPG_INPUT_KEYS`, see the module docstring)."""
        group = self.collect(self.noised_states(batch))
        self.replay.extend(group)
        return TensorDict(instance=batch, transitions=group, replay=self.sample(), batch_size=[])

    def sample(self) -> TensorDict:
        """``critic_batch_size`` replay entries (uniform, with the collector's generator)."""
        return self.replay.sample()

    def state_dict(self) -> dict:
        """The replay buffer's contents and cursor (the trainer checkpoints it; resuming restores it)."""
        return {"replay": self.replay.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Inverse of `state_dict`. The buffer's own copy of the generator is dropped: sampling goes on drawing from
        the collector's generator (restored with the run's other generators), interleaved with the exploration."""
        self.replay.load_state_dict(state["replay"])
        self.replay.set_rng(self.rng)
