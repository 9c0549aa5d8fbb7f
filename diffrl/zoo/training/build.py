"""The zoo build: where each stage reads and writes, its configuration, and one call to run a stage.

``scripts/build_zoo.py`` runs these stages one after another or, with ``--jobs 2``, as parallel processes along
``STAGE_DEPENDS``. Stage-1 models (joint CLIP, VAE before its decoder refinement) go to the build cache; every
shipped folder is written by exactly one stage, atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from diffrl.io import atomic_write_text
from diffrl.zoo.registry import zoo_paths
from diffrl.zoo.subjects import write_subjects
from diffrl.zoo.training.card import write_card
from diffrl.zoo.training.clip import CLIPTrainConfig, refine_clip_vision, train_clip
from diffrl.zoo.training.common import (
    STAGE_DEPENDS,
    STAGES,
    WORLD_SCENES,
    stage_timer,
    world_data,
    written_atomically,
)
from diffrl.zoo.training.dino import DINOTrainConfig, train_dino
from diffrl.zoo.training.evaluate import evaluate_zoo
from diffrl.zoo.training.personalisation import PersonalisationConfig, measure_personalisation
from diffrl.zoo.training.unet import UNetTrainConfig, train_unet
from diffrl.zoo.training.vae import VAETrainConfig, refine_decoder, train_vae


@dataclass
class ZooBuildConfig:
    """Output folders and per-stage training configurations of one zoo build."""

    weights: Path  # shipped models: sd/, clip/, dino/, dino_eval/, the model card
    cache: Path  # rendered scenes, stage-1 models, per-stage records (not shipped)
    subjects: Path  # bundled personalization subjects (DreamBench layout)
    world_scenes: int = WORLD_SCENES
    world_seed: int = 0
    clip: CLIPTrainConfig = field(default_factory=CLIPTrainConfig)
    vae: VAETrainConfig = field(default_factory=VAETrainConfig)
    unet: UNetTrainConfig = field(default_factory=UNetTrainConfig)
    dino: DINOTrainConfig = field(default_factory=lambda: DINOTrainConfig(seed=0))
    dino_eval: DINOTrainConfig = field(default_factory=lambda: DINOTrainConfig(seed=1))
    personalisation: PersonalisationConfig = field(default_factory=PersonalisationConfig)

    @property
    def clip_joint(self) -> Path:
        return self.cache / "clip_joint"

    @property
    def vae_stage1(self) -> Path:
        return self.cache / "vae_stage1"

    def record_path(self, stage: str) -> Path:
        return self.cache / f"record_{stage}.json"

    def inputs(self, stage: str) -> list[Path]:
        """The models that ``stage`` reads (written by the stages in ``STAGE_DEPENDS[stage]``)."""
        sd = self.weights / "sd"
        return {
            "vae_decoder": [self.vae_stage1],
            "unet": [self.vae_stage1, self.clip_joint],
            "clip_vision": [self.clip_joint, sd / "vae"],
            "eval": [sd, self.weights / "clip", self.weights / "dino", self.weights / "dino_eval"],
        }.get(stage, [])


def run_stage(stage: str, cfg: ZooBuildConfig) -> dict:
    """Run one stage of ``STAGES``; its record (figures, ``seconds``) is written to ``cfg.record_path(stage)``
    (except for ``card``, which collects the records) and returned."""
    if stage not in STAGES:
        raise ValueError(f"unknown zoo build stage {stage!r}; choose one of {', '.join(STAGES)}")
    missing = [p for p in cfg.inputs(stage) if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"zoo build stage {stage!r} cannot start, missing: {', '.join(map(str, missing))}. Run the stages it "
            f"depends on first ({', '.join(STAGE_DEPENDS[stage])}; `scripts/build_zoo.py --stage NAME`) or the "
            f"whole build")
    record: dict = {}
    with stage_timer(stage, record):
        record[stage].update(_run(stage, cfg))
    if stage != "card":
        atomic_write_text(cfg.record_path(stage), json.dumps(record, indent=2))
    return record[stage]


def _run(stage: str, cfg: ZooBuildConfig) -> dict:
    world = lambda: world_data(cfg.cache, cfg.world_scenes, cfg.world_seed)  # noqa: E731
    sd = cfg.weights / "sd"
    if stage == "clip":
        return train_clip(world(), cfg.clip_joint, cfg.clip)
    if stage == "clip_vision":
        return refine_clip_vision(world(), cfg.clip_joint, sd / "vae", cfg.weights / "clip", cfg.clip)
    if stage == "vae":
        return train_vae(world(), cfg.vae_stage1, cfg.vae)
    if stage == "vae_decoder":
        return refine_decoder(world(), cfg.vae_stage1, sd / "vae", cfg.vae)
    if stage == "unet":
        return train_unet(world(), cfg.vae_stage1, cfg.clip_joint, sd, cfg.unet)
    if stage in ("dino", "dino_eval"):
        return train_dino(cfg.weights / stage, getattr(cfg, stage))
    if stage == "subjects":
        with written_atomically(cfg.subjects) as tmp:  # the whole folder: no subject of an earlier build survives
            return write_subjects(tmp)
    if stage == "eval":
        record = evaluate_zoo(cfg.weights, cfg.cache)
        record["personalisation"] = measure_personalisation(
            zoo_paths(cfg.weights, cfg.subjects), cfg.cache / "personalisation", cfg.personalisation)
        return record
    write_card(cfg.weights, cfg.cache)
    return {}
