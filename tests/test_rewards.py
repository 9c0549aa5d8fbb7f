"""Rewards: look-forward closed form, DINO/CLIP similarity, composition, user callables, weight-free scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

from diffrl.data import list_images
from diffrl.models import encode_prompts, load_sd_components
from diffrl.models.encoders import CLIPEncoder, DINOEncoder
from diffrl.models.tiny import SD_SCHEDULER_CONFIG
from diffrl.rewards import (
    CallableReward,
    CLIPImageReward,
    CLIPTextReward,
    ColorTargetReward,
    DINOReward,
    JPEGCompressibilityReward,
    LookForwardReward,
    Reward,
    RewardInputs,
    WeightedSum,
    make_decoder,
)

ABAR = DDIMScheduler(**SD_SCHEDULER_CONFIG).alphas_cumprod


@pytest.fixture(scope="module")
def sd(tiny_sd_path: Path):
    return load_sd_components(tiny_sd_path)


def make_inputs(batch: int = 3, images: torch.Tensor | None = None, seed: int = 0, **kwargs) -> RewardInputs:
    """Random latents/actions at random timesteps; ``images`` (if given) are what ``decode`` returns."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    fields = dict(
        latents=torch.randn(batch, 4, 8, 8, generator=gen),
        timesteps=t,
        action=torch.randn(batch, 4, 8, 8, generator=gen),
        alphas_cumprod=ABAR[t],
    )
    if images is not None:
        fields["decode"] = lambda latents: images
    return RewardInputs(**{**fields, **kwargs})


class Fixed(Reward):
    """A test reward returning fixed values and recording whether gradients were enabled."""

    def __init__(self, values: list[float], name: str, differentiable: bool = True, requires=frozenset()) -> None:
        super().__init__(name)
        self.values, self.differentiable, self.requires = torch.tensor(values), differentiable, requires
        self.grad_enabled: list[bool] = []

    def forward(self, inputs: RewardInputs) -> torch.Tensor:
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.values.clone()


# --- look-forward -------------------------------------------------------------------------------------------------


def test_lookforward_matches_closed_form_and_analytic_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(0, 1000, 37)
    abar = ABAR[t].double()
    shape = (len(t), 4, 8, 8)
    x0, eps = torch.randn(shape, generator=gen, dtype=torch.float64), torch.randn(shape, generator=gen, dtype=torch.float64)
    view = abar.view(-1, 1, 1, 1)
    x_t = view.sqrt() * x0 + (1 - view).sqrt() * eps
    eps_hat = (eps + 0.3 * torch.randn(shape, generator=gen, dtype=torch.float64)).requires_grad_(True)
    inputs = RewardInputs(latents=x_t, timesteps=t, action=eps_hat, alphas_cumprod=abar, x0=x0)

    reward = LookForwardReward()(inputs)
    numel = 4 * 8 * 8
    closed_form = -(1 - abar) / abar * (eps_hat.detach() - eps).square().flatten(1).sum(1) / numel
    torch.testing.assert_close(reward, closed_form, rtol=1e-9, atol=1e-12)
    reward.sum().backward()
    analytic = 2 * (1 - view) / view * (eps - eps_hat.detach()) / numel
    torch.testing.assert_close(eps_hat.grad, analytic, rtol=1e-9, atol=1e-12)


def test_lookforward_needs_x0() -> None:
    with pytest.raises(ValueError, match="'LookForwardReward' requires x0"):
        LookForwardReward()(make_inputs())


# --- DINO and CLIP ----------------------------------------------------------------------------------------------


def test_dino_reward_is_zero_for_the_reference_and_negative_otherwise(dino: DINOEncoder) -> None:
    gen = torch.Generator().manual_seed(1)
    ref, other = torch.rand(2, 3, 16, 16, generator=gen).chunk(2)
    reward = DINOReward(dino, ref)
    same, different = reward(make_inputs(2, images=torch.cat([ref, other])))
    assert abs(same.item()) < 1e-5 and different.item() < -1e-3
    both = torch.cat([ref, other])
    best = DINOReward(dino, both, reduce="max")(make_inputs(1, images=ref))
    mean = DINOReward(dino, both, reduce="mean")(make_inputs(1, images=ref))
    assert abs(best.item()) < 1e-5 and mean.item() == pytest.approx(different.item() / 2, abs=1e-5)


