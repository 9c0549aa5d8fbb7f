"""A progress curve: score the model at fixed steps of its run, beside the per-step training logs.

A `Progress` passed to `Trainer.train` calls ``score(components, step)`` on the main process at step 0 (the model
before training, when the run starts afresh), every ``every`` steps and at the last step. The scores go into the run's
history (`diffrl.training.history`) under ``"progress/<name>"`` keys and into TensorBoard, so a curve survives
interruptions: a resumed run keeps the points up to its checkpoint and adds the rest. The scoring runs under a forked
RNG state: a run with progress draws exactly the same random numbers as one without.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from diffrl.models import SDComponents

PREFIX = "progress/"
ProgressScore = Callable[[SDComponents, int], Mapping[str, float]]


@dataclass
class Progress:
    """Attributes:
    score: ``score(components, step) -> {name: value}``, e.g. `diffrl.evaluation.SubjectProgress`.
    every: score every this many optimizer steps (and at the last one).
    """

    score: ProgressScore
    every: int

    def __post_init__(self) -> None:
        if not (isinstance(self.every, int) and self.every >= 1):
            raise ValueError(f"Progress.every must be an integer >= 1, got {self.every!r}.")

    def due(self, step: int, max_steps: int) -> bool:
        return step % self.every == 0 or step == max_steps

    def measure(self, components: SDComponents, step: int) -> dict[str, float]:
        """``{"progress/<name>": value}`` of the model at ``step``, the global and CUDA RNG states left untouched."""
        devices = [components.device] if components.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            scores = self.score(components, step)
        return {f"{PREFIX}{name}": float(value) for name, value in scores.items()}


def progress_curve(history: list[dict[str, float]], name: str) -> tuple[list[int], list[float]]:
    """Steps and values of ``"progress/<name>"`` in a run's history (`diffrl.training.history.read_history`)."""
    points = [(int(record["step"]), record[PREFIX + name]) for record in history if PREFIX + name in record]
    return [step for step, _ in points], [value for _, value in points]
