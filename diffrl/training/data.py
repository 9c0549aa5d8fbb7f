"""Training data: the subject's reference images (augmented, seeded) and cached class images for prior preservation."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2

from diffrl.data.images import ImageLoadError, list_images, load_image, pil_to_tensor
from diffrl.io import atomic_save_png


class ReferenceImages:
    """A folder of images with seeded augmentation: every batch is a pure function of (seed, step, rank).

    This makes the data-loader position of a run its step count: resuming at step s reproduces the batches exactly.

    Args:
        paths: image files (`from_folder` lists a folder); unreadable images raise `ImageLoadError` naming the file.
        resolution: output size in pixels.
        random_flip: horizontal flips with probability 0.5.
        crop_scale: smallest area fraction of the random resized crop (1.0: no random crop, resize + center crop).
    """

    def __init__(self, paths: Sequence[Path], resolution: int, random_flip: bool = True, crop_scale: float = 1.0) -> None:
        if not paths:
            raise ImageLoadError("ReferenceImages got no image files.")
        self.paths = list(paths)
        self.resolution = resolution
        base = v2.Compose([v2.Resize(resolution, antialias=True), v2.CenterCrop(resolution)])
        self.images = []  # kept as uint8 (4x smaller than float: hundreds of class images at 512 px fit in memory)
        for path in self.paths:
            image = load_image(path)
            if min(image.size) < resolution:
                warnings.warn(
                    f"Image '{path}' is {image.width}x{image.height} pixels, smaller than the training resolution "
                    f"{resolution}: it is upscaled, and the model learns its blur. Use images at least {resolution} "
                    "pixels on their shorter side.",
                    UserWarning,
                    stacklevel=2,
                )
            self.images.append((base(pil_to_tensor(image)) * 255).round().to(torch.uint8))
        crop = [v2.RandomResizedCrop(resolution, scale=(crop_scale, 1.0), ratio=(1.0, 1.0), antialias=True)] if crop_scale < 1 else []
        transforms = [*crop, *([v2.RandomHorizontalFlip()] if random_flip else [])]
        self.augment = v2.Compose(transforms) if transforms else v2.Identity()  # Compose([]) raises

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, resolution: int, **kwargs) -> ReferenceImages:
        """All images of `folder`; a missing or empty folder raises `ImageLoadError` naming it."""
        return cls(list_images(folder), resolution, **kwargs)

    @property
    def stacked(self) -> Tensor:
        """The un-augmented images ``[N, 3, R, R]`` in ``[0, 1]``."""
        return torch.stack(self.images).float() / 255

    def __len__(self) -> int:
        return len(self.images)

    def indices(self, position: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> list[int]:
        """Indices of the batch at `position` (see `global_rows`) on process `rank`: epochs of seeded permutations,
        consumed in order."""
        count = len(self)
        picked = []
        for row in global_rows(position, batch_size, rank, world_size):
            epoch, offset = divmod(row, count)
            perm = torch.randperm(count, generator=torch.Generator().manual_seed(derive_seed(seed, epoch)))
            picked.append(int(perm[offset]))
        return picked

    def batch(self, position: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> Tensor:
        """Augmented images ``[B, 3, R, R]`` in ``[0, 1]`` at `position`: each row's image and augmentation are a pure
        function of (seed, global row), so a batch split over processes or accumulation steps is the same data."""
        images = []
        for row, index in zip(global_rows(position, batch_size, rank, world_size),
                              self.indices(position, batch_size, seed, rank, world_size), strict=True):
            with torch.random.fork_rng(devices=[]):  # torchvision draws from the global RNG: isolate it
                torch.manual_seed(derive_seed(seed, row, 1))
                images.append(self.augment(self.images[index]))
        return torch.stack(images).float() / 255


def global_rows(position: int, batch_size: int, rank: int = 0, world_size: int = 1) -> range:
    """The global sample indices of process `rank`'s batch at `position` (= step x accumulation steps + micro-batch):
    positions are consumed in order, each by all processes side by side, ``batch_size`` rows per process."""
    start = (position * world_size + rank) * batch_size
    return range(start, start + batch_size)


def schedule_noise(
    seed: int, rows: range, shape: Sequence[int], num_steps: int, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Per-row noise ``[B, *shape]`` (float32) and schedule indices ``[B]`` (int64, uniform in ``[0, num_steps)``),
    each row from a generator of its own seeded by (seed, row): the draws of a global row do not depend on how
    the global batch is split."""
    noise, steps = [], []
    for row in rows:
        generator = torch.Generator(device=device).manual_seed(derive_seed(seed, row, 4))
        steps.append(torch.randint(num_steps, (1,), generator=generator, device=device))
        noise.append(torch.randn(tuple(shape), generator=generator, device=device))
    return torch.stack(noise), torch.cat(steps)


def derive_seed(*values: int) -> int:
    """A 63-bit seed from integers, identical in every process (unlike ``hash`` of strings)."""
    digest = hashlib.sha256(",".join(map(str, values)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def check_identifier(prompt: str, identifier: str) -> bool:
    """Warn (and return False) when `prompt` lacks the identifier token that names the subject."""
    if identifier in prompt.split():
        return True
    warnings.warn(
        f"The instance prompt {prompt!r} does not contain the identifier token {identifier!r}: the model cannot "
        f"bind the subject to a word. Use e.g. 'a photo of {identifier} dog'.",
        UserWarning,
        stacklevel=2,
    )
    return False


def ensure_class_images(
    folder: Path,
    count: int,
    generate: Callable[[int, int], Tensor],
    batch_size: int = 4,
) -> list[Path]:
    """Make sure `folder` holds at least `count` class images; generate only the missing ones.

    Args:
        folder: the cache; existing images (any name) are reused, new ones are ``class-NNNNN.png``.
        count: images wanted.
        generate: ``(first_index, n) -> images [n, 3, H, W] in [0, 1]`` (seeded by index, with the frozen model).
    """
    folder.mkdir(parents=True, exist_ok=True)
    try:
        existing = list_images(folder)
    except ImageLoadError:
        existing = []
    for first in range(len(existing), count, batch_size):
        n = min(batch_size, count - first)
        images = generate(first, n).clamp(0, 1)
        for offset, image in enumerate(images):
            array = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy()
            atomic_save_png(Image.fromarray(array), folder / f"class-{first + offset:05d}.png")
    return list_images(folder)[: max(count, 0)] if count else []
