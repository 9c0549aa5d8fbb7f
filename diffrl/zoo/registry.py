"""Offline access to the bundled pretrained zoo: ``load("emoji")`` and a timm loader for its DINO ViTs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

WEIGHTS_ROOT = Path(__file__).resolve().parent / "weights"
SUBJECTS_ROOT = Path(__file__).resolve().parent / "subjects"


@dataclass(frozen=True)
class DINOSpec:
    """A timm ViT checkpoint: safetensors ``file`` plus the exact ``timm.create_model`` arguments."""

    file: Path
    model_name: str
    kwargs: dict
    pretrained_cfg_overlay: dict

    @classmethod
    def from_dir(cls, path: Path) -> DINOSpec:
        spec = json.loads((path / "timm.json").read_text())
        overlay = dict(spec["pretrained_cfg_overlay"], input_size=tuple(spec["pretrained_cfg_overlay"]["input_size"]))
        return cls(path / "model.safetensors", spec["model_name"], spec["kwargs"], overlay)

    def create(self) -> torch.nn.Module:
        """The ViT in eval mode, loaded through ``timm.create_model(..., pretrained=True)`` exactly like real DINO."""
        import timm

        overlay = dict(self.pretrained_cfg_overlay, file=str(self.file))
        return timm.create_model(self.model_name, pretrained=True, pretrained_cfg_overlay=overlay, **self.kwargs).eval()


@dataclass(frozen=True)
class ZooPaths:
    """Paths of one zoo: SD-format pipeline folder, DINO ViT, held-out evaluator DINO, CLIP folder, subjects folder."""

    name: str
    sd: Path
    dino: DINOSpec
    dino_eval: DINOSpec
    clip: Path
    subjects: Path

    def encoders(self):
        """The zoo's DINO (``dino``), CLIP and held-out DINO (``dino_eval``) as `diffrl.evaluation.EvaluationEncoders`."""
        from diffrl.evaluation import EvaluationEncoders
        from diffrl.models import CLIPEncoder, DINOEncoder

        dino, held_out = (DINOEncoder.from_pretrained(s.model_name, weights=s.file, **s.kwargs)
                          for s in (self.dino, self.dino_eval))
        return EvaluationEncoders(dino=dino, clip=CLIPEncoder.from_pretrained(self.clip), heldout_dino=[held_out])


def load(name: str = "emoji") -> ZooPaths:
    """Paths of the bundled zoo ``name`` (offline; nothing is downloaded)."""
    root = WEIGHTS_ROOT / name
    if not (root / "sd" / "model_index.json").exists():
        raise FileNotFoundError(f"zoo {name!r} not found under {WEIGHTS_ROOT}; rebuild it with `python scripts/build_zoo.py`")
    return zoo_paths(root)


def zoo_paths(root: Path, subjects: Path = SUBJECTS_ROOT) -> ZooPaths:
    """Paths of the zoo folder ``root`` (``sd/``, ``dino/``, ``dino_eval/``, ``clip/``) and a subjects folder."""
    return ZooPaths(root.name, root / "sd", DINOSpec.from_dir(root / "dino"), DINOSpec.from_dir(root / "dino_eval"),
                    root / "clip", subjects)
