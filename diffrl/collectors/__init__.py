"""Collectors: the way data reaches a loss, as a TensorDict (personalisation batches, trajectories)."""

from diffrl.collectors.personalisation import PersonalisationBatchConfig, PersonalisationCollector
from diffrl.collectors.trajectories import TrajectoryCollector, TrajectoryCollectorConfig

__all__ = ["PersonalisationBatchConfig", "PersonalisationCollector", "TrajectoryCollector", "TrajectoryCollectorConfig"]
