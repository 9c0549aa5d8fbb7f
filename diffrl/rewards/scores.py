"""Weight-free image scores: JPEG compressibility (a black box), a mean-colour target (differentiable) and a noise
control (no signal)."""

from __future__ import annotations

import io
import zlib
from collections.abc import Sequence

import torch
from torch import Tensor

from diffrl.rewards.base import Reward, RewardInputs
from diffrl.rewards.callable import images_to_pil, images_to_uint8

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601


class JPEGCompressibilityReward(Reward):
    """``-(JPEG size in kB)`` of each decoded image at ``quality`` (DDPO's compressibility; 1 kB = 1000 bytes)."""

    differentiable = False
    requires = frozenset({"images"})

    def __init__(self, quality: int = 95, name: str | None = None) -> None:
        super().__init__(name)
        self.quality = quality

    def forward(self, inputs: RewardInputs) -> Tensor:
        sizes = []
        for image in images_to_pil(inputs.images):
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=self.quality)
            sizes.append(buffer.tell() / 1000)
        return -torch.tensor(sizes, dtype=torch.float32, device=inputs.images.device)


def frame_mask(size: Sequence[int], border: float, device: torch.device | None = None) -> Tensor:
    """``[H, W]`` bool: True on the frame of width ``border`` x the side (at least one pixel) along every edge."""
    height, width = size
    frame = torch.ones(height, width, dtype=torch.bool, device=device)
    dy, dx = max(1, round(height * border)), max(1, round(width * border))
    frame[dy:-dy, dx:-dx] = False
    return frame


class ColorTargetReward(Reward):
    """Minus the distance of each image's mean colour to a target, colours in ``[0, 1]``.

    Give ``target_rgb=(r, g, b)`` for the Euclidean distance of the mean RGB colour, or ``brightness=b`` for
    ``|mean luma - b|`` (BT.601 luma). With ``border=f`` (in (0, 0.5)) the mean is taken over the frame of width
    ``f`` x the image side on every side only: the backdrop around a centred subject, so that the reward asks for a
    colour of the scene without asking the subject to change. Differentiable (reward backpropagation can use it);
    policy-gradient methods and the critic treat it as a black box like any other score.
    """

    requires = frozenset({"images"})

    def __init__(
        self, target_rgb: Sequence[float] | None = None, brightness: float | None = None, name: str | None = None,
        border: float = 0.0,
    ) -> None:
        super().__init__(name)
        if not 0.0 <= border < 0.5:
            raise ValueError(f"ColorTargetReward border is a fraction of the image side in [0, 0.5), got {border}.")
        self.border = border
        if (target_rgb is None) == (brightness is None):
            raise ValueError("ColorTargetReward needs exactly one of target_rgb=(r, g, b) or brightness=b.")
        target = (brightness,) if target_rgb is None else tuple(target_rgb)
        if len(target) not in (1, 3) or not all(0 <= float(v) <= 1 for v in target):
            raise ValueError(f"ColorTargetReward targets are in [0, 1]: got target_rgb={target_rgb}, brightness={brightness}.")
        self.register_buffer("target", torch.tensor(target, dtype=torch.float32), persistent=False)

    def forward(self, inputs: RewardInputs) -> Tensor:
        images = inputs.images.float()
        if self.border:
            mean_rgb = images[..., frame_mask(images.shape[-2:], self.border, images.device)].mean(dim=-1)  # [B, 3]
        else:
            mean_rgb = images.mean(dim=(2, 3))  # [B, 3]
        if self.target.numel() == 1:
            luma = mean_rgb @ torch.tensor(LUMA_WEIGHTS, device=mean_rgb.device)
            return -(luma - self.target).abs()
        return -(mean_rgb - self.target.to(mean_rgb.device)).norm(dim=1)


class ContrastReward(Reward):
    """The colour contrast of a centred subject against its backdrop: the Euclidean distance (RGB in ``[0, 1]``, so
    at most sqrt(3)) between the mean colour of the central square (``centre`` x the side on each axis) and the mean
    colour of the frame of width ``border`` x the side. Shifting every pixel by the same colour leaves it unchanged,
    so it cannot be raised by painting the whole image; it asks the subject to stand out from its scene.
    Differentiable."""

    requires = frozenset({"images"})

    def __init__(self, centre: float = 0.3, border: float = 0.15, name: str | None = None) -> None:
        super().__init__(name)
        if not (0.0 < border < 0.5 and 0.0 < centre <= 1.0 - 2 * border):
            raise ValueError(f"ContrastReward needs 0 < border < 0.5 and 0 < centre <= 1 - 2 x border (the centre "
                             f"inside the frame), got centre={centre}, border={border}.")
        self.centre, self.border = centre, border

    def forward(self, inputs: RewardInputs) -> Tensor:
        images = inputs.images.float()
        height, width = images.shape[-2:]
        dy, dx = max(1, round(height * (1 - self.centre) / 2)), max(1, round(width * (1 - self.centre) / 2))
        centre = images[..., dy:height - dy, dx:width - dx].mean(dim=(2, 3))  # [B, 3]
        frame = images[..., frame_mask((height, width), self.border, images.device)].mean(dim=-1)  # [B, 3]
        return (centre - frame).norm(dim=1)


class NoiseReward(Reward):
    """A control with no signal: a uniform value in ``[-0.5, 0.5)`` drawn from a seed that is the CRC-32 of each
    image's uint8 pixels. Any change of the image draws a new value, the same image always the same one (so runs
    resume exactly), and no image property predicts it: what a method does to the model under this reward is the
    cost of its updates alone, the reference against which a real reward's side effects (e.g. a falling class
    accuracy) are read."""

    differentiable = False
    requires = frozenset({"images"})

    def forward(self, inputs: RewardInputs) -> Tensor:
        values = [torch.rand((), generator=torch.Generator().manual_seed(zlib.crc32(pixels.tobytes()))).item() - 0.5
                  for pixels in images_to_uint8(inputs.images)]
        return torch.tensor(values, dtype=torch.float32, device=inputs.images.device)