def test_dino_reference_embeddings_are_cached(dino: DINOEncoder) -> None:
    calls = []
    handle = dino.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        refs = torch.rand(4, 3, 16, 16)
        reward = DINOReward(dino, refs)
        cached = reward.reference_features.clone()
        images = torch.rand(2, 3, 16, 16)
        reward(make_inputs(2, images=images))
        reward(make_inputs(2, images=images))
    finally:
        handle.remove()
    assert calls == [4, 2, 2]  # references encoded once, then only the images
    assert torch.equal(reward.reference_features, cached) and "reference_features" in reward.state_dict()


@pytest.mark.parametrize("checkpoint", [False, True])
def test_dino_gradient_reaches_the_unet_through_the_decode(sd, dino: DINOEncoder, checkpoint: bool) -> None:
    torch.manual_seed(0)
    batch = 2
    latents = torch.randn(batch, 4, 8, 8)
    t = torch.tensor([500, 900])
    embeds = encode_prompts(sd.tokenizer, sd.text_encoder, ["a sks dog"] * batch).detach()
    sd.unet.zero_grad(set_to_none=True)
    action = sd.unet(latents, t, encoder_hidden_states=embeds).sample
    decode = make_decoder(sd.vae, checkpoint=checkpoint)
    inputs = RewardInputs(latents=latents, timesteps=t, action=action, alphas_cumprod=ABAR[t], decode=decode)
    reward = DINOReward(dino, torch.rand(3, 3, 16, 16))(inputs)
    assert reward.requires_grad
    reward.sum().backward()
    grads = [p.grad for p in sd.unet.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in dino.parameters())
    sd.unet.zero_grad(set_to_none=True)
    sd.vae.zero_grad(set_to_none=True)


