"""Denoising as reinforcement-learning environments (TorchRL and gymnasium)."""

from diffrl.envs.denoising import DenoisingConfig, DenoisingEnv
from diffrl.envs.scheduling import BatchedScheduler

__all__ = ["BatchedScheduler", "DenoisingConfig", "DenoisingEnv"]
