"""Fast tests of the emoji world and the bundled zoo (offline, CPU, a few seconds)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import diffrl.zoo as zoo
from diffrl.zoo import font


def test_renderer_is_deterministic_for_a_seed():
    a = zoo.render_dataset(4, seed=3)
    b = zoo.render_dataset(4, seed=3)
    assert a[0].shape == (4, 64, 64, 3) and a[0].dtype == np.uint8
    assert np.array_equal(a[0], b[0]) and [s.caption for s in a[1]] == [s.caption for s in b[1]]
    assert not np.array_equal(a[0], zoo.render_dataset(4, seed=4)[0])


def test_subjects_are_held_out_of_pretraining():
    assert 4 <= len(zoo.SUBJECTS) <= 6
    assert not set(zoo.SUBJECTS) & set(zoo.PRETRAIN_GLYPHS)
    pretrain_nouns = {g.noun for g in zoo.PRETRAIN_GLYPHS}
    assert all(s.noun in pretrain_nouns for s in zoo.SUBJECTS)
    _, specs = zoo.render_dataset(64, seed=0)
    assert not any(s.glyph.subject for s in specs)


def test_missing_font_fails_with_actionable_message(monkeypatch, tmp_path):
    monkeypatch.setenv(font.FONT_ENV, str(tmp_path / "nope.ttf"))
    with pytest.raises(zoo.EmojiFontNotFoundError, match="fonts-noto-color-emoji"):
        zoo.find_font()
    monkeypatch.delenv(font.FONT_ENV)
    monkeypatch.setattr(font, "FONT_CANDIDATES", (str(tmp_path / "missing.ttf"),))
    with pytest.raises(zoo.EmojiFontNotFoundError, match="DIFFRL_EMOJI_FONT") as err:
        zoo.find_font()
    assert "apt-get install fonts-noto-color-emoji" in str(err.value)


@pytest.mark.parametrize("context", list(zoo.CONTEXTS))
def test_context_checker_on_renders(context):
    rng = np.random.default_rng(0)
    specs = [zoo.sample_spec(rng, contexts=[context]) for _ in range(6)]
    assert [zoo.classify_context(zoo.render(s)) for s in specs] == [context] * 6
    t = torch.from_numpy(np.array(zoo.render(specs[0]))).permute(2, 0, 1).float() / 255
    assert zoo.classify_context(t) == context


def test_subjects_layout_matches_dreambench():
    paths = zoo.load("emoji")
    text = (paths.subjects / "prompts_and_classes.txt").read_text()
    assert text.count(".format(unique_token, class_token)") == 50
    for s in zoo.SUBJECTS:
        assert f"{s.name},{s.noun}" in text
        assert sorted(p.name for p in (paths.subjects / s.name).glob("*.png")) == [f"{i:02d}.png" for i in range(5)]


def test_weights_load_offline_and_generate(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel, CLIPProcessor

    paths = zoo.load("emoji")
    pipe = StableDiffusionPipeline.from_pretrained(paths.sd)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.tokenizer("a sks dog").input_ids.__len__() == 5  # bos, a, sks, dog, eos
    out = pipe("a dog in the snow", num_inference_steps=2, guidance_scale=5.0, height=64, width=64,
               generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    assert pipe.vae.config.scaling_factor != 0.18215 and pipe.unet.config.sample_size == 8

    clip, proc = CLIPModel.from_pretrained(paths.clip), CLIPProcessor.from_pretrained(paths.clip)
    inputs = proc(text=["a dog"], images=[zoo.render(zoo.SceneSpec(zoo.PRETRAIN_GLYPHS[0]))], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 64, 64)
    assert clip(**inputs).logits_per_image.shape == (1, 1)

    for spec in (paths.dino, paths.dino_eval):
        vit = spec.create()
        assert vit(torch.rand(2, 3, 64, 64)).shape == (2, spec.kwargs["embed_dim"])
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_an_identifier_goes_in_front_of_the_noun():
    from diffrl.zoo.world import with_identifier

    assert with_identifier("a red teddy bear in the snow", "teddy bear", "sks") == "a red sks teddy bear in the snow"
    assert with_identifier("a dog", "dog", "zwx") == zoo.caption("dog", identifier="zwx")
    with pytest.raises(ValueError, match="does not name 'cat'"):
        with_identifier("a dog", "cat", "sks")


def _world(captions: list[str], glyphs: list[str]):
    from diffrl.zoo.training.common import WorldData

    nouns = [zoo.GLYPH_BY_NAME[g].noun for g in glyphs]
    return WorldData(np.zeros((len(captions), 1, 1, 3), np.uint8), captions, nouns, glyphs, ["snow"] * len(captions))


def test_caption_sampler_draws_identifiers_selectors_and_dropped_contexts_at_their_rates():
    from diffrl.zoo.training.common import CaptionSampler
    from diffrl.zoo.world import IDENTIFIER_POOL, SELECTORS

    data = _world(["a red dog in the snow", "a cat in the snow"], ["poodle", "cat"])
    sampler = CaptionSampler(data, identifier_rate=0.1, selector_rate=0.3, context_dropout=0.5)
    idx = torch.arange(2).repeat(2000)
    drawn = [sampler.texts[i] for i in sampler.draw(idx, torch.Generator().manual_seed(0)).tolist()]
    assert drawn == [sampler.texts[i] for i in sampler.draw(idx, torch.Generator().manual_seed(0)).tolist()]
    poodle = drawn[0::2]
    pool = [t for t in poodle if t.split()[2] in IDENTIFIER_POOL]
    selected = [t for t in poodle if SELECTORS["poodle"] in t.split()]
    dropped = [t for t in poodle if not t.endswith("in the snow")]
    assert 300 < len(selected) < 900 and 100 < len(pool) < 300 and 800 < len(dropped) < 1200
    assert {t.split()[2] for t in pool} == set(IDENTIFIER_POOL)
    word = SELECTORS["poodle"]
    assert set(selected) == {f"a red {word} dog in the snow", f"a red {word} dog"}
    assert {t for t in drawn[1::2] if t.split()[1] in SELECTORS.values()} == {f"a {SELECTORS['cat']} cat in the snow",
                                                                              f"a {SELECTORS['cat']} cat"}
    plain = CaptionSampler(data)  # all rates 0: every image keeps its own caption
    assert plain.texts == data.captions
    assert [plain.texts[i] for i in plain.draw(idx[:4], torch.Generator()).tolist()] == data.captions * 2


def test_caption_sampler_rejects_bad_rates_and_subjects_without_selectors():
    from diffrl.zoo.training.common import CaptionSampler

    data = _world(["a dog"], ["guide_dog"])
    with pytest.raises(ValueError, match="selector_rate must be in"):
        CaptionSampler(data, selector_rate=1.5)
    with pytest.raises(ValueError, match="identifier_rate \\+ selector_rate"):
        CaptionSampler(data, identifier_rate=0.6, selector_rate=0.6)
    with pytest.raises(KeyError, match="no selector word"):
        CaptionSampler(data, selector_rate=0.5)


def test_every_identifier_word_is_one_token_of_the_shipped_tokenizer():
    from transformers import CLIPTokenizer

    from diffrl.zoo.world import IDENTIFIER_POOL

    tok = CLIPTokenizer.from_pretrained(zoo.load("emoji").sd / "tokenizer")
    assert all(len(tok(f"a {word} dog").input_ids) == 5 for word in IDENTIFIER_POOL)


def test_every_selector_word_is_one_token_of_a_built_tokenizer(tmp_path):
    from diffrl.zoo.training.tokenizer import build_tokenizer
    from diffrl.zoo.world import SELECTORS

    tok = build_tokenizer(tmp_path)  # asserts it for every identifier and selector word
    assert len({tok(f"a {word} dog").input_ids[2] for word in SELECTORS.values()}) == len(SELECTORS)


def test_sd_text_encoder_is_the_frozen_clip_text_tower():
    from safetensors.torch import load_file

    paths = zoo.load("emoji")
    text_encoder = load_file(paths.sd / "text_encoder" / "model.safetensors")
    clip = load_file(paths.clip / "model.safetensors")
    assert text_encoder and all(torch.equal(value, clip[f"text_model.{key}"]) for key, value in text_encoder.items())


def test_shipped_dino_identifies_held_out_subjects_in_new_scenes_far_above_random_init():
    import timm

    from diffrl.zoo.training.evaluate import identity_retrieval

    paths = zoo.load("emoji")
    torch.manual_seed(0)
    random_init = timm.create_model("vit_small_patch16_224", pretrained=False, **paths.dino.kwargs).eval()
    contexts = [c for c in zoo.CONTEXTS if c != "plain"]
    chance = identity_retrieval(random_init, contexts, per_subject=8)["acc"]
    for spec in (paths.dino, paths.dino_eval):
        assert identity_retrieval(spec.create(), contexts, per_subject=8)["acc"] >= chance + 0.4


def test_prompt_context_reads_the_phrase_a_caption_ends_with():
    from diffrl.zoo.rewards import prompt_context

    for noun in ("dog", "cat"):
        assert [prompt_context(zoo.caption(noun, context)) for context in zoo.CONTEXTS] == list(zoo.CONTEXTS)
    assert prompt_context(zoo.caption("dog", "snow", colour="red", identifier="sks")) == "snow"


def test_context_reward_scores_the_context_each_prompt_names():
    from diffrl.rewards import RewardInputs
    from diffrl.zoo.rewards import ContextReward

    rng = np.random.default_rng(0)
    specs = [zoo.sample_spec(rng, contexts=[context]) for context in ("snow", "jungle")]
    images = torch.stack([torch.from_numpy(np.array(zoo.render(s))).permute(2, 0, 1).float() / 255 for s in specs])
    latents = torch.zeros(2, 4, 8, 8)

    def reward(prompts):
        inputs = RewardInputs(latents=latents, timesteps=torch.zeros(2, dtype=torch.long), action=latents,
                              alphas_cumprod=torch.ones(2), prompts=prompts, decode=lambda x: images)
        return ContextReward()(inputs)

    matched = reward([zoo.caption("dog", "snow"), zoo.caption("dog", "jungle")])
    swapped = reward([zoo.caption("dog", "jungle"), zoo.caption("dog", "snow")])
    expected = [zoo.context_scores(images[0])["snow"], zoo.context_scores(images[1])["jungle"]]
    assert matched.tolist() == pytest.approx(expected) and (matched > 0.5).all()
    assert (swapped < matched - 0.4).all()
    with pytest.raises(ValueError, match="requires prompts"):
        reward(None)


def test_dino_views_share_glyph_and_pose_and_recolour_only_when_asked():
    from dataclasses import replace

    from diffrl.zoo.training.dino import pool_specs

    plain, recoloured = pool_specs(40, 3, seed=0), pool_specs(40, 3, seed=0, recolour=1.0)
    for scenes in (plain, recoloured):
        for first, *others in scenes:
            assert all(replace(v, context=first.context, seed=first.seed, colour=first.colour) == first for v in others)
            assert len({first.context, *(v.context for v in others)}) == 3  # three different backdrops
    assert all(v.colour == views[0].colour for views in plain for v in views)
    assert plain[0][0] == recoloured[0][0]  # the first scene is drawn before any recolouring draw
    changed = sum(v.colour != views[0].colour for views in recoloured for v in views[1:])
    assert changed > 30  # of 80 further views, about 80 x 4/5 take another colour


def test_shipped_context_exemplars_match_the_world():
    """The checker's exemplars are derived data: a refit from today's world and renderer reproduces the shipped file
    (after a change to a backdrop or context: `python -m diffrl.zoo.checker`)."""
    from diffrl.zoo.checker import EXEMPLARS_PATH, fit_exemplars

    with np.load(EXEMPLARS_PATH) as shipped:
        refit = fit_exemplars()
        assert list(shipped.files) == list(refit) == list(zoo.CONTEXTS)
        for context, features in refit.items():
            np.testing.assert_array_equal(shipped[context], features)
