"""LoRA and full fine-tuning helpers for the U-Net and the text encoder (diffusers' / transformers' peft integration)."""

from __future__ import annotations

from collections.abc import Sequence

from diffusers import UNet2DConditionModel
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")  # CLIP's attention (diffusers' choice)


def add_lora(
    unet: UNet2DConditionModel,
    rank: int = 4,
    alpha: float | None = None,
    target_modules: Sequence[str] = LORA_TARGET_MODULES,
    adapter_name: str = "default",
) -> UNet2DConditionModel:
    """Freeze the U-Net's base weights and add a trainable LoRA adapter (``lora_alpha = alpha or rank``) in place.

    The adapter starts as the identity (peft's default init: B = 0), so outputs are unchanged until trained.
    """
    config = _lora_config(rank, alpha, target_modules)  # checked before the model changes
    unet.requires_grad_(False)
    unet.add_adapter(config, adapter_name=adapter_name)
    return unet


def add_text_encoder_lora(
    text_encoder: nn.Module,
    rank: int = 4,
    alpha: float | None = None,
    target_modules: Sequence[str] = TEXT_ENCODER_LORA_TARGET_MODULES,
    adapter_name: str = "default",
) -> nn.Module:
    """`add_lora` for a transformers CLIP text encoder: base weights frozen, a trainable identity-initialised adapter
    on its attention projections, exported with ``save_lora_weights(text_encoder_lora_layers=...)``."""
    config = _lora_config(rank, alpha, target_modules)
    text_encoder.requires_grad_(False)
    inject_adapter_in_model(config, text_encoder, adapter_name=adapter_name)  # peft itself, as diffusers loads it
    return text_encoder


def _lora_config(rank: int, alpha: float | None, target_modules: Sequence[str]) -> LoraConfig:
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}.")
    if alpha is not None and alpha <= 0:
        raise ValueError(f"LoRA alpha must be > 0, got {alpha}.")
    return LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(target_modules), init_lora_weights=True)


def full_finetune(module: nn.Module) -> nn.Module:
    """Make every parameter of ``module`` trainable (full fine-tuning), in place."""
    return module.requires_grad_(True)


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module`` with ``requires_grad`` (LoRA weights only after `add_lora`)."""
    return [p for p in module.parameters() if p.requires_grad]
