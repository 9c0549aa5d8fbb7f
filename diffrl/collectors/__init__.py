"""Collectors: the way data reaches a loss, as a TensorDict of transitions."""

from diffrl.collectors.trajectories import TrajectoryCollector, TrajectoryCollectorConfig

__all__ = ["TrajectoryCollector", "TrajectoryCollectorConfig"]
