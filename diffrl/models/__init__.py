"""Loading and using Stable-Diffusion-format models."""

from diffrl.models.encoders import CLIPEncoder, DINOEncoder
from diffrl.models.encoding import decode_latents, encode_images, encode_prompts
from diffrl.models.loading import (
    FINETUNING_FILE,
    ModelLoadError,
    SDComponents,
    load_sd_components,
    recommended_finetuning,
    validate_pipeline_folder,
)

__all__ = [
    "CLIPEncoder",
    "FINETUNING_FILE",
    "DINOEncoder",
    "ModelLoadError",
    "SDComponents",
    "decode_latents",
    "encode_images",
    "encode_prompts",
    "load_sd_components",
    "recommended_finetuning",
    "validate_pipeline_folder",
]
