"""Wrap any Python function over decoded images as a (non-differentiable) reward."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from diffrl.rewards.base import Reward, RewardInputs


def images_to_uint8(images: Tensor) -> np.ndarray:
    """Images ``[B, 3, H, W]`` in ``[0, 1]`` -> uint8 array ``[B, H, W, 3]`` (rounded)."""
    array = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return array.permute(0, 2, 3, 1).cpu().numpy()


def images_to_pil(images: Tensor) -> list[Image.Image]:
    """Images ``[B, 3, H, W]`` in ``[0, 1]`` -> B RGB `PIL.Image`."""
    return [Image.fromarray(array) for array in images_to_uint8(images)]


class CallableReward(Reward):
    """A user function over the decoded look-forward images, e.g. an aesthetic or compressibility score.

    Args:
        fn: called with a list of B RGB `PIL.Image` (``input="pil"``) or a uint8 array ``[B, H, W, 3]``
            (``input="numpy"``); returns B scores (list, numpy array or tensor), higher is better.
        name: the reward's name in errors and logs (default: the function's name).

    The function runs without gradients (``differentiable = False``); its output is checked to be B finite numbers.
    """

    differentiable = False
    requires = frozenset({"images"})

    def __init__(self, fn: Callable[[Any], Any], name: str | None = None, input: Literal["pil", "numpy"] = "pil") -> None:
        if not callable(fn):
            raise TypeError(f"CallableReward needs a callable, got {type(fn).__name__}.")
        if input not in ("pil", "numpy"):
            raise ValueError(f"input must be 'pil' or 'numpy', got {input!r}.")
        fn_name = getattr(fn, "__name__", type(fn).__name__)
        super().__init__(name or ("callable" if fn_name == "<lambda>" else fn_name))
        self.fn = fn
        self.input = input

    def forward(self, inputs: RewardInputs) -> Tensor:
        images = inputs.images
        batch = images_to_pil(images) if self.input == "pil" else images_to_uint8(images)
        try:
            scores = self.fn(batch)
        except Exception as err:
            raise RuntimeError(f"Reward '{self.name}': the function raised {type(err).__name__}: {err}") from err
        return self._to_tensor(scores, images.device)

    def _to_tensor(self, scores: Any, device: torch.device) -> Tensor:
        """Function output -> float32 tensor (shape and finiteness are checked by `check_reward`)."""
        if isinstance(scores, Tensor):
            scores = scores.detach().cpu().numpy()
        try:
            values = torch.from_numpy(np.asarray(scores, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"Reward '{self.name}': the function returned {type(scores).__name__}, not a sequence of numbers ({err})."
            ) from err
        return values.to(device=device, dtype=torch.float32)

    def extra_repr(self) -> str:
        return f"fn={getattr(self.fn, '__qualname__', self.fn)!s}, input={self.input!r}"
