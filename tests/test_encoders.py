"""DINO and CLIP encoders: loading through the real paths, and torch preprocessing vs the official pipelines."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import CLIPProcessor

from diffrl.data import list_images, load_image, pil_to_tensor
from diffrl.models.encoders import CLIPEncoder, DINOEncoder
from diffrl.models.loading import ModelLoadError


@pytest.fixture(scope="module")
def photo(dreambench_root: Path):
    return load_image(list_images(dreambench_root / "dog")[0])


def test_dino_loads_the_given_weights(dino: DINOEncoder, tiny_dino: tuple[Path, dict]) -> None:
    saved = load_file(str(tiny_dino[0]))
    state = dino.model.state_dict()
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[k], state[k]) for k in saved)
    assert dino.input_size == (32, 32)
    assert not any(p.requires_grad for p in dino.parameters())
    assert not dino.train().training


def test_dino_accepts_a_saved_spec_that_names_num_classes(tiny_dino: tuple[Path, dict], dino: DINOEncoder) -> None:
    path, kwargs = tiny_dino  # the zoo's timm.json stores num_classes=0 with the architecture
    other = DINOEncoder.from_pretrained(weights=path, **{**kwargs, "num_classes": 0})
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(other(images), dino(images))


def test_dino_loads_pth_weights(tmp_path: Path, tiny_dino: tuple[Path, dict], dino: DINOEncoder) -> None:
    torch.save({"model": load_file(str(tiny_dino[0]))}, tmp_path / "dino.pth")
    other = DINOEncoder.from_pretrained(weights=tmp_path / "dino.pth", **tiny_dino[1])
    images = torch.rand(2, 3, 40, 48)
    assert torch.allclose(other(images), dino(images))


def test_dino_missing_weights_explains_how_to_supply_them(
    tmp_path: Path, tiny_dino: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail at once instead of retrying the network
    with pytest.raises(ModelLoadError, match="does not exist"):
        DINOEncoder.from_pretrained(weights=tmp_path / "nope.safetensors")
    with pytest.raises(ModelLoadError, match=r"weights=.*--dino-weights.*cache"):  # offline, not in the cache
        DINOEncoder.from_pretrained("vit_small_patch16_224.dino", **tiny_dino[1])


@pytest.mark.parametrize("input_size", [32, 224])
def test_dino_preprocessing_matches_timm_transform(photo, input_size: int) -> None:
    kwargs = dict(img_size=input_size, patch_size=8 if input_size == 32 else 16, embed_dim=32, depth=1, num_heads=2)
    encoder = DINOEncoder(timm.create_model("vit_small_patch16_224.dino", pretrained=False, num_classes=10, **kwargs))
    assert encoder(torch.rand(1, 3, 8, 8)).shape == (1, 32)  # the classifier head is dropped: CLS features
    config = timm.data.resolve_data_config({"input_size": (3, input_size, input_size), "crop_pct": 0.875}, model=encoder.model)
    official = timm.data.create_transform(**config)(photo).unsqueeze(0)
    ours = encoder.preprocess(pil_to_tensor(photo).unsqueeze(0))
    assert ours.shape == official.shape == (1, 3, input_size, input_size)
    # compare in [0, 1] pixel units; PIL and torch bicubic differ slightly
    assert ((ours - official) * encoder.std).abs().mean() < 0.01
    features = encoder.model(torch.cat([ours, official]))
    assert F.cosine_similarity(features[:1], features[1:]).item() > 0.99


def test_dino_is_differentiable_in_the_images(dino: DINOEncoder) -> None:
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    dino(images).square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_clip_preprocessing_matches_clip_processor(clip: CLIPEncoder, tiny_clip_path: Path, photo) -> None:
    processor = CLIPProcessor.from_pretrained(tiny_clip_path)
    wide = photo.crop((0, 0, photo.width, photo.height * 2 // 3))  # non-square: exercises shortest-side resize + crop
    for image in (photo, wide):
        official = processor(images=image, return_tensors="pt").pixel_values
        ours = clip.preprocess(pil_to_tensor(image).unsqueeze(0))
        assert ours.shape == official.shape == (1, 3, 32, 32)
        assert ((ours - official) * clip.std).abs().mean() < 0.01
        with torch.no_grad():
            features = clip.model.get_image_features(pixel_values=torch.cat([ours, official])).pooler_output
        assert F.cosine_similarity(features[:1], features[1:]).item() > 0.99


def test_clip_encodes_images_and_texts(clip: CLIPEncoder) -> None:
    images = torch.rand(3, 3, 20, 24, requires_grad=True)
    image_features = clip.encode_images(images)
    assert image_features.shape == (3, 16)
    image_features.sum().backward()
    assert images.grad.abs().sum() > 0 and not any(p.requires_grad for p in clip.parameters())
    texts = clip.encode_texts(["a dog", "a photo of a sks dog on the beach"])
    assert texts.shape == (2, 16) and not torch.allclose(texts[0], texts[1])
    assert torch.allclose(clip.encode_texts(["a dog"])[0], texts[0], atol=1e-5)  # padding does not change features
    with pytest.raises(TypeError, match="single string"):
        clip.encode_texts("a dog")


def test_clip_missing_model_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"nothing-here.*local"):
        CLIPEncoder.from_pretrained(tmp_path / "nothing-here")
