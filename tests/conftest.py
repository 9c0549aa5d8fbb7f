"""Shared fixtures: tiny random models written to disk in the real formats, loaded through the real code paths."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: it reads the variable once

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from diffrl.models.tiny import build_tiny_clip, build_tiny_dino, build_tiny_sd  # noqa: E402
torch.set_num_threads(1)  # tiny models: more threads only add contention on the 2-core CI machine

DREAMBENCH = Path(__file__).resolve().parents[1].parent / "shared" / "dreambench"


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Stable-Diffusion-format pipeline folder (16x16 images, 4x8x8 latents)."""
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd") / "pipeline")


@pytest.fixture(scope="session")
def tiny_dino(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny random timm ViT saved as safetensors, and its `timm.create_model` architecture kwargs."""
    return build_tiny_dino(tmp_path_factory.mktemp("tiny_dino") / "dino.safetensors")


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random `transformers` CLIPModel folder with its processor."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip") / "clip")


@pytest.fixture(scope="session")
def dino(tiny_dino: tuple[Path, dict]):
    """The tiny ViT loaded as a frozen `DINOEncoder` through timm's pretrained-file path."""
    from diffrl.models.encoders import DINOEncoder

    path, kwargs = tiny_dino
    return DINOEncoder.from_pretrained(weights=path, **kwargs)


@pytest.fixture(scope="session")
def clip(tiny_clip_path: Path):
    """The tiny CLIP loaded as a frozen `CLIPEncoder`."""
    from diffrl.models.encoders import CLIPEncoder

    return CLIPEncoder.from_pretrained(tiny_clip_path)


@pytest.fixture(scope="session")
def dreambench_root() -> Path:
    """The DreamBench dataset shipped in ../shared/dreambench."""
    if not DREAMBENCH.is_dir():
        pytest.fail(f"DreamBench data not found at {DREAMBENCH}; it is expected beside the checkout in shared/.")
    return DREAMBENCH


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread; two OpenMP threads on a loaded 2-core machine are ~100x slower.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
