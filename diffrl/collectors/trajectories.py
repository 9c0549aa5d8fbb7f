"""Whole denoising trajectories over a prompt dataset, scored at the end, with group-relative advantages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tensordict import TensorDict
from torch import Tensor

from diffrl.agents.actor import UNetActor
from diffrl.envs.denoising import DenoisingEnv
from diffrl.objectives.advantages import group_normalized


@dataclass
class TrajectoryCollectorConfig:
    """Attributes:
    prompts_per_batch: P prompts drawn (without replacement within a batch) from the dataset per collection.
    samples_per_prompt: G trajectories per prompt (the group of GRPO, the per-prompt statistics of DDPO).
    """

    prompts_per_batch: int = 4
    samples_per_prompt: int = 4

    def __post_init__(self) -> None:
        if self.prompts_per_batch < 1 or self.samples_per_prompt < 2:
            raise ValueError(
                f"prompts_per_batch must be >= 1 and samples_per_prompt >= 2 (advantages compare samples of one "
                f"prompt), got {self.prompts_per_batch} and {self.samples_per_prompt}."
            )


class TrajectoryCollector:
    """Sample P x G trajectories x_T -> x_0 with the current policy and score their final samples.

    ``collect()`` returns the transitions ``[P * G * N]`` (N = the env's inference steps), each with the state the
    policy saw, ``"action"``, ``("next", "latents")``, ``("next", "sample_log_prob")``, the trajectory's
    ``"final_reward"`` and ``"advantage"`` (`group_normalized` over the G samples of its prompt) and its
    ``"prompt_id"`` (index into ``prompts``): what `DDPOLoss` and `GRPOLoss` read, in any minibatch order.

    Args:
        env: a sampling-mode env with a stochastic schedule (DDPM or DDIM eta > 0), a terminal reward
            (``reward_mode="terminal"``) and batch size P * G; its generator draws the trajectories' noise.
        actor: the policy, with the guidance scale to sample with.
        prompts: the prompt dataset.
        config: P and G.
        seed: seed of the prompt draws (the collector's own generator).
    """

    def __init__(self, env: DenoisingEnv, actor: UNetActor, prompts: Sequence[str],
                 config: TrajectoryCollectorConfig | None = None, seed: int = 0) -> None:
        config = config or TrajectoryCollectorConfig()
        if env.config.mode != "sampling" or env.config.reward_mode != "terminal" or env.reward_fn is None:
            raise ValueError("TrajectoryCollector needs a sampling-mode env with a terminal reward "
                             "(DenoisingConfig(mode='sampling', reward_mode='terminal'), reward=...).")
        if not env.schedule.stochastic:
            raise ValueError("TrajectoryCollector records log-probabilities: use DDPM or DDIM with eta > 0.")
        batch = config.prompts_per_batch * config.samples_per_prompt
        if env.batch_size[0] != batch:
            raise ValueError(f"env batch size {env.batch_size[0]} != prompts_per_batch x samples_per_prompt = {batch}.")
        if len(prompts) < config.prompts_per_batch:
            raise ValueError(f"{len(prompts)} prompts cannot fill prompts_per_batch={config.prompts_per_batch}.")
        self.env, self.actor, self.prompts, self.config = env, actor, list(prompts), config
        self.rng = torch.Generator().manual_seed(seed)

    def draw_prompts(self) -> Tensor:
        """Draw the next P prompts, G samples each, and set them on the env (its prompt embeddings ``[P * G, ...]``);
        returns their ``prompt_id`` ``[P * G]``. `collect` starts with it; DRaFT samples with gradients from it."""
        p, g = self.config.prompts_per_batch, self.config.samples_per_prompt
        chosen = torch.randperm(len(self.prompts), generator=self.rng)[:p]
        prompt_id = chosen.repeat_interleave(g)
        self.env.set_prompts([self.prompts[i] for i in prompt_id.tolist()])
        return prompt_id

    @torch.no_grad()
    def collect(self) -> TensorDict:
        """One batch of transitions ``[P * G * N]`` (see the class docstring)."""
        prompt_id = self.draw_prompts()
        rollout = self.env.rollout(self.env.config.num_inference_steps, policy=self.actor)  # [P * G, N]
        final = rollout[:, -1]["next", "reward"].squeeze(-1).float()
        advantage = group_normalized(final, prompt_id.to(final.device))
        steps = rollout.shape[1]
        rollout["final_reward"] = final[:, None].expand(-1, steps)
        rollout["advantage"] = advantage[:, None].expand(-1, steps)
        rollout["prompt_id"] = prompt_id.to(final.device)[:, None].expand(-1, steps)
        return rollout.reshape(-1)

    def state_dict(self) -> dict:
        return {"rng": self.rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.set_state(state["rng"])
