"""The DreamBench evaluation protocol: subjects and prompts, DINO / CLIP-I / CLIP-T metrics, reports.

Names are imported on first use, so that ``diffrl.evaluation.cli`` (and ``diffrl --help``) load without torch.
"""

from __future__ import annotations

import importlib

_MODULES = {
    "dreambench": ("DreamBenchError", "Subject", "load_dreambench", "parse_prompts_and_classes"),
    "progress": ("SubjectProgress",),
    "metrics": ("cosine_matrix", "mean_reference_similarity", "paired_similarity", "remove_identifier"),
    "protocol": (
        "EvaluationConfig",
        "EvaluationEncoders",
        "EvaluationReport",
        "PromptResult",
        "SubjectResult",
        "evaluate",
        "check_out_dir",
        "evaluate_subject",
        "make_grid",
        "rescore",
        "score_subject",
    ),
}
_ORIGIN = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_ORIGIN)


def __getattr__(name: str):
    if name not in _ORIGIN:
        raise AttributeError(f"module 'diffrl.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"diffrl.evaluation.{_ORIGIN[name]}"), name)
