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
            height, width = images.shape[-2:]
            frame = torch.ones(height, width, dtype=torch.bool, device=images.device)
            dy, dx = max(1, round(height * self.border)), max(1, round(width * self.border))
            frame[dy:-dy, dx:-dx] = False
            mean_rgb = images[..., frame].mean(dim=-1)  # [B, 3]
        else:
            mean_rgb = images.mean(dim=(2, 3))  # [B, 3]
        if self.target.numel() == 1:
            luma = mean_rgb @ torch.tensor(LUMA_WEIGHTS, device=mean_rgb.device)
            return -(luma - self.target).abs()
        return -(mean_rgb - self.target.to(mean_rgb.device)).norm(dim=1)


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
