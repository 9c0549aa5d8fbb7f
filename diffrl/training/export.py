"""Write the trained model where `StableDiffusionPipeline` can load it, atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffrl.io import disk_space_for
from diffrl.models import FINETUNING_FILE, SDComponents, recommended_finetuning
from diffrl.training.checkpoint import METADATA_BYTES, replace_dir_atomically
from diffrl.training.config import config_json


def save_model(config: Any, components: SDComponents, target: Path | None = None, text_encoder: bool = False) -> Path:
    """Save the model fine-tuned by a run of ``config`` (a `TrainConfig`, a `PolicyGradientConfig`: its
    ``pretrained``, ``lora_rank`` and ``model_dir`` are read) to ``config.model_dir`` (or `target`), replacing an old
    one only when complete; ``text_encoder``: the text encoder was trained too.

    Full fine-tuning writes a diffusers folder (``StableDiffusionPipeline.from_pretrained(dir)``); LoRA writes
    ``pytorch_lora_weights.safetensors`` (``StableDiffusionPipeline.from_pretrained(config.pretrained)`` then
    ``pipe.load_lora_weights(dir)``). Both also hold ``training_config.json``. On any error nothing is left behind
    and an older model stays as it was; a full disk raises `diffrl.io.DiskFullError`.
    """

    def write(folder: Path) -> None:
        if config.lora_rank > 0:
            save_lora_weights(components, folder, text_encoder=text_encoder)
        else:
            components.pipeline().save_pretrained(folder, safe_serialization=True)
            recommended = recommended_finetuning(config.pretrained)
            if recommended:  # a further fine-tuning of this model resolves lr_actor=None as its base model did
                (folder / FINETUNING_FILE).write_text(json.dumps(recommended, indent=2) + "\n")
        (folder / "training_config.json").write_text(config_json(config))

    target = Path(target or config.model_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    hint = ("The run's last checkpoint is complete: free space, then export the model again by resuming "
            "(CLI: --resume latest).")
    needed = _model_bytes(config.lora_rank > 0, components) + METADATA_BYTES
    with disk_space_for(target.parent, needed, f"the model '{target}'", hint):
        return replace_dir_atomically(target, write)


def save_lora_weights(components: SDComponents, folder: Path, text_encoder: bool = False) -> None:
    """The U-Net's LoRA adapter (and the text encoder's with ``text_encoder``) as
    ``folder/pytorch_lora_weights.safetensors``, which ``pipe.load_lora_weights(folder)`` reads."""
    from peft.utils import get_peft_model_state_dict

    text_encoder_layers = get_peft_model_state_dict(components.text_encoder) if text_encoder else None
    components.pipeline().save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(components.unet),
                                            text_encoder_lora_layers=text_encoder_layers, safe_serialization=True)


def _model_bytes(lora: bool, components: SDComponents) -> int:
    """What the export writes: the LoRA weights, or every module's parameters and buffers."""
    if lora:
        modules = (components.unet, components.text_encoder)
        tensors = [p for module in modules for p in module.parameters() if p.requires_grad]
    else:
        modules = (components.unet, components.vae, components.text_encoder)
        tensors = [t for module in modules for t in module.state_dict().values()]
    return sum(t.numel() * t.element_size() for t in tensors)
