"""Collectors: the way data reaches a loss, as a TensorDict (personalisation batches, trajectories, DPG's critic
transitions and replay)."""

from diffrl.collectors.critic import DPG_INPUT_KEYS, CriticTransitionCollector, CriticTransitionConfig
from diffrl.collectors.personalisation import PersonalisationBatchConfig, PersonalisationCollector
from diffrl.collectors.trajectories import TrajectoryCollector, TrajectoryCollectorConfig

__all__ = ["DPG_INPUT_KEYS", "CriticTransitionCollector", "CriticTransitionConfig", "PersonalisationBatchConfig",
           "PersonalisationCollector", "TrajectoryCollector", "TrajectoryCollectorConfig"]
