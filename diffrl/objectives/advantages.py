"""Advantages of policy-gradient methods from per-sample rewards (DDPO, GRPO)."""

from __future__ import annotations

import torch
from torch import Tensor


def group_normalized(rewards: Tensor, groups: Tensor, eps: float = 1e-6) -> Tensor:
    """(r - mean_g) / (std_g + eps) within each group ``[N]`` -> ``[N]`` (float32).

    ``groups`` ``[N]`` (int64) names each sample's group: its prompt, for DDPO's per-prompt normalisation and GRPO's
    group-relative advantages (G samples of one prompt). The std is the population std of the group; a group of one
    sample gets advantage 0 (nothing to compare it with).
    """
    if rewards.ndim != 1 or groups.shape != rewards.shape:
        raise ValueError(f"rewards and groups must both be [N], got {tuple(rewards.shape)} and {tuple(groups.shape)}.")
    if not torch.isfinite(rewards).all():
        bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
        raise ValueError(f"rewards are NaN or inf at samples {bad}; check the reward function.")
    rewards = rewards.float()
    ids, index = torch.unique(groups, return_inverse=True)
    count = torch.zeros(len(ids), device=rewards.device).index_add_(0, index, torch.ones_like(rewards))
    mean = torch.zeros(len(ids), device=rewards.device).index_add_(0, index, rewards) / count
    centred = rewards - mean[index]
    var = torch.zeros(len(ids), device=rewards.device).index_add_(0, index, centred**2) / count
    return centred / (var.sqrt()[index] + eps)
