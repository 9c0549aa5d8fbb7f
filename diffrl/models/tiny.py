"""Tiny randomly initialised models in the real on-disk formats, for tests and offline smoke runs.

They are written with the libraries' own ``save_pretrained`` / safetensors and loaded back through the same code
paths as Stable Diffusion v1, DINO ViT-S/16 and CLIP ViT-B/32. They are *not* pretrained: see `diffrl.zoo`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
)

# The noise schedule of Stable Diffusion v1.
SD_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)
TINY_DINO_KWARGS = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def _bytes_to_unicode() -> list[str]:
    """The 256 printable characters GPT-2/CLIP byte-level BPE uses for the bytes 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def write_char_tokenizer(folder: Path, words: tuple[str, ...] = ("sks",), max_length: int = 16) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over single bytes, plus whole-word tokens for ``words`` (e.g. the identifier "sks"),
    padding and truncating to ``max_length`` tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode())
    vocab_list = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]
    merges: list[str] = []
    for word in words:  # merge left to right: s k -> sk, sk s</w> -> sks</w>
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            vocab_list.append(pieces[0])
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], model_max_length=max_length)
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_tiny_sd(folder: str | Path, seed: int = 0, image_size: int = 16) -> Path:
    """Write a tiny random Stable-Diffusion-format pipeline folder (latents 4 x image_size/2 x image_size/2)."""
    unet = dict(layers_per_block=1, block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4, norm_num_groups=8)
    vae = dict(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
               block_out_channels=(8, 16), norm_num_groups=4)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return write_random_sd(folder, unet, vae, text, image_size, max_length=16, seed=seed)


def sd15_unet_settings(width: int = 320) -> dict:
    """`UNet2DConditionModel` settings of Stable Diffusion v1's layout (4 levels of 2 layers, cross-attention in the
    first three) with ``width`` base channels: 320 is SD v1.5's U-Net exactly (32 norm groups; fewer below width 64)."""
    return dict(layers_per_block=2, block_out_channels=(width, 2 * width, 4 * width, 4 * width),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, attention_head_dim=8,
                norm_num_groups=min(32, width // 2))


def build_sd15_shaped(folder: str | Path, seed: int = 0, width: int = 320, image_size: int = 512) -> Path:
    """Write a random pipeline with Stable Diffusion v1.5's architecture (width 320: its U-Net, 860M parameters, VAE
    and CLIP ViT-L/14 text encoder exactly; the tokenizer is a byte-level stand-in), for GPU cost checks without a
    download. A smaller ``width`` (a multiple of 32) scales U-Net, VAE and text encoder down for smoke runs."""
    scale = width / 320
    unet = sd15_unet_settings(width)
    vae_widths = tuple(max(32, int(c * scale) // 32 * 32) for c in (128, 256, 512, 512))
    vae = dict(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
               block_out_channels=vae_widths, layers_per_block=2, norm_num_groups=32)
    hidden = max(64, int(768 * scale) // 64 * 64)
    text = dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=12 if width == 320 else 2,
                num_attention_heads=hidden // 64, hidden_act="quick_gelu")
    return write_random_sd(folder, unet, vae, text, image_size, max_length=77, seed=seed)


def write_random_sd(folder: str | Path, unet: dict, vae: dict, text: dict, image_size: int, max_length: int,
                    seed: int = 0) -> Path:
    """Save a randomly initialised `StableDiffusionPipeline` (DDIM, SD v1's noise schedule) with the given U-Net,
    VAE and CLIP text-encoder settings; the U-Net's cross-attention width is the text encoder's."""
    folder = Path(folder)
    torch.manual_seed(seed)
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    unet_model = UNet2DConditionModel(sample_size=image_size // factor, in_channels=4, out_channels=4,
                                      cross_attention_dim=text["hidden_size"], **unet)
    vae_model = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=image_size, **vae)
    tokenizer = write_char_tokenizer(folder / "tokenizer", max_length=max_length)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **text,
        )
    )
    pipe = StableDiffusionPipeline(
        vae=vae_model,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet_model,
        scheduler=DDIMScheduler(**SD_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def build_tiny_dino(path: str | Path, seed: int = 0) -> tuple[Path, dict]:
    """Write a tiny random timm ViT (the ``vit_small_patch16_224.dino`` architecture family) as safetensors.

    Returns the file and the ``timm.create_model`` keyword arguments that rebuild its architecture.
    """
    import timm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = timm.create_model("vit_small_patch16_224.dino", pretrained=False, num_classes=0, **TINY_DINO_KWARGS)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, dict(TINY_DINO_KWARGS)


def build_tiny_clip(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """Write a tiny random `transformers` CLIPModel with its processor (tokenizer + image processor)."""
    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = write_char_tokenizer(folder)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
        ),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder
