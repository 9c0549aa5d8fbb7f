"""Write the trained model where `StableDiffusionPipeline` can load it, atomically."""

from __future__ import annotations

from pathlib import Path

from diffrl.models import SDComponents
from diffrl.training.checkpoint import replace_dir_atomically
from diffrl.training.config import TrainConfig


def save_model(config: TrainConfig, components: SDComponents, target: Path | None = None) -> Path:
    """Save the fine-tuned model to ``config.model_dir`` (or `target`), replacing an old one only when complete.

    Full fine-tuning writes a diffusers folder (``StableDiffusionPipeline.from_pretrained(dir)``); LoRA writes
    ``pytorch_lora_weights.safetensors`` (``StableDiffusionPipeline.from_pretrained(config.pretrained)`` then
    ``pipe.load_lora_weights(dir)``). Both also hold ``training_config.json``.
    """

    def write(folder: Path) -> None:
        pipeline = components.pipeline()
        if config.lora_rank > 0:
            from peft.utils import get_peft_model_state_dict

            pipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(components.unet), safe_serialization=True)
        else:
            pipeline.save_pretrained(folder, safe_serialization=True)
        (folder / "training_config.json").write_text(config.to_json())

    return replace_dir_atomically(target or config.model_dir, write)
