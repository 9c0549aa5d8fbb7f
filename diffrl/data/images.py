"""Robust image loading for reference sets, instance folders and DreamBench.

Every image comes back as RGB with its EXIF orientation applied; anything that cannot be read raises
`ImageLoadError` naming the file and the reason.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


class ImageLoadError(ValueError):
    """An image file or folder could not be read; the message names it and says why."""


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited over white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("P", "PA", "LA", "RGBA", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: rescale to 8 bits
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / top * 255 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, F


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read one image file as an RGB `PIL.Image`, EXIF orientation applied, alpha composited on white.

    Raises:
        ImageLoadError: the file is missing, not an image, truncated or otherwise corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"Image '{path}' does not exist or is not a file.")
    try:
        with Image.open(path) as image:
            image.load()  # decode now: truncated data raises here, not later
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except UnidentifiedImageError as err:
        raise ImageLoadError(f"Image '{path}' is not a readable image file ({err}).") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageLoadError(f"Image '{path}' is corrupt or truncated ({type(err).__name__}: {err}).") from err


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in ``folder`` (extensions jpg, jpeg, png, webp, bmp; any case), sorted by name.

    Raises:
        ImageLoadError: the folder does not exist or holds no image files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageLoadError(f"Image folder '{folder}' does not exist or is not a directory.")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise ImageLoadError(
            f"Image folder '{folder}' contains no images (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})."
        )
    return paths


def pil_to_tensor(image: Image.Image) -> Tensor:
    """RGB `PIL.Image` -> float ``[3, H, W]`` in ``[0, 1]``."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def load_image_tensor(paths: Sequence[str | os.PathLike], size: int | None = None) -> Tensor:
    """Load images as one float batch ``[B, 3, H, W]`` in ``[0, 1]``.

    Args:
        paths: image files.
        size: if given, each image is resized (bicubic) so its shorter side is ``size`` and center-cropped to
            ``size x size``. If ``None``, all images must already have the same size.
    """
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError("paths must be a sequence of files; use list_images(folder) to list a folder.")
    if len(paths) == 0:
        raise ImageLoadError("load_image_tensor got an empty list of paths.")
    images = [load_image(p) for p in paths]
    if size is not None:
        images = [ImageOps.fit(im, (size, size), Image.Resampling.BICUBIC) for im in images]
    sizes = {im.size for im in images}
    if len(sizes) > 1:
        listing = ", ".join(f"'{p}' {im.size[0]}x{im.size[1]}" for p, im in zip(paths, images, strict=True))
        raise ImageLoadError(f"Images have different sizes ({listing}); pass size= to resize and crop them.")
    return torch.stack([pil_to_tensor(im) for im in images])
