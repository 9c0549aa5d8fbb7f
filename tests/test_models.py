"""Loading Stable-Diffusion-format components from disk, offline, and the prompt/latent helpers."""

from __future__ import annotations

import shutil
import socket

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionPipeline

from diffrl.models import ModelLoadError, decode_latents, encode_images, encode_prompts, load_sd_components


def test_loads_local_folder_without_network(tiny_sd_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted while loading a local folder")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    components = load_sd_components(tiny_sd_path, scheduler="ddpm")
    assert isinstance(components.scheduler, DDPMScheduler)
    assert components.latent_shape == (4, 8, 8)
    assert components.vae_scale_factor == 2


def test_scheduler_config_matches_pipeline(tiny_sd_path):
    components = load_sd_components(tiny_sd_path, scheduler="ddim")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_path, safety_checker=None, requires_safety_checker=False)
    assert isinstance(components.scheduler, DDIMScheduler)
    assert dict(components.scheduler.config) == dict(pipe.scheduler.config)


def test_prompt_embeddings_match_pipeline(tiny_sd_path):
    components = load_sd_components(tiny_sd_path)
    pipe = components.pipeline()
    with torch.no_grad():
        ours = encode_prompts(components.tokenizer, components.text_encoder, ["a sks dog", ""])
        theirs, negative = pipe.encode_prompt("a sks dog", "cpu", 1, True, negative_prompt="")
    torch.testing.assert_close(ours[:1], theirs, rtol=0, atol=0)
    torch.testing.assert_close(ours[1:], negative, rtol=0, atol=0)
    assert components.tokenizer.tokenize("sks") == ["sks</w>"]


def test_image_latent_round_trip_shapes(tiny_sd_path):
    components = load_sd_components(tiny_sd_path)
    images = torch.rand(2, 3, 16, 16)
    latents = encode_images(components.vae, images)
    assert latents.shape == (2, 4, 8, 8)
    decoded = decode_latents(components.vae, latents)
    assert decoded.shape == (2, 3, 16, 16) and decoded.min() >= 0 and decoded.max() <= 1
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        encode_images(components.vae, torch.rand(3, 16, 16))


def test_unknown_path_names_it(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelLoadError, match="no_such_model.*does not exist"):
        load_sd_components(missing)


def test_malformed_folder_names_missing_parts(tiny_sd_path, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd_path, broken)
    shutil.rmtree(broken / "unet")
    (broken / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"broken.*missing unet/config\.json, scheduler/scheduler_config\.json"):
        load_sd_components(broken)


def test_corrupt_weights_fail_clearly(tiny_sd_path, tmp_path):
    broken = tmp_path / "damaged"
    shutil.copytree(tiny_sd_path, broken)
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="damaged.*could not be read") as error:
        load_sd_components(broken)


def test_hub_id_offline_says_how_to_supply_weights(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="huggingface-cli download"):
        load_sd_components("CompVis/stable-diffusion-v1-4")


def test_bad_scheduler_name():
    with pytest.raises(ValueError, match="scheduler must be one of"):
        load_sd_components("CompVis/stable-diffusion-v1-4", scheduler="euler")


def test_sd15_shaped_random_pipeline_for_the_gpu_check(tmp_path):
    """`build_sd15_shaped` (what benchmarks/gpu_check.sh trains and samples): SD v1.5's layout at width 320, a narrow
    copy loads through the same code path with 77-token prompts; the script itself parses."""
    import subprocess
    from pathlib import Path

    from diffrl.models.tiny import build_sd15_shaped, sd15_unet_settings

    settings = sd15_unet_settings(320)
    assert settings["block_out_channels"] == (320, 640, 1280, 1280) and settings["norm_num_groups"] == 32
    assert settings["layers_per_block"] == 2 and settings["attention_head_dim"] == 8
    components = load_sd_components(str(build_sd15_shaped(tmp_path / "sd", width=32, image_size=64)))
    assert components.latent_shape == (4, 8, 8) and components.tokenizer.model_max_length == 77
    assert components.unet.config.cross_attention_dim == components.text_encoder.config.hidden_size
    assert tuple(components.unet.config.block_out_channels) == (32, 64, 128, 128)
    embeds = encode_prompts(components.tokenizer, components.text_encoder, ["a photo of sks dog"])
    assert embeds.shape == (1, 77, components.text_encoder.config.hidden_size)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
