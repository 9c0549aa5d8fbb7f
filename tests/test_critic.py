"""QCritic: size, conditioning on timestep / text / action / look-forward features; LoRA helpers."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from diffrl.agents import QCritic, add_lora, full_finetune, trainable_parameters
from diffrl.models import load_sd_components


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("lookforward_features", [False, True])
def test_parameter_count_for_sd_latents_matches_the_paper(lookforward_features):
    critic = QCritic((4, 64, 64), text_dim=768, lookforward_features=lookforward_features)
    assert 0.2e6 <= count(critic) <= 0.32e6  # the paper's critic has ~0.26M parameters


def test_size_scales_with_latent_shape_and_width():
    assert count(QCritic((4, 8, 8), 32)) < count(QCritic((4, 32, 32), 32)) < count(QCritic((4, 64, 64), 32))
    assert count(QCritic((4, 64, 64), 768, width=8)) < count(QCritic((4, 64, 64), 768, width=32))


def inputs(batch: int = 3, shape=(4, 16, 16), tokens: int = 5, dim: int = 32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    latents, action, x0 = torch.randn(3, batch, *shape, generator=generator).unbind(0)
    return latents, torch.tensor([999, 500, 1])[:batch], torch.randn(batch, tokens, dim, generator=generator), action, x0


def test_starts_at_zero_without_action_gradient():
    critic = QCritic((4, 16, 16), 32)
    latents, timestep, embeds, action, _ = inputs()
    action.requires_grad_(True)
    q = critic(latents, timestep, embeds, action)
    assert (q == 0).all()
    (grad,) = torch.autograd.grad(q.sum(), action)
    assert (grad == 0).all()


def test_output_shape_and_dependence_on_every_input():
    torch.manual_seed(0)
    critic = QCritic((4, 16, 16), 32, lookforward_features=True)
    torch.nn.init.normal_(critic.head[-1].weight)  # as after some training (it starts at zero)
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


def test_lookforward_features_need_x0_hat_and_x0():
    critic = QCritic((4, 16, 16), 32, lookforward_features=True)
    latents, timestep, embeds, action, _ = inputs()
    with pytest.raises(ValueError, match="x0_hat"):
        critic(latents, timestep, embeds, action)
    plain = QCritic((4, 16, 16), 32)
    assert plain(latents, timestep, embeds, action).shape == (3,)


def test_bad_width_raises():
    with pytest.raises(ValueError, match="width"):
        QCritic((4, 8, 8), 32, width=0)


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
