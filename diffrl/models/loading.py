"""Load the components of a Stable-Diffusion-format pipeline from a hub id or a local folder."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    SchedulerMixin,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

SD_SUBFOLDERS: dict[str, str] = {
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": "tokenizer_config.json",
    "scheduler": "scheduler_config.json",
}
SCHEDULERS: dict[str, type[SchedulerMixin]] = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}
# optional file of a local pipeline folder: the fine-tuning settings its makers measured, e.g. {"lr_actor": 3e-4}
FINETUNING_FILE = "diffrl_finetuning.json"


class ModelLoadError(RuntimeError):
    """A pipeline folder or hub id could not be loaded; the message says what to do."""


@dataclass
class SDComponents:
    """The modules of a Stable-Diffusion-format pipeline, on one device and dtype."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: SchedulerMixin
    source: str

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side (8 for SD v1)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the latents the U-Net was trained on."""
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, size, size)

    def pipeline(self) -> StableDiffusionPipeline:
        """A `StableDiffusionPipeline` over these very modules (no copy), e.g. to sample or `save_pretrained`."""
        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


def _is_local(pretrained: str) -> bool:
    """A hub id is ``org/name``; anything that exists on disk, or cannot be a hub id, is a local path."""
    return Path(pretrained).expanduser().exists() or pretrained.startswith((".", "/", "~")) or pretrained.count("/") != 1


def recommended_finetuning(pretrained: str | os.PathLike) -> dict[str, float]:
    """The settings a local pipeline folder declares in `FINETUNING_FILE` (the bundled zoo declares its DreamBooth
    learning rate); ``{}`` for hub ids and folders without the file."""
    path = Path(os.fspath(pretrained)).expanduser() / FINETUNING_FILE
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"'{path}' is not valid JSON ({err}); fix or delete it.") from err
    if not isinstance(settings, dict) or not all(isinstance(v, (int, float)) for v in settings.values()):
        raise ModelLoadError(f"'{path}' must map setting names to numbers, got {settings!r}; fix or delete it.")
    return {str(k): float(v) for k, v in settings.items()}


def validate_pipeline_folder(folder: Path) -> None:
    """Raise `ModelLoadError` naming `folder` and every missing part of a diffusers SD folder."""
    if not folder.is_dir():
        raise ModelLoadError(
            f"Pipeline folder '{folder}' does not exist. Pass a diffusers Stable Diffusion folder "
            "(with model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) or a hub id "
            "such as 'CompVis/stable-diffusion-v1-4'."
        )
    missing = [] if (folder / "model_index.json").is_file() else ["model_index.json"]
    missing += [f"{sub}/{name}" for sub, name in SD_SUBFOLDERS.items() if not (folder / sub / name).is_file()]
    if missing:
        raise ModelLoadError(f"Pipeline folder '{folder}' is not a Stable Diffusion folder: missing {', '.join(missing)}.")
    try:
        json.loads((folder / "model_index.json").read_text())
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"Pipeline folder '{folder}': model_index.json is not valid JSON ({err}).") from err


def load_sd_components(
    pretrained: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    scheduler: str | None = "ddim",
    local_files_only: bool | None = None,
    revision: str | None = None,
) -> SDComponents:
    """Load U-Net, VAE, text encoder, tokenizer and noise scheduler of a Stable-Diffusion-format pipeline.

    Args:
        pretrained: a hub id (``"CompVis/stable-diffusion-v1-4"``) or a local diffusers folder.
            A local folder is read with ``local_files_only=True``: no network attempt is made.
        device, dtype: where and in which precision the modules live.
        scheduler: ``"ddim"``, ``"ddpm"`` or ``None`` (keep the pipeline's own). The new scheduler is built from
            the config *after* `StableDiffusionPipeline`'s constructor has sanitised it, exactly as the pipeline uses it.
        local_files_only: for hub ids; defaults to the ``HF_HUB_OFFLINE`` environment variable.
    """
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)} or None, got {scheduler!r}.")
    source = os.fspath(pretrained)
    is_local = _is_local(source)
    if is_local:
        folder = Path(source).expanduser()
        validate_pipeline_folder(folder)
        source, local_files_only = str(folder), True
    elif local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            source,
            dtype=dtype,
            safety_checker=None,
            requires_safety_checker=False,
            local_files_only=local_files_only,
            revision=revision,
        )
    except (OSError, ValueError, json.JSONDecodeError) as err:
        hint = (
            f"the folder '{source}' could not be read: {err}"
            if is_local
            else f"'{source}' is neither a local folder nor in the Hugging Face cache and could not be downloaded "
            f"({type(err).__name__}: {err}). On a machine without network, download it elsewhere "
            f"(`huggingface-cli download {source} --local-dir DIR`) and pass DIR instead."
        )
        raise ModelLoadError(f"Could not load the Stable Diffusion pipeline: {hint}") from err
    noise_scheduler = pipe.scheduler if scheduler is None else SCHEDULERS[scheduler].from_config(pipe.scheduler.config)
    components = SDComponents(
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        scheduler=noise_scheduler,
        source=source,
    )
    for module in (components.unet, components.vae, components.text_encoder):
        module.to(device)
    return components