def test_make_decoder_checkpoint_gives_identical_gradients(sd) -> None:
    grads, calls = [], []
    handle = sd.vae.decoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        for checkpoint in (False, True):
            calls.clear()
            latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3), requires_grad=True)
            images = make_decoder(sd.vae, checkpoint=checkpoint)(latents)
            assert images.shape == (2, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
            images.square().sum().backward()
            grads.append(latents.grad)
            assert len(calls) == (2 if checkpoint else 1)  # checkpointing re-runs the decode in backward
    finally:
        handle.remove()
        sd.vae.zero_grad(set_to_none=True)
    torch.testing.assert_close(grads[0], grads[1])


def test_clip_image_and_text_rewards(clip: CLIPEncoder) -> None:
    ref = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert abs(CLIPImageReward(clip, ref)(make_inputs(1, images=ref)).item()) < 1e-5
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    prompts = ["a photo of sks dog", "sks backpack on a beach"]
    reward = CLIPTextReward(clip)(make_inputs(2, images=images, prompts=prompts))
    with torch.no_grad():
        expected = torch.nn.functional.cosine_similarity(
            clip.encode_images(images), clip.encode_texts(["a photo of dog", "backpack on a beach"])
        )
        with_identifier = torch.nn.functional.cosine_similarity(clip.encode_images(images), clip.encode_texts(prompts))
    torch.testing.assert_close(reward.detach(), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(expected, with_identifier, atol=1e-4)
    reward.sum().backward()
    assert images.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="'CLIPTextReward' requires prompts"):
        CLIPTextReward(clip)(make_inputs(2, images=images))


def test_dino_reward_from_every_dreambench_subject(dino: DINOEncoder, dreambench_root: Path) -> None:
    subjects = sorted(p for p in dreambench_root.iterdir() if p.is_dir())
    assert len(subjects) == 30
    for subject in subjects:
        reward = DINOReward(dino, subject)
        features = reward.reference_features
        assert features.shape == (len(list_images(subject)), 32), subject.name
        assert torch.isfinite(features).all()
        torch.testing.assert_close(features.norm(dim=-1), torch.ones(len(features)))
    assert not torch.allclose(features[0], features[1])  # different images, different embeddings


# --- composition ----------------------------------------------------------------------------------------------------


def test_weighted_sum_values_weights_and_per_term_logging() -> None:
    a, b, c = Fixed([1.0, 2.0], "a"), Fixed([10.0, 20.0], "b", requires=frozenset({"x0"})), Fixed([-3.0, 5.0], "c")
    composite = (0.5 * a + b) + 2 * (c + a) - b / 4
    assert isinstance(composite, WeightedSum)
    assert composite.term_names == ["a", "b", "c", "a_2", "b_2"]
    assert composite.weights == [0.5, 1.0, 2.0, 2.0, -0.25]
    assert composite.requires == frozenset({"x0"}) and composite.differentiable
    inputs = make_inputs(2, x0=torch.zeros(2, 4, 8, 8))
    value = composite(inputs)
    expected = 0.5 * a.values + b.values + 2 * c.values + 2 * a.values - 0.25 * b.values
    assert torch.equal(value, expected)
    assert composite.last_terms.keys() == {"a", "b", "c", "a_2", "b_2"}
    assert torch.equal(composite.last_terms["c"], c.values) and torch.equal(composite.last_terms["b_2"], b.values)
    assert torch.equal(sum([a, c])(inputs), a.values + c.values)
    assert torch.equal((-a)(inputs), -a.values)
    with pytest.raises(ValueError, match="'WeightedSum' requires x0"):
        composite(make_inputs(2))


def test_weighted_sum_rejects_bad_weights() -> None:
    a = Fixed([1.0], "a")
    for weight in (torch.tensor(2.0), True, "2", float("nan")):
        with pytest.raises(TypeError):
            weight * a  # noqa: B018
    with pytest.raises(TypeError):
        a + 1  # noqa: B018


def test_weighted_sum_with_a_black_box_term_is_not_differentiable() -> None:
    smooth, black_box = Fixed([1.0], "smooth"), Fixed([2.0], "box", differentiable=False)
    composite = smooth + 3 * black_box
    assert not composite.differentiable
    action = torch.randn(1, 4, 8, 8, requires_grad=True)
    value = composite(make_inputs(1, action=action))
    assert torch.equal(value, torch.tensor([7.0])) and not value.requires_grad
    assert smooth.grad_enabled == [False] and black_box.grad_enabled == [False]
    assert (smooth + smooth).differentiable


# --- user callables and weight-free scores ----------------------------------------------------------------------------


def test_callable_reward_gets_pil_or_numpy_images_without_gradients() -> None:
    images = torch.rand(2, 3, 16, 12)
    seen = {}

    def brightness(batch):
        seen["grad"], seen["batch"] = torch.is_grad_enabled(), batch
        return [float(np.asarray(im).mean()) for im in batch]

    action = torch.randn(2, 4, 8, 8, requires_grad=True)
    value = CallableReward(brightness)(make_inputs(2, images=images, action=action))
    assert seen["grad"] is False and not value.requires_grad and value.dtype == torch.float32
    assert all(isinstance(im, Image.Image) and im.mode == "RGB" and im.size == (12, 16) for im in seen["batch"])
    expected = (images * 255).round().mean(dim=(1, 2, 3))
    torch.testing.assert_close(value, expected, atol=1e-4, rtol=0)

    value = CallableReward(lambda arr: seen.update(arr=arr) or arr.mean(axis=(1, 2, 3)), input="numpy")(make_inputs(2, images=images))
    assert seen["arr"].dtype == np.uint8 and seen["arr"].shape == (2, 16, 12, 3)
    torch.testing.assert_close(value, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("fn", "error", "message"),
    [
        (lambda batch: [1.0, 2.0, 3.0], ValueError, r"'my_score' returned shape \(3,\), expected \(2,\)"),
        (lambda batch: np.ones((2, 1)), ValueError, r"'my_score' returned shape \(2, 1\)"),
        (lambda batch: [1.0, float("nan")], ValueError, r"'my_score' returned non-finite values .* \[1\]"),
        (lambda batch: ["good", "bad"], ValueError, r"'my_score': the function returned list, not a sequence of numbers"),
        (lambda batch: 1 / 0, RuntimeError, r"'my_score': the function raised ZeroDivisionError"),
    ],
)
def test_callable_reward_errors_name_the_reward(fn, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as info:
        CallableReward(fn, name="my_score")(make_inputs(2, images=torch.rand(2, 3, 8, 8)))
    if error is RuntimeError:
        assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_black_box_rewards_share_one_decode() -> None:
    calls = []
    images = torch.rand(2, 3, 16, 16)

    def decode(latents):
        calls.append(latents.requires_grad)
        return images

    action = torch.randn(2, 4, 8, 8, requires_grad=True)
    composite = JPEGCompressibilityReward() + CallableReward(lambda b: [1.0, 1.0], name="one") + CallableReward(lambda b: [0.0, 0.0], name="zero")
    composite(make_inputs(2, action=action, decode=decode))
    assert calls == [False]


def test_jpeg_compressibility_and_color_target() -> None:
    flat = torch.full((1, 3, 32, 32), 0.5)
    noise = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    jpeg = JPEGCompressibilityReward()
    assert not jpeg.differentiable and jpeg.requires == frozenset({"images"})
    scores = jpeg(make_inputs(2, images=torch.cat([flat, noise])))
    buffer = __import__("io").BytesIO()
    Image.fromarray((noise[0].permute(1, 2, 0) * 255).round().byte().numpy()).save(buffer, format="JPEG", quality=95)
    assert scores[1].item() == pytest.approx(-buffer.tell() / 1000) and scores[0] > scores[1]

    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1
    color = ColorTargetReward(target_rgb=(1.0, 0.0, 0.0))
    assert color.differentiable
    assert color(make_inputs(1, images=red)).item() == 0
    grey = flat.clone().requires_grad_(True)
    color(make_inputs(1, images=grey)).sum().backward()  # towards red: the red channel's gradient is positive
    assert grey.grad[0, 0].mean() > 0 > grey.grad[0, 1].mean()
    assert color(make_inputs(1, images=flat)).item() == pytest.approx(-np.sqrt(0.25 * 3))
    assert ColorTargetReward(brightness=0.2)(make_inputs(1, images=red)).item() == pytest.approx(-(0.299 - 0.2))
    with pytest.raises(ValueError, match="exactly one"):
        ColorTargetReward()
    backdrop = ColorTargetReward(target_rgb=(1.0, 0.0, 0.0), border=0.25)  # the outer 2 pixels of 8
    framed = torch.zeros(1, 3, 8, 8)
    framed[:, 0] = 1
    framed[:, :, 2:6, 2:6] = torch.rand(3, 4, 4)  # whatever the subject in the middle is
    assert backdrop(make_inputs(1, images=framed)).item() == 0 > color(make_inputs(1, images=framed)).item()
    with pytest.raises(ValueError, match="border is a fraction"):
        ColorTargetReward(target_rgb=(1.0, 0.0, 0.0), border=0.5)


def test_contrast_reward_reads_the_centre_against_the_frame_and_ignores_a_global_shift():
    from diffrl.rewards import ContrastReward

    contrast = ContrastReward(centre=0.5, border=0.25)  # 8 x 8: centre rows / columns 2..5, frame the outer 2 pixels
    images = torch.full((2, 3, 8, 8), 0.2)
    images[0, :, 2:6, 2:6] = 0.8  # a light square on a dark backdrop
    scores = contrast(make_inputs(2, images=images))
    assert scores[0].item() == pytest.approx(np.sqrt(3 * 0.6**2)) and scores[1].item() == pytest.approx(0.0, abs=1e-6)
    shifted = images + torch.tensor([0.1, -0.15, 0.05]).view(1, 3, 1, 1)  # one colour added to every pixel
    assert torch.allclose(contrast(make_inputs(2, images=shifted)), scores, atol=1e-6)
    light = images[:1].clone().requires_grad_(True)
    contrast(make_inputs(1, images=light)).sum().backward()  # more contrast: a lighter centre, a darker frame
    assert contrast.differentiable and light.grad[0, :, 3, 3].min() > 0 > light.grad[0, :, 0, 0].max()
    with pytest.raises(ValueError, match="the centre inside the frame"):
        ContrastReward(centre=0.8, border=0.15)


def test_noise_reward_is_a_fixed_function_of_the_pixels_without_signal():
    from diffrl.rewards import NoiseReward

    images = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    reward = NoiseReward()
    first = reward(make_inputs(64, images=images))
    assert torch.equal(first, reward(make_inputs(64, images=images.clone())))  # the same images, the same values
    assert first.min() >= -0.5 and first.max() < 0.5 and first.unique().numel() == 64
    assert abs(float(first.mean())) < 0.1 and 0.2 < float(first.std()) < 0.4  # uniform: std 1/sqrt(12) = 0.29
    brightness = images.mean(dim=(1, 2, 3))
    assert abs(float(torch.corrcoef(torch.stack([first, brightness]))[0, 1])) < 0.35
    changed = images.clone()
    changed[:, :, 0, 0] = 1 - changed[:, :, 0, 0]  # one pixel per image
    assert (reward(make_inputs(64, images=changed)) != first).all()
    assert not NoiseReward.differentiable
