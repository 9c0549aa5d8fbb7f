"""Loss modules: DreamBooth, DRaFT-K reward backprop and the errors of every loss (DPG: tests/test_dpg.py)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from tensordict import TensorDict

from diffrl.agents import QCritic, UNetActor, add_lora
from diffrl.envs import DenoisingConfig, DenoisingEnv
from diffrl.models import SDComponents, load_sd_components
from diffrl.objectives import (
    DirectRewardConfig,
    DirectRewardLoss,
    DPGConfig,
    DPGLoss,
    DreamBoothConfig,
    DreamBoothLoss,
    RewardBackpropConfig,
    RewardBackpropLoss,
    actor_weight,
)
from diffrl.rewards import DINOReward, LookForwardReward, Reward, RewardInputs

B = 4
SHAPE = (4, 8, 8)


@pytest.fixture(scope="module")
def base(tiny_sd_path) -> SDComponents:
    return load_sd_components(tiny_sd_path, scheduler="ddim")


def private_copy(base: SDComponents) -> SDComponents:
    """``base`` with private copies of the U-Net and text encoder (tests train them or add LoRA)."""
    return dataclasses.replace(base, unet=copy.deepcopy(base.unet), text_encoder=copy.deepcopy(base.text_encoder))


@pytest.fixture
def components(base) -> SDComponents:
    return private_copy(base)


def make_env(components, reward=None, steps: int = 10, mode: str = "reference", seed: int = 0, **kwargs) -> DenoisingEnv:
    config = DenoisingConfig(num_inference_steps=steps, mode=mode, **kwargs)
    return DenoisingEnv(components, "a sks dog", batch_size=B, config=config, reward=reward, seed=seed)


def make_batch(env: DenoisingEnv, prior: bool = False, seed: int = 123) -> TensorDict:
    generator = torch.Generator().manual_seed(seed)
    batch = TensorDict(
        x0=torch.randn(B, *SHAPE, generator=generator),
        prompt_embeds=env.prompt_embeds,
        negative_prompt_embeds=env.negative_prompt_embeds,
        batch_size=[B],
    )
    if prior:
        batch["prior", "x0"] = torch.randn(B, *SHAPE, generator=generator)
        batch["prior", "prompt_embeds"] = env.prompt_embeds.flip(0)
    return batch


def grads(params) -> list[torch.Tensor | None]:
    return [p.grad for p in params]


def moved(params) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def untouched(params) -> bool:
    return all(p.grad is None or not p.grad.any() for p in params)


# -------------------------------------------------------------------------------------------------------- training
class LatentLuminance(Reward):
    """A black box (numpy, no gradients): the mean of the look-forward latent's first channel (SD's luminance axis).

    (Brightness of the *decoded* x0_hat is no test signal here: the tiny random VAE's output mean varies by < 1%.)
    """

    differentiable = False

    def forward(self, inputs: RewardInputs) -> torch.Tensor:
        return torch.from_numpy(inputs.x0_hat[:, 0].numpy().mean(axis=(1, 2)))


# ------------------------------------------------------------------------------------------------------ DreamBooth
def test_dreambooth_regresses_the_env_noise_and_matches_dpg_without_critic(components):
    env = make_env(components, LookForwardReward(), seed=5)
    loss = DreamBoothLoss(env, UNetActor(components.unet, 1.0), DreamBoothConfig(prior_weight=0.5))
    assert loss.critic_parameters() == [] and loss.target_updater is None
    batch = make_batch(env, prior=True)
    # the env's generator draws the start steps, then the noise: the loss's eps target is exactly that noise
    generator = torch.Generator().manual_seed(5)
    steps = torch.randint(env.config.num_inference_steps, (B,), generator=generator)
    noise = torch.randn(B, *SHAPE, generator=generator)
    env.set_seed(5)
    state = loss.noised_state(batch)
    assert state["step"].tolist() == steps.tolist()
    torch.testing.assert_close(loss.true_noise(state), noise, rtol=1e-4, atol=1e-4)

    env.set_seed(11)
    out = loss(batch)
    torch.testing.assert_close(out["loss_actor"], out["eps_mse"] + 0.5 * out["prior_mse"])
    out["loss_actor"].backward()
    assert moved(loss.actor_parameters())
    # DPG with lambda = 0 and no exploration has the same actor loss (shared noising machinery, same draws)
    dpg = DPGLoss(env, UNetActor(components.unet, 1.0), QCritic(SHAPE, 32, width=8), DPGConfig(lam=0.0, exploration_std=0.0, prior_weight=0.5))
    env.set_seed(11)
    torch.testing.assert_close(dpg(dpg.transitions.loss_input(batch))["loss_actor"], out["loss_actor"].detach(), rtol=1e-6, atol=1e-6)
    assert set(DreamBoothLoss(env, UNetActor(components.unet, 1.0))(batch.exclude("prior")).keys()) == {"loss_actor", "eps_mse"}


# ------------------------------------------------------------------------------------------ reward backpropagation
class NegativeSquaredSample(Reward):
    """-mean(x_0^2) of the final sample: differentiable."""

    def forward(self, inputs: RewardInputs) -> torch.Tensor:
        return -inputs.x0_hat.pow(2).flatten(1).mean(1)


def test_reward_backprop_differentiates_only_the_last_k_steps(components):
    steps = 4
    env = make_env(components, NegativeSquaredSample(), steps=steps, mode="sampling", reward_mode="terminal", seed=2)
    actor = UNetActor(components.unet, guidance_scale=3.0)
    calls: list[bool] = []
    hook = components.unet.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    loss = RewardBackpropLoss(env, actor, RewardBackpropConfig(k=2))
    batch = make_batch(env)
    loss(batch)["loss_actor"].backward()
    assert calls == [False, False, True, True]
    hook.remove()

    # K = 1 equals the manual computation: N - 1 steps without gradients, then one step with them
    loss = RewardBackpropLoss(env, actor, RewardBackpropConfig(k=1, reward_scale=2.0))
    components.unet.zero_grad()
    env.set_seed(9)
    out = loss(batch)
    out["loss_actor"].backward()
    ours = [p.grad.clone() for p in components.unet.parameters()]
    components.unet.zero_grad()
    env.set_seed(9)
    state = env.reset(batch.select("prompt_embeds", "negative_prompt_embeds"), set_state=True)
    with torch.no_grad():
        for _ in range(steps - 1):
            state = env.step(actor(state))["next"]
    final = env.step(actor(state))["next"]
    (-2.0 * final["reward"].mean()).backward()
    for mine, manual in zip(ours, (p.grad for p in components.unet.parameters())):
        torch.testing.assert_close(mine, manual, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["reward"], final["reward"].mean().detach())
    assert sum(g.abs().sum() for g in ours) > 0


def test_reward_backprop_with_dreambooth_terms(components):
    sampling = make_env(components, NegativeSquaredSample(), steps=2, mode="sampling", reward_mode="terminal")
    reference = make_env(components)
    config = RewardBackpropConfig(k=1, eps_weight=0.5, prior_weight=0.25)
    out = RewardBackpropLoss(sampling, UNetActor(components.unet, 3.0), config, reference_env=reference)(make_batch(sampling, prior=True))
    torch.testing.assert_close(out["loss_actor"].detach(), -out["reward"] + 0.5 * out["eps_mse"] + 0.25 * out["prior_mse"])


# ----------------------------------------------------------------------------------------- direct reward (oracle)
def test_actor_weight_matches_the_hand_formulas(base):
    t = torch.tensor([0, 1, 500, 999])
    abar = base.scheduler.alphas_cumprod[t]
    expected_gamma = torch.tensor([0.9986**k for k in t.tolist()])
    torch.testing.assert_close(actor_weight("gamma_t", t, abar, 0.9986), expected_gamma)
    assert actor_weight("gamma_t", t, abar, 0.9986)[-1].item() == pytest.approx(0.2467, abs=1e-4)
    expected_snr = torch.tensor([min(1.0, (a / (1 - a)) ** 0.5) for a in abar.double().tolist()])
    torch.testing.assert_close(actor_weight("snr", t, abar, 0.9986), expected_snr.float())
    snr = actor_weight("snr", t, abar, 0.9986)
    assert snr[0] == 1.0 and snr[-1] < 0.1  # capped at low noise, sqrt(abar / (1 - abar)) at high noise
    assert torch.equal(actor_weight("none", t, abar, 0.5), torch.ones(4))
    with pytest.raises(ValueError, match="one of"):
        actor_weight("sqrt", t, abar, 0.9986)


def hand_dino(dino, references: torch.Tensor):
    """The DINO reward of images by hand: mean cosine of the CLS features to the references' minus 1."""
    with torch.no_grad():
        reference_features = torch.nn.functional.normalize(dino(references).float(), dim=-1)

    def reward(images: torch.Tensor, x0_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        features = torch.nn.functional.normalize(dino(images).float(), dim=-1)
        return (features @ reference_features.T).mean(1) - 1

    return reward


def hand_lookforward(images: torch.Tensor, x0_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    return -(x0_hat - x0).square().flatten(1).mean(1)


def unet_grads(loss, batch: TensorDict, seed: int) -> list[torch.Tensor]:
    """Gradients of ``loss_actor`` on the U-Net for the env seed ``seed``."""
    loss.actor.unet.zero_grad()
    loss.env.set_seed(seed)
    loss(batch)["loss_actor"].backward()
    return [p.grad.clone() for p in loss.actor.unet.parameters()]


def test_direct_reward_with_lambda_zero_is_dreambooth_bit_for_bit(components, dino):
    env = make_env(components, DINOReward(dino, torch.rand(2, 3, 16, 16)), seed=4)
    actor = UNetActor(components.unet, 1.0)
    batch = make_batch(env, prior=True)
    direct = DirectRewardLoss(env, actor, DirectRewardConfig(lam=0.0, prior_weight=0.5))
    dreambooth = DreamBoothLoss(env, actor, DreamBoothConfig(prior_weight=0.5))
    for seed in (0, 7):
        ours, theirs = unet_grads(direct, batch, seed), unet_grads(dreambooth, batch, seed)
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
        env.set_seed(seed)
        out = direct(batch)
        env.set_seed(seed)
        reference = dreambooth(batch)
        assert set(out.keys()) == {"loss_actor", "eps_mse", "reward_policy", "prior_mse"}
        for key in ("loss_actor", "eps_mse", "prior_mse"):
            assert torch.equal(out[key].detach(), reference[key].detach()), key
        assert -2 <= out["reward_policy"] < 0
    assert sum(g.abs().sum() for g in ours) > 0


@pytest.mark.parametrize(("reward_name", "weighting"), [("dino", "gamma_t"), ("lookforward", "snr")])
def test_direct_reward_gradient_is_dreambooth_plus_the_weighted_reward(components, dino, reward_name, weighting):
    """grad loss_actor(lam) = grad DreamBooth - lam * grad mean_b w(t_b) r(s_b, mu(s_b)), the last term by hand:
    the U-Net's eps_hat, x0_hat, the VAE decode and the reward written out, and w(t) from its formula."""
    references = torch.rand(2, 3, 16, 16)
    reward, hand_reward = {
        "dino": (DINOReward(dino, references), hand_dino(dino, references)),
        "lookforward": (LookForwardReward(), hand_lookforward),
    }[reward_name]
    env = make_env(components, reward, seed=2)
    actor = UNetActor(components.unet, 1.0)
    batch = make_batch(env, prior=True)
    lam, gamma = 0.7, 0.999
    direct = DirectRewardLoss(env, actor, DirectRewardConfig(lam=lam, actor_weighting=weighting, gamma=gamma))
    ours = unet_grads(direct, batch, seed=5)
    dreambooth = unet_grads(DreamBoothLoss(env, actor), batch, seed=5)

    env.set_seed(5)
    state = direct.noised_state(batch)
    latents, t = state["latents"], state["timestep"]
    eps_hat = components.unet(latents, t, encoder_hidden_states=batch["prompt_embeds"]).sample
    abar = components.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    x0_hat = (latents - (1 - abar).sqrt() * eps_hat) / abar.sqrt()
    images = (components.vae.decode(x0_hat / components.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    r = hand_reward(images, x0_hat, batch["x0"])
    a = abar.flatten().double()
    w = gamma ** t.double() if weighting == "gamma_t" else (a / (1 - a)).sqrt().clamp(max=1)
    term = -lam * (w.float() * r).mean()
    params = list(components.unet.parameters())
    by_hand = torch.autograd.grad(term, params, allow_unused=True)
    by_hand = torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, by_hand)])
    difference = torch.cat([(a - b).flatten() for a, b in zip(ours, dreambooth, strict=True)])
    assert by_hand.norm() > 1e-3 * torch.cat([g.flatten() for g in dreambooth]).norm()  # the reward term is not noise
    assert (difference - by_hand).norm() <= 1e-4 * by_hand.norm()

    env.set_seed(5)
    torch.testing.assert_close(direct(batch)["reward_policy"], r.mean().detach(), rtol=1e-5, atol=1e-6)


def test_direct_reward_needs_a_differentiable_reward(components):
    actor = UNetActor(components.unet, 1.0)
    with pytest.raises(ValueError, match=r"not differentiable.*method 'dpg'"):
        DirectRewardLoss(make_env(components, LatentLuminance()), actor)
    with pytest.raises(ValueError, match="reward="):
        DirectRewardLoss(make_env(components), actor)
    with pytest.raises(ValueError, match="reference"):
        DirectRewardLoss(make_env(components, NegativeSquaredSample(), mode="sampling"), actor)


# ---------------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: DPGConfig(gamma=1.5), "gamma"),
        (lambda: DPGConfig(gamma=-0.1), "gamma"),
        (lambda: DPGConfig(lam=-1.0), "lam"),
        (lambda: DPGConfig(prior_weight=-1.0), "prior_weight"),
        (lambda: DPGConfig(tau=0.0), "tau"),
        (lambda: DPGConfig(exploration_std=-0.1), "exploration_std"),
        (lambda: DPGConfig(reward_scale=float("nan")), "reward_scale"),
        (lambda: DreamBoothConfig(prior_weight=float("inf")), "prior_weight"),
        (lambda: RewardBackpropConfig(k=0), "k"),
        (lambda: RewardBackpropConfig(eps_weight=-1.0), "eps_weight"),
        (lambda: DirectRewardConfig(lam=-1.0), "lam"),
        (lambda: DirectRewardConfig(actor_weighting="sqrt"), "actor_weighting"),
        (lambda: DirectRewardConfig(gamma=2.0), "gamma"),
    ],
)
def test_bad_hyperparameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_setups_raise_clear_errors(components):
    actor, critic = UNetActor(components.unet, 1.0), QCritic(SHAPE, 32, width=8)
    reference, sampling = make_env(components, LookForwardReward()), make_env(components, NegativeSquaredSample(), mode="sampling")
    with pytest.raises(ValueError, match="reference"):
        DPGLoss(sampling, actor, critic)
    with pytest.raises(ValueError, match="reference"):
        DreamBoothLoss(sampling, actor)
    with pytest.raises(ValueError, match="guidance_scale"):
        DPGLoss(reference, UNetActor(components.unet, 7.5), critic)
    with pytest.raises(ValueError, match="reward"):
        DPGLoss(make_env(components), actor, critic)
    with pytest.raises(ValueError, match="per-step"):
        DPGLoss(make_env(components, LookForwardReward(), reward_mode="terminal"), actor, critic)
    with pytest.raises(TypeError, match="UNetActor"):
        DreamBoothLoss(reference, components.unet)

    terminal = make_env(components, NegativeSquaredSample(), steps=3, mode="sampling", reward_mode="terminal")
    with pytest.raises(ValueError, match="k must be in"):
        RewardBackpropLoss(terminal, actor, RewardBackpropConfig(k=4))
    with pytest.raises(ValueError, match="not differentiable"):
        RewardBackpropLoss(make_env(components, LatentLuminance(), mode="sampling", reward_mode="terminal"), actor)
    with pytest.raises(ValueError, match="terminal"):
        RewardBackpropLoss(sampling, actor)
    with pytest.raises(ValueError, match="sampling mode"):
        RewardBackpropLoss(make_env(components, NegativeSquaredSample(), reward_mode="terminal"), actor)
    with pytest.raises(ValueError, match="reference_env"):
        RewardBackpropLoss(terminal, actor, RewardBackpropConfig(eps_weight=1.0))

    class Detaching(NegativeSquaredSample):  # claims to be differentiable but cuts the graph
        def forward(self, inputs: RewardInputs) -> torch.Tensor:
            return super().forward(inputs).detach()

    liar = make_env(components, Detaching(), steps=2, mode="sampling", reward_mode="terminal")
    with pytest.raises(RuntimeError, match="no gradient"):
        RewardBackpropLoss(liar, actor)(make_batch(liar))

    loss = DreamBoothLoss(reference, actor)
    with pytest.raises(KeyError, match="x0"):
        loss(make_batch(reference).exclude("x0"))
    with pytest.raises(ValueError, match="batch_size"):
        loss(make_batch(reference)[:2])
