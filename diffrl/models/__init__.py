"""Loading and using Stable-Diffusion-format models."""

from diffrl.models.encoders import CLIPEncoder, DINOEncoder
from diffrl.models.encoding import decode_latents, encode_images, encode_prompts
from diffrl.models.loading import ModelLoadError, SDComponents, load_sd_components, validate_pipeline_folder

__all__ = [
    "CLIPEncoder",
    "DINOEncoder",
    "ModelLoadError",
    "SDComponents",
    "decode_latents",
    "encode_images",
    "encode_prompts",
    "load_sd_components",
    "validate_pipeline_folder",
]
