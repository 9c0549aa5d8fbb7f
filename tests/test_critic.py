"""QCritic: size, inputs, conditioning, per-band value normalisation (PopArt); LoRA helpers."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from diffrl.agents import QCritic, add_lora, full_finetune, trainable_parameters
from diffrl.models import load_sd_components


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


ALL_INPUTS = ("x0_hat", "latents", "action", "x0", "lookforward_error")


@pytest.mark.parametrize("inputs", [("x0_hat",), ALL_INPUTS])
def test_parameter_count_for_sd_latents_is_near_the_papers(inputs):
    # the paper's critic has ~0.26M parameters; ours keeps the flattened 4x4 map (where an action acts matters)
    assert 0.25e6 <= count(QCritic((4, 64, 64), text_dim=768, inputs=inputs)) <= 0.4e6
    assert 0.2e6 <= count(QCritic((4, 64, 64), text_dim=768, inputs=inputs, width=12)) <= 0.3e6


def test_size_scales_with_latent_shape_and_width():
    assert count(QCritic((4, 8, 8), 32)) < count(QCritic((4, 32, 32), 32)) < count(QCritic((4, 64, 64), 32))
    assert count(QCritic((4, 64, 64), 768, width=8)) < count(QCritic((4, 64, 64), 768, width=32))


def inputs(batch: int = 3, shape=(4, 16, 16), tokens: int = 5, dim: int = 32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    latents, action, x0 = torch.randn(3, batch, *shape, generator=generator).unbind(0)
    return latents, torch.tensor([999, 500, 1])[:batch], torch.randn(batch, tokens, dim, generator=generator), action, x0


def test_output_shape_and_dependence_on_every_input():
    torch.manual_seed(0)
    critic = QCritic((4, 16, 16), 32, inputs=ALL_INPUTS)
    latents, timestep, embeds, action, x0 = inputs()
    x0_hat = latents - action
    q = critic(latents, timestep, embeds, action, x0_hat=x0_hat, x0=x0)
    assert q.shape == (3,) and torch.isfinite(q).all()
    changed = {
        "timestep": critic(latents, timestep.flip(0), embeds, action, x0_hat=x0_hat, x0=x0),
        "text": critic(latents, timestep, embeds + 1, action, x0_hat=x0_hat, x0=x0),
        "action": critic(latents, timestep, embeds, action + 1, x0_hat=x0_hat, x0=x0),
        "latents": critic(latents + 1, timestep, embeds, action, x0_hat=x0_hat, x0=x0),
        "x0_hat": critic(latents, timestep, embeds, action, x0_hat=x0_hat + 1, x0=x0),
        "x0": critic(latents, timestep, embeds, action, x0_hat=x0_hat, x0=x0 + 1),
    }
    for name, other in changed.items():
        assert (other - q).abs().max() > 1e-6, f"Q does not depend on {name}"
    # one sample's Q does not depend on another's inputs
    alone = critic(latents[:1], timestep[:1], embeds[:1], action[:1], x0_hat=x0_hat[:1], x0=x0[:1])
    torch.testing.assert_close(alone, q[:1], rtol=1e-5, atol=1e-6)


def test_default_critic_reads_the_action_only_through_x0_hat():
    critic = QCritic((4, 16, 16), 32)
    latents, timestep, embeds, action, x0 = inputs()
    q = critic(latents, timestep, embeds, action, x0_hat=latents - action)
    torch.testing.assert_close(critic(latents + 1, timestep, embeds, action + 1, x0_hat=latents - action), q)
    assert (critic(latents, timestep, embeds, action, x0_hat=latents - action + 0.1) - q).abs().max() > 1e-6


def test_missing_inputs_and_bad_settings_raise():
    critic = QCritic((4, 16, 16), 32, inputs=("x0_hat", "lookforward_error"))
    latents, timestep, embeds, action, _ = inputs()
    with pytest.raises(ValueError, match="x0_hat"):
        critic(latents, timestep, embeds, action)
    with pytest.raises(ValueError, match="lookforward_error"):
        critic(latents, timestep, embeds, action, x0_hat=latents)  # the error needs x0 too
    with pytest.raises(ValueError, match="width"):
        QCritic((4, 8, 8), 32, width=0)
    with pytest.raises(ValueError, match="subset"):
        QCritic((4, 8, 8), 32, inputs=("pixels",))


def test_band_statistics_rescale_the_output_so_that_q_is_unchanged():
    """PopArt: statistics move towards the targets per band (pooled until a band has min_band_count of its own),
    the head is rescaled so Q is the same function, and normalised targets have the band's mean 0 and std 1."""
    torch.manual_seed(0)
    critic = QCritic((4, 16, 16), 32, min_band_count=4)
    latents, _, embeds, action, _ = inputs(batch=3)
    timestep = torch.tensor([950, 50, 55])
    x0_hat = latents - action
    critic.update_statistics(torch.tensor([1.0, 2.0, 3.0]), timestep, rate=0.01)  # first update: no rescaling
    before = critic(latents, timestep, embeds, action, x0_hat=x0_hat)
    mean, std = critic.statistics()
    torch.testing.assert_close(mean, torch.full((10,), 2.0))  # every band still uses the pooled statistics
    targets = torch.tensor([-50.0, 0.01, 0.03, 0.02, 0.0, 0.01])
    critic.update_statistics(targets, torch.tensor([950, 50, 55, 60, 40, 30]), rate=0.01)
    torch.testing.assert_close(critic(latents, timestep, embeds, action, x0_hat=x0_hat), before, rtol=1e-4, atol=1e-4)
    mean, std = critic.statistics()
    band0 = torch.tensor([2.0, 3.0, 0.01, 0.03, 0.02, 0.0, 0.01])  # exact running averages while few were seen
    assert critic.value_count[0] == 7 and critic.value_count[9] == 2  # band 0 has its own statistics now
    torch.testing.assert_close(mean[0], band0.mean())
    torch.testing.assert_close(std[0], band0.std(unbiased=False))
    assert std[9] > 10  # band 9 (one far target) still reads the pooled statistics
    normalised = critic.normalize(band0, torch.full((7,), 50))
    torch.testing.assert_close(normalised.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalised.std(unbiased=False), torch.tensor(1.0))


def test_add_lora_freezes_base_and_starts_as_identity(tiny_sd_path):
    unet: UNet2DConditionModel = load_sd_components(tiny_sd_path).unet
    latents, timestep, embeds = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 5, 32)
    with torch.no_grad():
        before = unet(latents, timestep, encoder_hidden_states=embeds).sample
    add_lora(unet, rank=2)
    trainable = trainable_parameters(unet)
    names = [name for name, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in name for name in names)
    assert count(unet) > sum(p.numel() for p in trainable)
    with torch.no_grad():
        torch.testing.assert_close(unet(latents, timestep, encoder_hidden_states=embeds).sample, before)
    unet(latents, timestep, encoder_hidden_states=embeds).sample.pow(2).mean().backward()
    assert all(p.grad is None for p in unet.parameters() if not p.requires_grad)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    full_finetune(unet)
    assert len(trainable_parameters(unet)) == len(list(unet.parameters()))
    with pytest.raises(ValueError, match="rank"):
        add_lora(unet, rank=0)
