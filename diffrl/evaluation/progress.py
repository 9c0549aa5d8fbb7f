"""The DreamBench protocol as a progress score during training (`diffrl.training.Progress`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffrl.evaluation.dreambench import Subject
from diffrl.evaluation.protocol import EvaluationConfig, EvaluationEncoders, evaluate_subject
from diffrl.models import SDComponents


@dataclass
class SubjectProgress:
    """``score(components, step)``: the mean DreamBench scores (``"DINO"``, ``"CLIP-I"``, ``"CLIP-T"``, ...) of one
    subject's first ``config.prompts_per_subject`` prompts, with the protocol's fixed seeds, so that every step and
    every method is scored on the same noise. The grid of each scoring goes to ``out_dir/step_NNNNNN/grids/``.

    Attributes:
        subject: the subject (`diffrl.evaluation.load_dreambench`).
        encoders: the metric encoders.
        config: the protocol's settings (few prompts and images: it runs during training).
        out_dir: where the grids go.
    """

    subject: Subject
    encoders: EvaluationEncoders
    config: EvaluationConfig
    out_dir: Path

    def __call__(self, components: SDComponents, step: int) -> dict[str, float]:
        result = evaluate_subject(components, self.subject, self.encoders, self.config, self.out_dir / f"step_{step:06d}")
        return result.means
