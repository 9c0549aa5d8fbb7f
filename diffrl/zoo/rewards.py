"""Rewards that know the emoji world: how well an image shows the context its prompt asks for."""

from __future__ import annotations

import torch
from torch import Tensor

from diffrl.rewards.base import Reward, RewardInputs
from diffrl.zoo.checker import context_scores
from diffrl.zoo.world import prompt_context


class ContextReward(Reward):
    """The pixel checker's evidence, in ``[0, 1]``, for the context each image's prompt asks for
    (`diffrl.zoo.context_scores`: a softmax over how close the colours around the subject are to each context's).

    Prompt adherence as a black box: classifier-free guidance raises it, so at low guidance a policy-gradient method
    has room to learn it. Filling the frame with the context's colours also raises it, which the zoo CLIP's class
    accuracy of the samples exposes.
    """

    differentiable = False
    requires = frozenset({"images", "prompts"})

    def forward(self, inputs: RewardInputs) -> Tensor:
        scores = [context_scores(image)[prompt_context(prompt)] for image, prompt in zip(inputs.images, inputs.prompts)]
        return torch.tensor(scores, dtype=torch.float32, device=inputs.images.device)
