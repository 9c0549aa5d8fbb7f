"""Training: dataclass configs, data, the training loop and its two trainers (personalisation, a reward over
prompts), atomic checkpoints and run folders.

Names are imported lazily so that ``diffrl.training.checkpoint`` and ``diffrl --help`` stay light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build": ("TrainingContext", "build_loss", "build_reward", "make_env", "reference_env"),
    "checkpoint": ("Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint", "verify_checkpoint"),
    "config": ("ConfigError", "TrainConfig"),
    "data": ("ReferenceImages", "check_identifier", "ensure_class_images"),
    "export": ("save_model",),
    "history": ("read_history",),
    "lock": ("RunDirError", "RunLockedError"),
    "loop": ("TrainResult", "TrainingLoop"),
    "methods": ("METHODS", "Method", "get_method", "register_method"),
    "policy_gradient": ("PolicyGradientConfig", "PolicyGradientTrainer", "read_prompts"),
    "progress": ("Progress", "progress_curve"),
    "rundir": ("ConfigMismatchError",),
    "trainer": ("Trainer", "train"),
    "updates": ("LossUpdater", "NonFiniteLossError"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'diffrl.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f"diffrl.training.{_WHERE[name]}"), name)
