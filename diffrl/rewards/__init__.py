"""Rewards: one interface for differentiable and black-box scores, composable as ``0.5 * dino + lookforward``."""

from diffrl.forward_process import look_forward
from diffrl.rewards.base import Reward, RewardInputs, WeightedSum, check_reward
from diffrl.rewards.callable import CallableReward, images_to_pil, images_to_uint8
from diffrl.rewards.lookforward import LookForwardReward
from diffrl.rewards.scores import ColorTargetReward, ContrastReward, JPEGCompressibilityReward, NoiseReward
from diffrl.rewards.similarity import CLIPImageReward, CLIPTextReward, DINOReward, make_decoder, strip_identifier

__all__ = [
    "CLIPImageReward",
    "CLIPTextReward",
    "CallableReward",
    "ColorTargetReward",
    "ContrastReward",
    "DINOReward",
    "JPEGCompressibilityReward",
    "LookForwardReward",
    "NoiseReward",
    "Reward",
    "RewardInputs",
    "WeightedSum",
    "check_reward",
    "images_to_pil",
    "images_to_uint8",
    "look_forward",
    "make_decoder",
    "strip_identifier",
]
