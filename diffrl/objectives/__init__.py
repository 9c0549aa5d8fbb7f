"""Fine-tuning objectives as TorchRL loss modules (the trainer sums their ``"loss_*"`` outputs)."""

from diffrl.objectives.backprop import RewardBackpropConfig, RewardBackpropLoss
from diffrl.objectives.base import DiffusionLoss
from diffrl.objectives.dpg import DPGConfig, DPGLoss
from diffrl.objectives.dreambooth import DreamBoothConfig, DreamBoothLoss

__all__ = [
    "DPGConfig",
    "DPGLoss",
    "DiffusionLoss",
    "DreamBoothConfig",
    "DreamBoothLoss",
    "RewardBackpropConfig",
    "RewardBackpropLoss",
]
