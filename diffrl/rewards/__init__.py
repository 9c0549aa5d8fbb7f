"""Rewards: one interface for differentiable and black-box scores."""

from diffrl.rewards.base import Reward, RewardInputs, check_reward, look_forward

__all__ = ["Reward", "RewardInputs", "check_reward", "look_forward"]
