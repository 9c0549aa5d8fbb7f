"""DreamBench metrics as pure functions over embeddings: raw cosine similarities in [-1, 1] (not x100).

- DINO / CLIP-I: each generated image against *all* real images of its subject, averaged
  (`mean_reference_similarity`).
- CLIP-T: each generated image against its own prompt with the identifier token removed
  (`paired_similarity` of image and text embeddings, texts from `remove_identifier`).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor
from torch.nn import functional as F


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of every row of ``a`` ``[N, D]`` with every row of ``b`` ``[M, D]`` -> ``[N, M]`` (float64)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"Expected embeddings [N, D] and [M, D], got {tuple(a.shape)} and {tuple(b.shape)}.")
    return F.normalize(a.double(), dim=-1) @ F.normalize(b.double(), dim=-1).T


def mean_reference_similarity(generated: Tensor, references: Tensor) -> Tensor:
    """DINO / CLIP-I score of each generated image: mean cosine to all references.

    Args:
        generated: ``[N, D]`` embeddings of generated images.
        references: ``[M, D]`` embeddings of the subject's real images.

    Returns:
        ``[N]`` float64; the subject's score is its mean.
    """
    if references.shape[0] == 0:
        raise ValueError("mean_reference_similarity needs at least one reference embedding.")
    return cosine_matrix(generated, references).mean(dim=1)


def paired_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Cosine of row i of ``a`` with row i of ``b`` (both ``[N, D]``) -> ``[N]`` float64, e.g. CLIP-T."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"Expected two [N, D] embeddings of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    return torch.cosine_similarity(a.double(), b.double(), dim=-1)


def remove_identifier(prompt: str, token: str = "sks") -> str:
    """The prompt without the identifier word, for CLIP-T: ``"a sks dog"`` -> ``"a dog"``.

    Only whole words are removed (``"sksx"`` stays), punctuation attached to the token is kept
    (``"a sks, dog"`` -> ``"a, dog"``; one left dangling at either end is dropped), and whitespace is collapsed
    (no double or edge spaces).
    """
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"token must be one non-empty word, got {token!r}.")
    without = re.sub(rf"(?<!\w){re.escape(token)}(?!\w)", " ", prompt)
    without = re.sub(r"\s+", " ", without).strip()
    without = re.sub(r" (?=[,.;:!?)])", "", without)
    return re.sub(r"^[,;:]\s*|[,;:]$", "", without)  # "sks, a dog" and "a dog, sks" -> "a dog"
