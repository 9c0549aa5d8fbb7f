"""Prompt tasks on the zoo for policy-gradient methods: train and held-out prompts, and a held-out evaluator.

A task fixes which prompts a method trains on and which it never sees; `sample_heldout` (and its means,
`score_heldout`) measures, on the held-out prompts with fixed seeds, the task's reward (what the method optimises)
and the zoo CLIP's zero-shot class accuracy (whether the images still show what was asked for: a drop exposes reward
hacking).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diffrl.zoo.world import CLASSES, CONTEXTS, caption


@dataclass(frozen=True)
class PromptTask:
    """Attributes:
    reward: a name in `diffrl.training.policy_gradient.PG_REWARDS`.
    train_prompts: what the method samples during training.
    heldout_prompts: never trained on; ``heldout_classes[i]`` is the class noun of ``heldout_prompts[i]``.
    """

    reward: str
    train_prompts: tuple[str, ...]
    heldout_prompts: tuple[str, ...]
    heldout_classes: tuple[str, ...]


def class_split_task(reward: str) -> PromptTask:
    """"a <class> <context>" over the zoo's non-plain contexts: even classes train, odd classes are held out."""
    contexts = [name for name in CONTEXTS if name != "plain"]
    heldout = [(noun, caption(noun, context)) for noun in CLASSES[1::2] for context in contexts]
    return PromptTask(
        reward=reward,
        train_prompts=tuple(caption(noun, context) for noun in CLASSES[::2] for context in contexts),
        heldout_prompts=tuple(prompt for _, prompt in heldout),
        heldout_classes=tuple(noun for noun, _ in heldout),
    )


@dataclass(frozen=True)
class HeldoutSamples:
    """Attributes:
    images: the decoded samples ``[N, 3, H, W]`` in ``[0, 1]``.
    reward: the task reward of each ``[N]``.
    class_correct: whether the zoo CLIP names each sample's class ``[N]`` (bool).
    """

    images: torch.Tensor
    reward: torch.Tensor
    class_correct: torch.Tensor

    def summary(self) -> dict[str, float]:
        """``{"heldout_reward", "heldout_class_accuracy"}``: the means over the samples."""
        return {"heldout_reward": float(self.reward.mean()),
                "heldout_class_accuracy": float(self.class_correct.float().mean())}


@torch.no_grad()
def sample_heldout(components, task: PromptTask, reward: nn.Module, clip, *, images: int = 32, steps: int = 10,
                   guidance_scale: float = 5.0, seed: int = 0) -> HeldoutSamples:
    """``images`` held-out samples (deterministic DDIM, fixed prompts and seeds: the same draws for every model
    sampled with the same arguments), with their reward and whether the zoo CLIP names their class.

    Args:
        components: the model (`diffrl.models.SDComponents`).
        task: the prompts.
        reward: the task's reward module (terminal, on the decoded images).
        clip: the zoo's `diffrl.models.CLIPEncoder`.
    """
    from diffrl.agents import UNetActor
    from diffrl.envs import DenoisingConfig, DenoisingEnv

    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}.")
    order = torch.randperm(len(task.heldout_prompts), generator=torch.Generator().manual_seed(123)).tolist()
    chosen = [order[i % len(order)] for i in range(images)]
    env = DenoisingEnv(components, [task.heldout_prompts[i] for i in chosen], batch_size=images, reward=reward,
                       config=DenoisingConfig(num_inference_steps=steps, reward_mode="terminal"), seed=seed)
    final = env.rollout(steps, policy=UNetActor(components.unet, guidance_scale=guidance_scale))[:, -1]
    decoded = env.decode(final["next", "latents"]).float()
    text = nn.functional.normalize(clip.encode_texts([caption(noun) for noun in CLASSES]), dim=-1)
    predicted = (nn.functional.normalize(clip.encode_images(decoded), dim=-1) @ text.T).argmax(1).tolist()
    correct = torch.tensor([CLASSES[p] == task.heldout_classes[i] for p, i in zip(predicted, chosen)])
    return HeldoutSamples(images=decoded.cpu(), reward=final["next", "reward"].squeeze(-1).float().cpu(),
                          class_correct=correct)


def score_heldout(components, task: PromptTask, reward: nn.Module, clip, **kwargs) -> dict[str, float]:
    """Mean reward and zoo-CLIP class accuracy of `sample_heldout` (same arguments)."""
    return sample_heldout(components, task, reward, clip, **kwargs).summary()
