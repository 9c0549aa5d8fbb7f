"""The personalisation measurement of the zoo: retrieval, VAE ceiling, settings and the model card's table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from diffrl.evaluation import Subject
from diffrl.zoo.training.card import _personalisation, _targets
from diffrl.zoo.training.personalisation import (
    PersonalisationConfig,
    blank_floor,
    by_prompt_kind,
    retrieval,
    settings,
    vae_ceiling,
)


def flat(images: torch.Tensor) -> torch.Tensor:
    """A stand-in image encoder: the flattened pixels (cosine = pixel cosine)."""
    return images.flatten(1)


def test_retrieval_counts_generations_nearest_to_the_right_subject():
    red, blue = torch.zeros(3, 3, 4, 4), torch.zeros(3, 3, 4, 4)
    red[:, 0], blue[:, 2] = 1.0, 1.0
    galleries = {"red": flat(red), "blue": flat(blue)}
    generated = torch.cat([red[:3], blue[:1]])  # three red, one blue
    assert retrieval(flat, generated, galleries, "red") == pytest.approx(0.75)
    assert retrieval(flat, generated, galleries, "blue") == pytest.approx(0.25)


def _subject(tmp_path, images: torch.Tensor) -> Subject:
    paths = []
    tmp_path.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        path = tmp_path / f"{i:02d}.png"
        Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()).save(path)
        paths.append(path)
    return Subject("thing", "dog", True, tuple(paths), ("a sks dog",), "sks")


def test_vae_ceiling_is_the_cosine_and_psnr_of_the_reconstructions(tmp_path):
    torch.manual_seed(0)
    refs = torch.rand(2, 3, 16, 16)
    subject = _subject(tmp_path, refs)
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4).eval()
    got = vae_ceiling(vae, flat, subject)
    x = torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1).float() / 255
                     for p in subject.image_paths])
    with torch.no_grad():
        rec = ((vae.decode(vae.encode(x * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)
    cos = torch.cosine_similarity(flat(rec), flat(x), dim=-1).mean().item()
    psnr = (10 * torch.log10(1 / ((rec - x) ** 2).flatten(1).mean(1))).mean().item()
    assert got["vae_dino_ceiling"] == pytest.approx(cos, abs=1e-4)
    assert got["vae_psnr"] == pytest.approx(psnr, abs=0.01)
    assert got["vae_psnr"] < 20  # a random VAE reconstructs badly: the measurement does not flatter it


def test_blank_floor_is_what_an_empty_image_in_the_backdrop_colour_scores(tmp_path):
    empty = torch.full((2, 3, 16, 16), 0.8)
    assert blank_floor(flat, _subject(tmp_path / "a", empty)) == pytest.approx(1.0, abs=1e-3)
    glyph = empty.clone()
    glyph[:, :, 4:12, 4:12] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)  # a red square on the backdrop
    assert blank_floor(flat, _subject(tmp_path / "b", glyph)) < 0.95


def test_only_dreambooth_is_measured_and_generations_are_kept():
    with pytest.raises(ValueError, match="DreamBooth"):
        PersonalisationConfig(train={"method": "dpg"})
    cfg = PersonalisationConfig(train={"lr_actor": 1e-4})
    assert cfg.evaluation.save_images  # retrieval reads the saved generations back
    assert json.loads(json.dumps(settings(cfg)))["train"] == {"lr_actor": 1e-4}
    assert "library defaults" in settings(PersonalisationConfig())["train"]


def _record(dino: float, ceiling: float) -> dict:
    row = {"dino": dino, "retrieval": 0.9, "vae_dino_ceiling": ceiling, "vae_psnr": 26.0, "clip_t": 0.6,
           "clip_t_base": 0.62, "dino_blank": 0.1}
    return {"subjects": {"guide_dog": row, "racing_car": {**row, "vae_dino_ceiling": 0.5}}, "mean_dino": dino,
            "mean_retrieval": 0.9, "clip_t": 0.6, "clip_t_base": 0.62, "mean_vae_dino_ceiling": (ceiling + 0.5) / 2,
            "min_vae_dino_ceiling": 0.5, "mean_vae_psnr": 26.0, "settings": settings(PersonalisationConfig())}


def test_the_card_shows_the_table_and_judges_the_targets():
    pers = _record(0.65, 0.98)
    table = _personalisation(pers)
    assert "| guide_dog | 0.650 | 0.90 | 0.980 | 26.0 | 0.600 | 0.620 | 0.100 |" in table
    assert "| racing_car | 0.650 | 0.90 | 0.500 |" in table
    assert "library defaults" in table
    from diffrl.zoo.training.card import BuildTime

    lines = _targets({"eval": {"personalisation": pers}}, BuildTime(60.0, True, "")).splitlines()
    verdict = {line.split(":")[0].lstrip("- "): line.endswith("**met**") for line in lines}
    assert verdict["DreamBooth (library defaults) mean DINO"]
    assert verdict["DreamBooth mean retrieval"]
    assert verdict["CLIP-T personalised minus base"]
    assert not verdict["VAE DINO ceiling, worst subject"]  # racing_car 0.5 < 0.85
    low = _targets({"eval": {"personalisation": _record(0.29, 0.98)}}, BuildTime(60.0, True, ""))
    assert "mean DINO: 0.29 (target >= 0.6): **MISSED**" in low
    assert "Not measured" in _personalisation({})


def test_scores_split_into_new_context_prompts_and_recolouring_prompts():
    from diffrl.evaluation.protocol import PromptResult, SubjectResult
    from diffrl.zoo.world import prompt_colour

    assert [prompt_colour(p) for p in ("a purple sks dog on the beach", "a sks dog in the snow", "a red dog")] == [
        "purple", None, "red"]
    prompts = [PromptResult("a sks dog in the snow", "a dog in the snow", 0, {"DINO": [0.8, 0.6], "CLIP-T": [0.3, 0.3]}),
               PromptResult("a blue sks dog", "a blue dog", 2, {"DINO": [0.1, -0.1], "CLIP-T": [0.5, 0.7]}),
               PromptResult("a sks dog on the beach", "a dog on the beach", 4, {"DINO": [0.5, 0.5], "CLIP-T": [0.2, 0.4]})]
    result = SubjectResult("dog", "dog", "sks", True, 4, prompts, "grid.png")
    assert by_prompt_kind(result) == pytest.approx({"dino_context": 0.6, "clip_t_context": 0.3,
                                                    "dino_colour": 0.0, "clip_t_colour": 0.6})
    assert by_prompt_kind(SubjectResult("dog", "dog", "sks", True, 4, prompts[:1], "g.png")) == pytest.approx(
        {"dino_context": 0.7, "clip_t_context": 0.3})


def test_saved_generations_are_split_by_prompt_kind_with_their_prompts(tmp_path):
    import dataclasses

    from diffrl.evaluation import load_dreambench
    from diffrl.zoo import load
    from diffrl.zoo.training.personalisation import saved_by_prompt_kind

    subject = next(s for s in load_dreambench(load("emoji").subjects) if s.name == "guide_dog")
    prompts = ["a sks dog in the snow", "a purple sks dog", "a blue sks dog on the beach", "a sks dog"]
    report = {"subjects": [{"name": "guide_dog", "prompts": [{"prompt": p} for p in prompts]}]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    (tmp_path / "images" / "guide_dog").mkdir(parents=True)
    for index, shade in enumerate((10, 200, 220, 30)):
        for image in range(2):
            Image.new("RGB", (8, 8), (shade,) * 3).save(tmp_path / "images" / "guide_dog" / f"{index:02d}_{image}.png")
    split = saved_by_prompt_kind(tmp_path, subject)
    (context, context_prompts), (colour, colour_prompts) = split["context"], split["colour"]
    assert context.shape == colour.shape == (4, 3, 8, 8)
    assert colour.mean() > 0.75 > 0.25 > context.mean()  # prompts 01 and 02 are the recolouring ones
    assert context_prompts == ["a sks dog in the snow"] * 2 + ["a sks dog"] * 2
    assert colour_prompts == ["a purple sks dog"] * 2 + ["a blue sks dog on the beach"] * 2
    with pytest.raises(FileNotFoundError, match="No saved generations of black_cat"):
        saved_by_prompt_kind(tmp_path, dataclasses.replace(subject, name="black_cat"))
