"""Fine-tuning objectives as TorchRL loss modules (the trainer sums their ``"loss_*"`` outputs)."""

from diffrl.objectives.advantages import group_normalized
from diffrl.objectives.backprop import RewardBackpropConfig, RewardBackpropLoss
from diffrl.objectives.base import DiffusionLoss
from diffrl.objectives.ddpo import DDPOConfig, DDPOLoss
from diffrl.objectives.direct import DirectRewardConfig, DirectRewardLoss
from diffrl.objectives.dpg import DPGConfig, DPGLoss
from diffrl.objectives.dreambooth import DreamBoothConfig, DreamBoothLoss
from diffrl.objectives.grpo import GRPOConfig, GRPOLoss
from diffrl.objectives.weighting import ACTOR_WEIGHTINGS, actor_weight

__all__ = [
    "ACTOR_WEIGHTINGS",
    "DDPOConfig",
    "DDPOLoss",
    "DPGConfig",
    "DPGLoss",
    "DiffusionLoss",
    "DirectRewardConfig",
    "DirectRewardLoss",
    "DreamBoothConfig",
    "DreamBoothLoss",
    "GRPOConfig",
    "GRPOLoss",
    "RewardBackpropConfig",
    "RewardBackpropLoss",
    "actor_weight",
    "group_normalized",
]
