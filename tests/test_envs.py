"""DenoisingEnv: specs, exact equivalence with StableDiffusionPipeline, per-sample steps, gradients, bad input."""

from __future__ import annotations

import gymnasium
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs

from diffrl.agents import UNetActor
from diffrl.envs import BatchedScheduler, DenoisingConfig, DenoisingEnv
from diffrl.models import load_sd_components
from diffrl.models.tiny import SD_SCHEDULER_CONFIG
from diffrl.rewards import Reward, RewardInputs, look_forward
from diffrl.sampling import generate_latents

PROMPTS = ["a sks dog", "a cat on the beach", ""]


@pytest.fixture(scope="module")
def components(tiny_sd_path):
    return load_sd_components(tiny_sd_path, scheduler="ddim")


class NegativeSquaredLatent(Reward):
    """-mean(x0_hat^2): a differentiable per-step reward for tests."""

    requires = frozenset({"x0_hat"})

    def forward(self, inputs: RewardInputs) -> torch.Tensor:
        return -inputs.x0_hat.pow(2).flatten(1).mean(1)


@pytest.mark.parametrize("mode", ["sampling", "reference"])
@pytest.mark.parametrize(("batch_size", "eta"), [(1, 0.0), (3, 0.0), (3, 1.0)])
def test_check_env_specs(components, mode, batch_size, eta):
    env = DenoisingEnv(
        components,
        "a sks dog",
        batch_size=batch_size,
        config=DenoisingConfig(num_inference_steps=4, mode=mode, eta=eta),
        reward=NegativeSquaredLatent(),
        references=torch.randn(5, 4, 8, 8),
        seed=0,
    )
    check_env_specs(env, seed=0)


@pytest.mark.parametrize(("scheduler", "eta"), [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
def test_rollout_equals_pipeline(tiny_sd_path, scheduler, eta):
    components = load_sd_components(tiny_sd_path, scheduler=scheduler)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        expected = components.pipeline()(
            PROMPTS, num_inference_steps=6, guidance_scale=5.0, eta=eta, generator=generator, output_type="latent"
        ).images
    ours = generate_latents(components, PROMPTS, num_inference_steps=6, guidance_scale=5.0, eta=eta, seed=7)
    assert (ours - expected).abs().max().item() <= 1e-5
    other_seed = generate_latents(components, PROMPTS, num_inference_steps=6, guidance_scale=5.0, eta=eta, seed=8)
    assert (other_seed - expected).abs().max().item() > 1e-3


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, DDPMScheduler])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_per_sample_steps_match_diffusers_one_sample_at_a_time(scheduler_cls, eta):
    scheduler = scheduler_cls.from_config(DDIMScheduler(**SD_SCHEDULER_CONFIG).config)
    schedule = BatchedScheduler(scheduler, num_inference_steps=10, eta=eta)
    reference = scheduler_cls.from_config(scheduler.config)
    reference.set_timesteps(10)
    step_index = torch.tensor([0, 3, 9, 5])
    sample, action = torch.randn(2, 4, 4, 8, 8).unbind(0)
    # the noise diffusers draws for sample i from a generator seeded with i
    noise = torch.cat([torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)])
    ours = schedule.step(action, step_index, sample, noise if schedule.stochastic else None).prev_sample
    for i, k in enumerate(step_index.tolist()):
        t = reference.timesteps[k]
        kwargs = {"eta": eta} if scheduler_cls is DDIMScheduler else {}
        expected = reference.step(action[i : i + 1], t, sample[i : i + 1], generator=torch.Generator().manual_seed(i), **kwargs)
        torch.testing.assert_close(ours[i : i + 1], expected.prev_sample, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("scheduler_cls", "eta"), [(DDIMScheduler, 1.0), (DDIMScheduler, 0.5), (DDPMScheduler, 1.0)])
