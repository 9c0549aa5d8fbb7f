"""Frozen image/text encoders shared by rewards and the evaluation: DINO ViT (timm) and CLIP (transformers).

Both take images as float ``[B, 3, H, W]`` in ``[0, 1]`` and do the official preprocessing in torch, so gradients
flow back to the images. They always stay in eval mode and their parameters never require gradients.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffrl.models.loading import ModelLoadError

DREAMBENCH_CROP_PCT = 0.875


def resize_shorter_side(images: Tensor, size: int, mode: str = "bicubic") -> Tensor:
    """Resize ``[B, C, H, W]`` so that the shorter side is ``size`` (the longer one is truncated, as PIL/timm/HF do)."""
    height, width = images.shape[-2:]
    if height <= width:
        new_h, new_w = size, int(size * width / height)
    else:
        new_h, new_w = int(size * height / width), size
    if (new_h, new_w) == (height, width):
        return images
    return F.interpolate(images, size=(new_h, new_w), mode=mode, align_corners=False, antialias=True)


def center_crop(images: Tensor, height: int, width: int) -> Tensor:
    """Center crop ``[B, C, H, W]`` to ``[B, C, height, width]`` (offsets rounded as torchvision does)."""
    full_h, full_w = images.shape[-2:]
    if full_h < height or full_w < width:
        raise ValueError(f"Cannot center-crop {full_h}x{full_w} images to {height}x{width}.")
    top, left = int(round((full_h - height) / 2.0)), int(round((full_w - width) / 2.0))
    return images[..., top : top + height, left : left + width]


def _check_images(images: Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}.")


class _FrozenEncoder(nn.Module):
    """An encoder that is always in eval mode and has no trainable parameters."""

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> _FrozenEncoder:
        return super().train(False)


class DINOEncoder(_FrozenEncoder):
    """A timm ViT giving CLS features ``[B, D]`` of images ``[B, 3, H, W]`` in ``[0, 1]`` (DreamBench's DINO metric).

    Preprocessing (as timm's eval transform with ``crop_pct=0.875``): resize the shorter side to
    ``floor(input_size / crop_pct)`` (bicubic, antialiased), center crop to the model's input size, ImageNet
    mean/std normalisation.
    """

    def __init__(self, model: nn.Module, crop_pct: float = DREAMBENCH_CROP_PCT) -> None:
        """Wrap a timm ViT; a classifier head, if it has one, is removed (``reset_classifier(0)``)."""
        super().__init__()
        if getattr(model, "num_classes", 0):
            model.reset_classifier(0)
        self.model = model
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        img_size = getattr(getattr(model, "patch_embed", None), "img_size", None) or cfg.get("input_size", (3, 224, 224))[1:]
        self.input_size: tuple[int, int] = (int(img_size[0]), int(img_size[1]))
        self.crop_pct = crop_pct
        self.interpolation = cfg.get("interpolation", "bicubic")
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1), persistent=False)
        self._freeze()

    @classmethod
    def from_pretrained(
        cls,
        name: str = "vit_small_patch16_224.dino",
        weights: str | os.PathLike | None = None,
        crop_pct: float = DREAMBENCH_CROP_PCT,
        **arch_kwargs,
    ) -> DINOEncoder:
        """Build timm model ``name`` with pretrained weights, from ``weights`` (safetensors or .pth) if given,
        otherwise from the Hugging Face cache/hub. ``arch_kwargs`` go to `timm.create_model` (e.g. ``img_size``).
        """
        import timm

        overlay = {}
        if weights is not None:
            weights = Path(weights).expanduser()
            if not weights.is_file():
                raise ModelLoadError(f"DINO weights file '{weights}' does not exist (pass a .safetensors or .pth file).")
            overlay = dict(file=str(weights), source="")
        try:
            arch_kwargs = {"num_classes": 0, **arch_kwargs}  # CLS features; a saved spec may already say so
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **arch_kwargs)
        except (OSError, RuntimeError, ValueError, KeyError) as err:
            where = f"the weights file '{weights}'" if weights else f"the Hugging Face hub or cache for timm model '{name}'"
            mismatches = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
            if mismatches:
                raise ModelLoadError(
                    f"The DINO weights in {where} do not fit timm model '{name}' built with {arch_kwargs}: "
                    f"{len(mismatches)} tensors differ in shape (first: {mismatches[0]}). Pass the architecture the "
                    "weights were trained with as timm kwargs (img_size, patch_size, embed_dim, depth, num_heads...; "
                    "CLI: --dino-kwargs for personalize, --dino-arch-json for evaluate)."
                ) from err
            raise ModelLoadError(
                f"Could not load DINO encoder '{name}' from {where} ({type(err).__name__}: {err}). Offline, either pass "
                f"a local weights file (`DINOEncoder.from_pretrained(name, weights=PATH)`, CLI `--dino-weights PATH`; "
                f"safetensors or .pth), or pre-populate the Hugging Face cache on a machine with network "
                f"(`timm.create_model('{name}', pretrained=True)`) and copy ~/.cache/huggingface over."
            ) from err
        return cls(model, crop_pct=crop_pct)

    def preprocess(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` in ``[0, 1]`` -> normalised ``[B, 3, *input_size]`` (differentiable)."""
        _check_images(images)
        images = images.to(self.mean.device, self.mean.dtype)
        height, width = self.input_size
        scale = math.floor(min(height, width) / self.crop_pct)
        images = center_crop(resize_shorter_side(images, scale, self.interpolation), height, width)
        return (images - self.mean) / self.std

    def forward(self, images: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` in ``[0, 1]`` -> CLS features ``[B, D]`` (unnormalised)."""
        return self.model(self.preprocess(images))


class CLIPEncoder(_FrozenEncoder):
    """A `transformers` CLIPModel: projected image and text embeddings ``[B, P]`` (unnormalised)."""

    def __init__(self, model: nn.Module, processor) -> None:
        super().__init__()
        self.model = model
        self.processor = processor
        image_processor = processor.image_processor
        size = image_processor.size
        self.resize_to = int(size["shortest_edge"] if "shortest_edge" in size else min(size["height"], size["width"]))
        crop = image_processor.crop_size
        self.crop_size: tuple[int, int] = (int(crop["height"]), int(crop["width"]))
        self.register_buffer("mean", torch.tensor(image_processor.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_processor.image_std).view(1, 3, 1, 1), persistent=False)
        self._freeze()

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike = "openai/clip-vit-base-patch32", local_files_only: bool | None = None
    ) -> CLIPEncoder:
        """Load a CLIPModel and its CLIPProcessor from a hub id or a local folder."""
        from transformers import CLIPModel, CLIPProcessor

        source = os.fspath(name_or_path)
        if local_files_only is None:
            local = Path(source).expanduser().exists()
            local_files_only = local or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        try:
            model = CLIPModel.from_pretrained(source, local_files_only=local_files_only)
            processor = CLIPProcessor.from_pretrained(source, local_files_only=local_files_only)
        except (OSError, ValueError) as err:
            raise ModelLoadError(
                f"Could not load CLIP model '{source}' ({type(err).__name__}: {err}). Offline, either pass a local "
                f"folder holding a CLIPModel and its processor (`huggingface-cli download {source} --local-dir DIR` "
                f"on a machine with network, then CLIPEncoder.from_pretrained(DIR)), or pre-populate the Hugging Face "
                f"cache and copy ~/.cache/huggingface over."
            ) from err
        return cls(model, processor)

    def preprocess(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` in ``[0, 1]`` -> CLIP pixel values ``[B, 3, *crop_size]`` (differentiable)."""
        _check_images(images)
        images = images.to(self.mean.device, self.mean.dtype)
        images = center_crop(resize_shorter_side(images, self.resize_to), *self.crop_size)
        return (images - self.mean) / self.std

    def encode_images(self, images: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` in ``[0, 1]`` -> projected image embeddings ``[B, P]``."""
        return self.model.get_image_features(pixel_values=self.preprocess(images)).pooler_output

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Texts -> projected text embeddings ``[B, P]``."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not a single string; wrap it in a list.")
        tokens = self.processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        device = self.mean.device
        return self.model.get_text_features(
            input_ids=tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device)
        ).pooler_output

    def forward(self, images: Tensor) -> Tensor:
        """Alias of `encode_images`."""
        return self.encode_images(images)
