"""Differentiable rewards from frozen encoders: DINO / CLIP image similarity to references, CLIP image-text score."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import Tensor
from torch.utils import checkpoint as activation_checkpoint

from diffrl.data import list_images, load_image, pil_to_tensor
from diffrl.models.encoders import CLIPEncoder, DINOEncoder
from diffrl.models.encoding import decode_latents
from diffrl.rewards.base import Reward, RewardInputs

References = Tensor | Sequence[str | os.PathLike] | str | os.PathLike


def make_decoder(vae: AutoencoderKL, checkpoint: bool = False) -> Callable[[Tensor], Tensor]:
    """The ``RewardInputs.decode`` callable: scaled latents -> images ``[B, 3, H, W]`` in ``[0, 1]``.

    ``checkpoint=True`` recomputes the VAE decode in the backward pass instead of storing its activations
    (less memory, one more decode).
    """

    def decode(latents: Tensor) -> Tensor:
        if checkpoint and torch.is_grad_enabled() and latents.requires_grad:
            return activation_checkpoint.checkpoint(decode_latents, vae, latents, use_reentrant=False)
        return decode_latents(vae, latents)

    return decode


def _reference_batches(references: References) -> list[Tensor]:
    """References as batches ``[n, 3, H, W]`` in ``[0, 1]``, one per distinct image size (a folder, files or a tensor)."""
    if isinstance(references, Tensor):
        if references.ndim != 4 or references.shape[1] != 3 or references.shape[0] == 0:
            raise ValueError(f"reference images must be [N, 3, H, W] in [0, 1] with N >= 1, got {tuple(references.shape)}.")
        return [references]
    paths = list_images(references) if isinstance(references, (str, os.PathLike)) else [Path(p) for p in references]
    if not paths:
        raise ValueError("The list of reference images is empty.")
    by_size: dict[tuple[int, int], list[Tensor]] = {}
    for path in paths:
        image = pil_to_tensor(load_image(path))
        by_size.setdefault(tuple(image.shape[1:]), []).append(image)
    return [torch.stack(images) for images in by_size.values()]


class _ReferenceSimilarity(Reward):
    """``-(1 - cos)`` between each image's embedding and the reference embeddings, reduced over references."""

    requires = frozenset({"images"})

    def __init__(
        self, encoder: torch.nn.Module, references: References, reduce: Literal["mean", "max"], name: str | None
    ) -> None:
        super().__init__(name)
        if reduce not in ("mean", "max"):
            raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}.")
        self.reduce = reduce
        self.encoder = encoder.requires_grad_(False)
        with torch.no_grad():
            features = torch.cat([self.embed(batch) for batch in _reference_batches(references)])
        self.register_buffer("reference_features", F.normalize(features.float(), dim=-1))  # [N, D], unit norm

    def embed(self, images: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, inputs: RewardInputs) -> Tensor:
        features = F.normalize(self.embed(inputs.images).float(), dim=-1)  # [B, D]
        cosine = features @ self.reference_features.T  # [B, N]
        cosine = cosine.mean(1) if self.reduce == "mean" else cosine.max(1).values
        return cosine - 1

    def extra_repr(self) -> str:
        return f"references={self.reference_features.shape[0]}, reduce={self.reduce!r}"


class DINOReward(_ReferenceSimilarity):
    """Subject fidelity: ``-(1 - cos)`` of DINO CLS features to the references, in ``[-2, 0]``.

    Args:
        encoder: a `DINOEncoder` (frozen; gradients flow to the images only).
        references: images ``[N, 3, H, W]`` in ``[0, 1]``, image files, or a folder of images. Embedded once, at
            construction, and kept as the buffer ``reference_features`` ``[N, D]``.
        reduce: ``"mean"`` or ``"max"`` of the cosine over the references.
    """

    def __init__(
        self, encoder: DINOEncoder, references: References, reduce: Literal["mean", "max"] = "mean", name: str | None = None
    ) -> None:
        super().__init__(encoder, references, reduce, name)

    def embed(self, images: Tensor) -> Tensor:
        return self.encoder(images)


class CLIPImageReward(_ReferenceSimilarity):
    """``-(1 - cos)`` of CLIP image embeddings to the references' (DreamBench's CLIP-I); arguments as `DINOReward`."""

    def __init__(
        self, encoder: CLIPEncoder, references: References, reduce: Literal["mean", "max"] = "mean", name: str | None = None
    ) -> None:
        super().__init__(encoder, references, reduce, name)

    def embed(self, images: Tensor) -> Tensor:
        return self.encoder.encode_images(images)


def strip_identifier(prompt: str, identifier: str) -> str:
    """Remove the identifier word from a prompt: ``"a photo of sks dog" -> "a photo of dog"``."""
    return " ".join(re.sub(rf"(?<!\S){re.escape(identifier)}(?!\S)", " ", prompt).split())


class CLIPTextReward(Reward):
    """Prompt fidelity: cosine of the CLIP embeddings of each image and its prompt (DreamBench's CLIP-T), in ``[-1, 1]``.

    The identifier token (``identifier``, default ``"sks"``; ``None`` keeps prompts as they are) is removed from the
    prompts first. Text embeddings carry no gradient; image embeddings do.
    """

    requires = frozenset({"images", "prompts"})

    def __init__(self, encoder: CLIPEncoder, identifier: str | None = "sks", name: str | None = None) -> None:
        super().__init__(name)
        self.encoder = encoder.requires_grad_(False)
        self.identifier = identifier

    def forward(self, inputs: RewardInputs) -> Tensor:
        prompts = list(inputs.prompts)
        if len(prompts) != inputs.batch_size:
            raise ValueError(f"Reward '{self.name}' got {len(prompts)} prompts for a batch of {inputs.batch_size}.")
        if self.identifier:
            prompts = [strip_identifier(p, self.identifier) for p in prompts]
        with torch.no_grad():
            texts = F.normalize(self.encoder.encode_texts(prompts).float(), dim=-1)
        images = F.normalize(self.encoder.encode_images(inputs.images).float(), dim=-1)
        return (images * texts).sum(-1)