def test_step_log_prob_equals_the_closed_form(scheduler_cls, eta):
    scheduler = scheduler_cls.from_config(DDIMScheduler(**SD_SCHEDULER_CONFIG).config)
    schedule = BatchedScheduler(scheduler, num_inference_steps=10, eta=eta)
    step_index = torch.tensor([0, 3, 8, 5])
    sample, action, noise = torch.randn(3, 4, 4, 8, 8).unbind(0)
    out = schedule.step(action, step_index, sample, noise)
    # the closed form in float64, written from the papers' formulas (not from the code under test)
    abar = schedule.alphas_cumprod.double()
    t = schedule.timesteps[step_index]
    a_t = abar[t].view(-1, 1, 1, 1)
    if scheduler_cls is DDIMScheduler:  # Song et al. 2021, eq. 12 and 16
        prev = t - 1000 // 10
        a_prev = torch.where(prev >= 0, abar[prev.clamp(min=0)], abar[0]).view(-1, 1, 1, 1)  # set_alpha_to_one=False
        var = eta**2 * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        x0 = (sample.double() - (1 - a_t).sqrt() * action.double()) / a_t.sqrt()
        mean = a_prev.sqrt() * x0 + (1 - a_prev - var).sqrt() * action.double()
    else:  # Ho et al. 2020, eqs. 6-7, the posterior q(x_prev | x_t, x0_hat)
        prev = torch.cat([schedule.timesteps[1:], torch.tensor([-1])])[step_index]
        a_prev = torch.where(prev >= 0, abar[prev.clamp(min=0)], torch.ones_like(abar[0])).view(-1, 1, 1, 1)
        beta = 1 - a_t / a_prev
        var = (1 - a_prev) / (1 - a_t) * beta
        x0 = (sample.double() - (1 - a_t).sqrt() * action.double()) / a_t.sqrt()
        mean = a_prev.sqrt() * beta / (1 - a_t) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t) * sample.double()
    expected = torch.distributions.Normal(mean, var.sqrt().expand_as(mean)).log_prob(out.prev_sample.double())
    torch.testing.assert_close(out.log_prob(out.prev_sample).double(), expected.flatten(1).sum(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close((out.prev_sample - out.mean) / out.std, noise, rtol=1e-4, atol=1e-4)
    assert out.log_prob(out.prev_sample + 0.5).lt(out.log_prob(out.prev_sample)).all()  # off the sample: less likely


def test_a_deterministic_step_has_log_prob_zero():
    schedule = BatchedScheduler(DDIMScheduler(**SD_SCHEDULER_CONFIG), num_inference_steps=10, eta=0.0)
    sample, action = torch.randn(2, 3, 4, 8, 8).unbind(0)
    out = schedule.step(action, torch.tensor([0, 4, 9]), sample)
    assert torch.equal(out.prev_sample, out.mean) and (out.std == 0).all()
    assert torch.equal(out.log_prob(out.prev_sample), torch.zeros(3))


def test_rollout_records_the_log_prob_that_the_env_recomputes_under_the_policy(components):
    env = DenoisingEnv(components, PROMPTS[:2], batch_size=2, config=DenoisingConfig(num_inference_steps=3, eta=1.0),
                       seed=0)
    actor = UNetActor(components.unet, guidance_scale=3.0)
    with torch.no_grad():
        rollout = env.rollout(3, policy=actor)
    recorded = rollout["next", "sample_log_prob"]  # [B, T]
    assert recorded.shape == (2, 3) and torch.isfinite(recorded).all() and (recorded != 0).all()
    for k in range(3):
        transition = rollout[:, k]
        action = actor(transition.exclude("action").clone())["action"]  # the current policy's action
        torch.testing.assert_close(env.log_prob(transition, action), recorded[:, k], rtol=1e-5, atol=1e-4)
    other = env.log_prob(rollout[:, 1], torch.zeros_like(rollout[:, 1]["action"]))
    assert not torch.allclose(other, recorded[:, 1])


def test_look_forward_identity_at_many_timesteps():
    scheduler = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    generator = torch.Generator().manual_seed(0)
    t = torch.arange(0, 1000, 7)
    abar = scheduler.alphas_cumprod[t].double()
    x0, eps, eps_hat = torch.randn(3, len(t), 4, 8, 8, generator=generator, dtype=torch.float64).unbind(0)
    x_t = scheduler.add_noise(x0, eps, t)
    x0_hat = look_forward(x_t, eps_hat, abar)
    lhs = (x0_hat - x0).pow(2).flatten(1).sum(1)
    rhs = (1 - abar) / abar * (eps_hat - eps).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-9)
    # the identity is not vacuous: a wrong abar breaks it
    assert not torch.allclose(look_forward(x_t, eps_hat, abar * 0.9), x0_hat)


def test_reference_mode_noises_the_given_x0_at_the_given_step(components):
    env = DenoisingEnv(components, "a sks dog", batch_size=2, config=DenoisingConfig(num_inference_steps=10, mode="reference"), seed=1)
    x0 = torch.randn(2, 4, 8, 8)
    state = env.reset(TensorDict(x0=x0, step=torch.tensor([2, 9]), batch_size=[2]), set_state=True)
    torch.testing.assert_close(state["x0"], x0)
    assert state["step"].tolist() == [2, 9]
    assert state["timestep"].tolist() == env.schedule.timesteps[[2, 9]].tolist()
    abar = env.schedule.abar(state["timestep"]).view(2, 1, 1, 1)
    eps = (state["latents"] - abar.sqrt() * x0) / (1 - abar).sqrt()
    assert 0.5 < eps.std() < 1.5  # x_t = sqrt(abar) x0 + sqrt(1 - abar) eps with eps ~ N(0, I)
    # the reward sees x0 and a per-sample timestep; one step moves each sample to its own next timestep
    state["action"] = torch.randn(2, 4, 8, 8)
    step = env.step(state)["next"]
    assert step["step"].tolist() == [3, 10]
    assert step["timestep"].tolist() == [env.schedule.timesteps[3].item(), 0]
    assert step["done"].squeeze(-1).tolist() == [False, True]


def test_random_starts_cover_the_schedule(components):
    env = DenoisingEnv(
        components, "a dog", batch_size=64, config=DenoisingConfig(num_inference_steps=5, mode="reference"),
        references=torch.randn(3, 4, 8, 8), seed=0,
    )
    assert set(env.reset()["step"].tolist()) == set(range(5))


def test_gradient_flows_through_two_step_rollout(components):
    env = DenoisingEnv(components, PROMPTS[:2], batch_size=2, config=DenoisingConfig(num_inference_steps=2), seed=0)
    actor = UNetActor(components.unet, guidance_scale=3.0)
    components.unet.zero_grad()
    rollout = env.rollout(2, policy=actor)
    rollout[:, -1]["next", "latents"].pow(2).mean().backward()
    grads = [p.grad for p in components.unet.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    components.unet.zero_grad()


def test_per_step_and_terminal_rewards(components):
    reward = NegativeSquaredLatent()
    actor = UNetActor(components.unet, guidance_scale=1.0)
    per_step = DenoisingEnv(components, "a dog", batch_size=2, config=DenoisingConfig(num_inference_steps=3), reward=reward, seed=0)
    with torch.no_grad():
        rollout = per_step.rollout(3, policy=actor)
    assert rollout["next", "reward"].shape == (2, 3, 1)
    assert (rollout["next", "reward"] < 0).all()
    terminal = DenoisingEnv(
        components, "a dog", batch_size=2, config=DenoisingConfig(num_inference_steps=3, reward_mode="terminal"), reward=reward, seed=0
    )
    with torch.no_grad():
        rollout = terminal.rollout(3, policy=actor)
    rewards = rollout["next", "reward"].squeeze(-1)
    assert (rewards[:, :2] == 0).all()
    final = rollout[:, -1]["next", "latents"]
    torch.testing.assert_close(rewards[:, 2], -final.pow(2).flatten(1).mean(1))


def test_gym_adapter_passes_env_checker(tiny_sd_path):
    from gymnasium.utils.env_checker import check_env

    import diffrl.envs.gym  # noqa: F401  (registers the id)

    env = gymnasium.make("diffrl/Denoising-v0", pretrained=str(tiny_sd_path), prompt="a dog", config=DenoisingConfig(num_inference_steps=3))
    check_env(env.unwrapped, skip_render_check=True)
    observation, _ = env.reset(seed=0)
    steps, terminated = 0, False
    while not terminated:
        observation, reward, terminated, truncated, _ = env.step(env.action_space.sample() * 0)
        steps += 1
    assert steps == 3 and observation["step"] == 3


def test_bad_latent_shape_in_reference_mode(components):
    config = DenoisingConfig(num_inference_steps=4, mode="reference")
    with pytest.raises(ValueError, match=r"reference latents must have shape \[N, 4, 8, 8\], got \(5, 4, 16, 16\)"):
        DenoisingEnv(components, "a dog", batch_size=2, config=config, references=torch.randn(5, 4, 16, 16))
    env = DenoisingEnv(components, "a dog", batch_size=2, config=config)
    with pytest.raises(ValueError, match=r"'x0' has shape \(2, 3, 8, 8\), expected \(2, 4, 8, 8\)"):
        env.reset(TensorDict(x0=torch.randn(2, 3, 8, 8), batch_size=[2]), set_state=True)
    with pytest.raises(ValueError, match="Reference mode needs reference latents"):
        env.reset()


def test_batch_size_mismatch(components):
    with pytest.raises(ValueError, match="Got 2 prompts for batch_size=3"):
        DenoisingEnv(components, ["a", "b"], batch_size=3)
    env = DenoisingEnv(components, "a dog", batch_size=3, config=DenoisingConfig(num_inference_steps=4))
    with pytest.raises(RuntimeError, match="batch"):
        env.reset(TensorDict(latents=torch.randn(2, 4, 8, 8), batch_size=[2]), set_state=True)
    state = env.reset()
    state["action"] = torch.randn(3, 4, 4, 4)
    with pytest.raises(ValueError, match=r"'action' has shape \(3, 4, 4, 4\), expected \(3, 4, 8, 8\)"):
        env.step(state)


def test_nan_action_is_rejected(components):
    env = DenoisingEnv(components, "a dog", batch_size=3, config=DenoisingConfig(num_inference_steps=4))
    state = env.reset()
    action = torch.randn(3, 4, 8, 8)
    action[1, 0, 0, 0] = float("nan")
    state["action"] = action
    with pytest.raises(ValueError, match=r"NaN or inf at batch indices \[1\]"):
        env.step(state)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="mode must be"):
        DenoisingConfig(mode="replay")
    with pytest.raises(ValueError, match="start_step must be in"):
        DenoisingConfig(num_inference_steps=4, start_step=4)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        BatchedScheduler(DDIMScheduler(**SD_SCHEDULER_CONFIG), 10, eta=-1)
    with pytest.raises(ValueError, match="reach timestep 1000.*use at most 999 steps"):
        BatchedScheduler(DDIMScheduler(**SD_SCHEDULER_CONFIG), 1000)
    assert BatchedScheduler(DDIMScheduler(**SD_SCHEDULER_CONFIG), 999).timesteps.tolist() == list(range(999, 0, -1))
    with pytest.raises(ValueError, match="prediction_type must be 'epsilon'"):
        BatchedScheduler(DDIMScheduler(**{**SD_SCHEDULER_CONFIG, "prediction_type": "v_prediction"}), 10)
