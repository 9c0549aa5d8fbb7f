"""Image loading: real DreamBench files and generated awkward ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffrl.data import ImageLoadError, list_images, load_image, load_image_tensor

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _halves(width: int = 40, height: int = 20) -> Image.Image:
    """Left half red, right half blue."""
    array = np.zeros((height, width, 3), np.uint8)
    array[:, : width // 2] = RED
    array[:, width // 2 :] = BLUE
    return Image.fromarray(array)


def test_real_dreambench_images_load_as_rgb(dreambench_root: Path) -> None:
    paths = list_images(dreambench_root / "dog")
    assert [p.name for p in paths] == sorted(p.name for p in paths) and len(paths) >= 4
    image = load_image(paths[0])
    assert image.mode == "RGB" and max(image.size) <= 256
    batch = load_image_tensor(paths, size=32)
    assert batch.shape == (len(paths), 3, 32, 32) and batch.dtype == torch.float32
    assert 0 <= batch.min() and batch.max() <= 1 and batch.std() > 0.05


def test_grayscale_and_palette_become_rgb(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 100, np.uint8), mode="L").save(tmp_path / "gray.png")
    _halves().convert("P").save(tmp_path / "palette.png")
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    gray = np.asarray(load_image(tmp_path / "gray.png"))
    assert gray.shape == (8, 8, 3) and (gray == 100).all()
    palette = np.asarray(load_image(tmp_path / "palette.png"))
    assert tuple(palette[0, 0]) == RED and tuple(palette[0, -1]) == BLUE
    cmyk = np.asarray(load_image(tmp_path / "cmyk.jpg"))  # no ink = white
    assert cmyk.shape == (8, 8, 3) and cmyk.min() >= 250


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    array = np.zeros((4, 4, 4), np.uint8)
    array[..., 0] = 255  # red
    array[:, :2, 3] = 255  # left opaque, right fully transparent
    Image.fromarray(array, mode="RGBA").save(tmp_path / "alpha.png")
    image = np.asarray(load_image(tmp_path / "alpha.png"))
    assert tuple(image[0, 0]) == RED and tuple(image[0, 3]) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be rotated 90 degrees clockwise for display
    _halves().save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = load_image(tmp_path / "rotated.jpg")
    assert image.size == (20, 40)  # width, height swapped
    array = np.asarray(image).astype(int)
    assert np.abs(array[2, 10] - RED).max() < 40  # the left (red) half is now on top
    assert np.abs(array[-3, 10] - BLUE).max() < 40


def test_truncated_jpeg_fails_clearly(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"cut\.jpg.*(truncated|corrupt)"):
        load_image(tmp_path / "cut.jpg")


def test_text_file_and_missing_file_fail_clearly(tmp_path: Path) -> None:
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(ImageLoadError, match=r"fake\.png.*not a readable image"):
        load_image(tmp_path / "fake.png")
    with pytest.raises(ImageLoadError, match=r"nothere\.jpg.*does not exist"):
        load_image(tmp_path / "nothere.jpg")
    assert issubclass(ImageLoadError, ValueError)


def test_list_images_filters_sorts_and_rejects_empty(tmp_path: Path) -> None:
    for name in ("b.PNG", "a.jpg", "c.webp", "notes.txt", "d.bmp"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.jpg").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.webp", "d.bmp"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageLoadError, match=r"empty.*contains no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(ImageLoadError, match=r"missing.*does not exist"):
        list_images(tmp_path / "missing")


def test_load_image_tensor_sizes(tmp_path: Path) -> None:
    _halves(40, 20).save(tmp_path / "wide.png")
    _halves(20, 20).save(tmp_path / "square.png")
    with pytest.raises(ImageLoadError, match="different sizes"):
        load_image_tensor([tmp_path / "wide.png", tmp_path / "square.png"])
    batch = load_image_tensor([tmp_path / "wide.png", tmp_path / "square.png"], size=10)
    assert batch.shape == (2, 3, 10, 10)
    # the wide image is center-cropped: its middle 20 columns are half red, half blue
    assert torch.allclose(batch[0, :, 5, 0], torch.tensor([1.0, 0, 0]), atol=0.05)
    assert torch.allclose(batch[0, :, 5, -1], torch.tensor([0, 0, 1.0]), atol=0.05)
