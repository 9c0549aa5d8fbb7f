"""DPGLoss: TD targets by hand, gradient routing, paired randomness, exploration scale, a critic that learns a known
reward, the lambda schedule, fp32 critic, and the lambda = 0 identity with DreamBooth through the trainer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from test_objectives import B, SHAPE, make_batch, make_env, moved, private_copy, untouched
from test_training import config as train_config
from test_training import instance_dir, unet_hash  # noqa: F401 (fixture)

from diffrl.agents import QCritic, UNetActor, add_lora
from diffrl.models import SDComponents, load_sd_components
from diffrl.objectives import DPGConfig, DPGLoss, DreamBoothLoss
from diffrl.objectives.critic_diagnostics import band_r2, gradient_cosine
from diffrl.rewards import LookForwardReward, Reward, RewardInputs
from diffrl.training import Trainer


@pytest.fixture(scope="module")
def base(tiny_sd_path) -> SDComponents:
    return load_sd_components(tiny_sd_path)


@pytest.fixture
def components(base) -> SDComponents:
    return private_copy(base)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_dpg(components, config: DPGConfig, reward=None, seed: int = 0, critic_states: int = B,
             inputs=("x0_hat", "x0", "lookforward_error")) -> DPGLoss:
    """DPG with a separate transition env of ``critic_states`` states and a reference env of batch B."""
    reward = reward or LookForwardReward()
    transitions = make_env(components, reward, seed=seed + 100)
    if critic_states != B:
        from diffrl.envs import DenoisingConfig, DenoisingEnv

        transitions = DenoisingEnv(components, "a sks dog", batch_size=critic_states, reward=reward, seed=seed + 100,
                                   config=DenoisingConfig(num_inference_steps=10, mode="reference"))
    torch.manual_seed(seed)
    critic = QCritic(SHAPE, 32, width=8, inputs=inputs)
    return DPGLoss(transitions, UNetActor(components.unet, 1.0), critic, config, reference_env=make_env(components, seed=seed))


def perturb_critic(loss: DPGLoss, steps: int = 3) -> None:
    """Make the critic non-trivial and its target differ from it (global torch RNG)."""
    for _ in range(steps):
        with torch.no_grad():
            for p in loss.critic_parameters():
                p.add_(0.05 * torch.randn_like(p))
        loss.target_updater.step()


# ------------------------------------------------------------------------------------------------------- TD target
def test_td_target_equals_hand_computation(components):
    config = DPGConfig(gamma=0.9, reward_scale=2.0, tau=0.3, exploration_actions=2, critic_form="q")
    loss = make_dpg(components, config)
    perturb_critic(loss)
    env, batch = loss.env, make_batch(loss.env)
    last = env.config.num_inference_steps - 1
    start = batch.select("x0", "prompt_embeds", "negative_prompt_embeds").set("step", torch.tensor([0, last, 4, last]))
    state = loss.actor(env.reset(start, set_state=True))
    group = loss.transitions.collect(state)
    assert group["action"].shape == (B, 3, *SHAPE) and group["reward"].shape == (B, 3)
    torch.testing.assert_close(group["action"][:, 0], state["action"].detach())  # index 0: the policy's own action
    rows = loss.rows(group)
    target = loss.td_target(rows)

    # by hand: the same actor at s', the target critic's weights in a copy of the critic
    nxt = rows["next"]
    target_critic = copy.deepcopy(loss.critic)
    target_critic.load_state_dict(dict(loss.target_critic_params.flatten_keys(".").items()))
    with torch.no_grad():
        text = state["prompt_embeds"].repeat_interleave(3, 0)
        next_action = components.unet(nxt["latents"], nxt["timestep"], encoder_hidden_states=text).sample
        abar = components.scheduler.alphas_cumprod[nxt["timestep"]].view(-1, 1, 1, 1)
        x0_hat = (nxt["latents"] - (1 - abar).sqrt() * next_action) / abar.sqrt()
        embeds = state["prompt_embeds"].mean(1, keepdim=True).repeat_interleave(3, 0)
        next_q = target_critic(nxt["latents"], nxt["timestep"], embeds, next_action, x0_hat=x0_hat, x0=rows["x0"])
        online_q = loss.q_value(nxt, next_action)
    torch.testing.assert_close(nxt["action"], next_action, rtol=1e-5, atol=1e-5)  # mu(s') stored at collection
    done = torch.tensor([False, True, False, True]).repeat_interleave(3)
    assert nxt["done"].tolist() == done.tolist()
    expected = 2.0 * rows["reward"] + 0.9 * (~done).float() * next_q
    torch.testing.assert_close(target, expected, rtol=1e-5, atol=1e-5)
    assert (next_q - online_q).abs().max() > 1e-3  # the target critic really differs from the online one
    # r is the look-forward reward of (s_t, b): -mean (x0_hat - x0)^2
    abar_t = components.scheduler.alphas_cumprod[rows["timestep"]].view(-1, 1, 1, 1)
    x0_hat_t = (rows["latents"] - (1 - abar_t).sqrt() * rows["action"]) / abar_t.sqrt()
    torch.testing.assert_close(rows["reward"], -(x0_hat_t - rows["x0"]).pow(2).flatten(1).mean(1))


def test_reward_value_form_by_hand(components):
    """critic_form="reward_value": the critic regresses r, V(s) the policy's TD target, y = r + gamma (1 - done)
    V_target(s'), and Q(s, a) = R(s, a) + gamma (1 - done) V(s'(s, a)) with s' the env's own step, differentiable in a."""
    loss = make_dpg(components, DPGConfig(gamma=0.9, reward_scale=2.0, tau=0.3, exploration_actions=2))
    assert loss.value_network is not None and loss.value_network.inputs == ("latents", "x0")
    perturb_critic(loss)
    env, batch = loss.env, make_batch(loss.env)
    last = env.config.num_inference_steps - 1
    start = batch.select("x0", "prompt_embeds", "negative_prompt_embeds").set("step", torch.tensor([0, last, 4, last]))
    state = loss.actor(env.reset(start, set_state=True))
    group = loss.transitions.collect(state)
    assert not group["next", "action"].any()  # mu(s') is not needed: V reads s' alone
    rows = loss.rows(group)
    nxt = rows["next"]

    def network(name: str, params):
        copy_ = copy.deepcopy(getattr(loss, name))
        copy_.load_state_dict(dict(params.flatten_keys(".").items()))
        return copy_

    value, target_value = network("value_network", loss.value_network_params), network("value_network", loss.target_value_network_params)
    reward_model = network("critic", loss.critic_params)
    done = torch.tensor([False, True, False, True]).repeat_interleave(3)
    with torch.no_grad():
        next_v = target_value(nxt["latents"], nxt["timestep"], rows["prompt_embeds"], None, x0=rows["x0"])
        expected = 2.0 * rows["reward"] + 0.9 * (~done).float() * next_v
        torch.testing.assert_close(loss.td_target(rows), expected, rtol=1e-5, atol=1e-5)
        assert (next_v - value(nxt["latents"], nxt["timestep"], rows["prompt_embeds"], None, x0=rows["x0"])).abs().max() > 1e-3
    # the critic network regresses the scaled reward (not y); V regresses y of the policy's own action
    _, _, regressed = loss.critic_fit(rows, update_statistics=False)
    torch.testing.assert_close(regressed, 2.0 * rows["reward"])
    # Q(s, a) = R(s, a) + gamma (1 - done) V(s'(s, a)), s' the env's deterministic step, gradients reach the action
    action = state["action"].detach().clone().requires_grad_(True)
    q = loss.q_value(state, action)
    following = env.step(state.exclude("action").set("action", action.detach()))["next"]
    with torch.no_grad():
        abar = components.scheduler.alphas_cumprod[state["timestep"]].view(-1, 1, 1, 1)
        x0_hat = (state["latents"] - (1 - abar).sqrt() * action) / abar.sqrt()
        embeds = state["prompt_embeds"].mean(1, keepdim=True)
        r_hat = reward_model(state["latents"], state["timestep"], embeds, action, x0_hat=x0_hat, x0=state["x0"])
        v_next = value(following["latents"], following["timestep"], embeds, None, x0=state["x0"])
        ended = following["done"].squeeze(-1)
    torch.testing.assert_close(q, r_hat + 0.9 * (~ended).float() * v_next, rtol=1e-5, atol=1e-5)
    (grad,) = torch.autograd.grad(q.sum(), action)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("reads", ["online", "target"])
def test_the_actor_reads_the_configured_critic(components, reads):
    loss = make_dpg(components, DPGConfig(actor_reads=reads, tau=0.3))
    perturb_critic(loss)  # target != online
    state = loss.transitions.noised_states(make_batch(loss.env))
    online, target = (loss.q_value(state, state["action"], target=t) for t in (False, True))
    assert (online - target).abs().max() > 1e-4
    torch.testing.assert_close(loss.actor_q(state, state["action"]), target if reads == "target" else online)


def test_gamma_zero_equals_the_one_step_regressor(components):
    outputs = []
    for config in (DPGConfig(gamma=0.0, bootstrap=True, critic_form="q"), DPGConfig(gamma=0.9986, bootstrap=False)):
        loss = make_dpg(components, config, seed=3)
        perturb_critic(loss)  # the same non-zero critic and target in both (make_dpg seeds torch)
        outputs.append(loss(loss.transitions.loss_input(make_batch(loss.reference_env, prior=True))))
    bootstrapped, one_step = outputs
    assert set(bootstrapped.keys()) == set(one_step.keys())
    for key in bootstrapped.keys():
        torch.testing.assert_close(bootstrapped[key], one_step[key], rtol=0, atol=1e-6, msg=key)
    # and bootstrapping with gamma > 0 does change the target
    loss = make_dpg(components, DPGConfig(gamma=0.9, bootstrap=True, critic_form="q"), seed=3)
    perturb_critic(loss)
    assert (loss(loss.transitions.loss_input(make_batch(loss.reference_env, prior=True)))["td_target"] - one_step["td_target"]).abs() > 1e-6


# ---------------------------------------------------------------------------------------------- gradient routing
def test_each_loss_term_moves_only_its_own_parameters(components):
    add_lora(components.unet, rank=2)
    with torch.no_grad():  # LoRA starts at B = 0; make the adapter non-trivial so every LoRA weight gets a gradient
        for p in components.unet.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    text_encoder = components.text_encoder
    text_encoder.requires_grad_(True)
    env = make_env(components, LookForwardReward())
    critic = QCritic(SHAPE, 32, width=8)
    config = DPGConfig(gamma=0.9, tau=0.1, warmup_steps=0, lam_ramp_steps=0)
    loss = DPGLoss(env, UNetActor(components.unet, 1.0), critic, config, text_encoder=text_encoder)
    perturb_critic(loss)  # a non-zero critic: -lam * Q has a gradient for the actor
    actor_params, critic_params = loss.actor_parameters(), loss.critic_parameters()
    lora = [p for name, p in components.unet.named_parameters() if "lora" in name]
    assert {id(p) for p in actor_params} == {id(p) for p in lora} | {id(p) for p in text_encoder.parameters()}
    value_params = {id(p) for p in loss.value_network.parameters()}  # V of the default critic_form "reward_value"
    assert value_params and {id(p) for p in critic_params} == {id(p) for p in critic.parameters()} | value_params
    frozen = [p for name, p in components.unet.named_parameters() if "lora" not in name]
    assert all(not p.requires_grad for p in frozen)

    from diffrl.models import encode_prompts

    def batch_with_trained_text():
        embeds = encode_prompts(components.tokenizer, text_encoder, ["a sks dog"] * B)
        assert embeds.requires_grad
        return make_batch(env, prior=True).set("prompt_embeds", embeds)

    loss(loss.transitions.loss_input(batch_with_trained_text()))["loss_critic"].backward()
    assert moved(critic_params) and untouched(actor_params) and untouched(frozen)
    loss.zero_grad()
    text_encoder.zero_grad()

    out = loss(loss.transitions.loss_input(batch_with_trained_text()))
    assert out["lam"] == 1.0
    out["loss_actor"].backward()
    assert moved(lora) and moved(list(text_encoder.parameters())) and untouched(critic_params) and untouched(frozen)

    # an optimizer step on everything leaves the target alone; SoftUpdate then moves it by exactly tau
    out = loss(loss.transitions.loss_input(batch_with_trained_text()))
    targets_before = loss.target_critic_params.clone()  # after forward: the PopArt step rescales both heads
    sum(value for key, value in out.items() if key.startswith("loss_")).backward()
    torch.optim.SGD(actor_params + critic_params, lr=0.1).step()
    assert (loss.target_critic_params == targets_before).all()
    online = loss.critic_params.detach().clone()
    loss.target_updater.step()
    for key in ("head", "project", "blocks"):
        expected = targets_before[key].apply(lambda target, param: 0.9 * target + 0.1 * param, online[key])
        for name, value in expected.items(True, True):
            torch.testing.assert_close(loss.target_critic_params[key][name], value, rtol=1e-6, atol=1e-6)


def test_auxiliary_updates_train_the_critic_only(components):
    loss = make_dpg(components, DPGConfig(critic_updates=3, critic_batch_size=2, warmup_steps=0))
    assert loss.auxiliary_updates == 2
    loss(loss.transitions.loss_input(make_batch(loss.reference_env)))
    out = loss.auxiliary_loss(loss.transitions.sample())
    assert set(out.keys()) == {"loss_critic", "q_value", "td_target", "td_error", "critic_r2", "value_r2"}
    out["loss_critic"].backward()
    assert moved(loss.critic_parameters()) and untouched(loss.actor_parameters())


# ------------------------------------------------------------------------------------------- paired randomness
def test_forward_draws_from_the_reference_env_exactly_as_dreambooth(components):
    """DPG's exploration, critic states and replay sampling use the loss's own generator: after a forward, the
    reference env's generator and the global torch RNG are where DreamBooth's forward leaves them, and the actor
    saw the same noised state."""
    batch = make_batch(make_env(components), prior=True)
    states = {}
    for name in ("dreambooth", "dpg"):
        reference = make_env(components, seed=7)
        if name == "dpg":
            loss = DPGLoss(make_env(components, LookForwardReward(), seed=8), UNetActor(components.unet, 1.0),
                           QCritic(SHAPE, 32, width=8), DPGConfig(lam=0.0), reference_env=reference)
        else:
            loss = DreamBoothLoss(reference, UNetActor(components.unet, 1.0))
        torch.manual_seed(0)
        out = loss(loss.transitions.loss_input(batch) if name == "dpg" else batch)  # collection included
        states[name] = (reference.rng.get_state(), torch.get_rng_state(), out["eps_mse"], out["loss_actor"])
    for got, expected in zip(states["dpg"], states["dreambooth"], strict=True):
        assert torch.equal(got, expected)


def test_exploration_has_one_size_in_x0_hat_space(components):
    """exploration_space="x0": the behaviour actions' x0_hat differ from mu's by exploration_std (per element) at
    every noise level; "eps": by exploration_std * sqrt((1 - abar) / abar), large at high noise."""
    steps = torch.tensor([0, 3, 6, 9])
    spreads = {}
    for space in ("x0", "eps"):
        loss = make_dpg(components, DPGConfig(exploration_std=0.2, exploration_space=space, exploration_actions=64))
        start = make_batch(loss.env).select("x0", "prompt_embeds", "negative_prompt_embeds").set("step", steps)
        state = loss.actor(loss.env.reset(start, set_state=True))
        actions = loss.transitions.behaviour_actions(state)
        abar = loss.env.schedule.abar(state["timestep"]).view(-1, 1, 1, 1, 1)
        x0_hat = (state["latents"][:, None] - (1 - abar).sqrt() * actions) / abar.sqrt()
        spreads[space] = (x0_hat[:, 1:] - x0_hat[:, :1]).flatten(1).std(1)
    torch.testing.assert_close(spreads["x0"], torch.full((B,), 0.2), rtol=0.05, atol=0)
    ratio = spreads["eps"] / 0.2
    expected = ((1 - abar) / abar).sqrt().flatten()
    torch.testing.assert_close(ratio, expected, rtol=0.05, atol=0)
    assert expected[0] > 5 * expected[-1]  # the timesteps run from high noise (step 0) to low


# ------------------------------------------------------------------------------------------- a critic that learns
class PatternAlignment(Reward):
    """mean(c * x0_hat) for a fixed latent pattern c: differentiable, with a known gradient that has nothing to do with
    the look-forward error: c in x0_hat space, -sqrt((1 - abar_t) / abar_t) c in action space, so the critic must
    find it through the look-forward of each noise level."""

    differentiable = True
    requires = frozenset({"x0_hat"})

    def __init__(self) -> None:
        super().__init__("PatternAlignment")
        self.register_buffer("pattern", torch.randn(SHAPE, generator=torch.Generator().manual_seed(5)))

    def forward(self, inputs: RewardInputs) -> torch.Tensor:
        return (self.pattern * inputs.x0_hat).flatten(1).mean(1)


def test_critic_fits_a_known_differentiable_reward(components):
    """A one-step critic (gamma = 0) trained on collected transitions only: on fresh states its action gradient
    points where the reward's does (median cosine >= 0.9; an untrained critic is near 0) and its held-out R^2 per
    band is high. (With a curved reward, mean(c * tanh(x0_hat)), the same budget reaches a cosine of 0.73.)"""
    config = DPGConfig(gamma=0.0, lam=0.0, exploration_std=0.3, exploration_actions=4, critic_batch_size=32,
                       replay_size=4096)
    loss = make_dpg(components, config, reward=PatternAlignment(), critic_states=32, inputs=("x0_hat",))
    batch = make_batch(loss.reference_env)
    probe = loss.transitions.noised_states(batch, torch.Generator().manual_seed(99))
    assert gradient_cosine(loss, probe).median() < 0.5
    optimizer = torch.optim.Adam(loss.critic_parameters(), lr=3e-3)
    for step in range(250):
        if step < 24:
            loss.transitions.replay.extend(loss.transitions.collect(loss.transitions.noised_states(batch)))
        out = loss.critic_loss(loss.transitions.replay.sample())
        optimizer.zero_grad()
        out["loss_critic"].backward()
        optimizer.step()
    cosine = gradient_cosine(loss, probe)
    assert cosine.median() >= 0.9, cosine
    heldout = band_r2(loss, loss.transitions.collect(probe, torch.Generator().manual_seed(98)))
    assert np.median(list(heldout.values())) >= 0.8, heldout


# ----------------------------------------------------------------------------------------------- lambda, precision
def test_lambda_waits_for_the_warmup_then_ramps(components):
    loss = make_dpg(components, DPGConfig(lam=2.0, warmup_steps=2, lam_ramp_steps=4, critic_batch_size=2))
    batch = make_batch(loss.reference_env)
    lams = [float(loss(loss.transitions.loss_input(batch))["lam"]) for _ in range(8)]
    assert lams == [0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0]


def test_critic_and_targets_are_fp32_under_bf16_autocast(components):
    loss = make_dpg(components, DPGConfig(critic_batch_size=2))
    batch = make_batch(loss.reference_env)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(loss.transitions.loss_input(batch))
        state = loss.transitions.noised_states(batch)
        q = loss.q_value(state, state["action"])
    assert q.dtype == torch.float32 and out["loss_critic"].dtype == torch.float32


def test_non_finite_rewards_are_a_clear_error(components):
    class Broken(Reward):
        differentiable = False
        requires = frozenset({"x0_hat"})

        def forward(self, inputs: RewardInputs) -> torch.Tensor:
            return torch.full((inputs.batch_size,), float("nan"))

    loss = make_dpg(components, DPGConfig(), reward=Broken())
    with pytest.raises(ValueError, match="Broken.*non-finite"):
        loss(loss.transitions.loss_input(make_batch(loss.reference_env)))


def test_base_anchor_is_zero_at_the_base_model_and_pulls_the_actor_back(components):
    """base_weight: mse(mu(s), mu_base(s)) at the actor's states, 0 while the U-Net is the base model; its gradient
    moves the actor towards the frozen base policy (and the frozen copy gets none)."""
    frozen = UNetActor(copy.deepcopy(components.unet).requires_grad_(False), 1.0)
    transitions = make_env(components, LookForwardReward(), seed=100)
    critic = QCritic(SHAPE, 32, width=8, inputs=("x0_hat", "x0", "lookforward_error"))
    config = DPGConfig(eps_weight=0.0, base_weight=1.0, lam=0.0)
    loss = DPGLoss(transitions, UNetActor(components.unet, 1.0), critic, config,
                   reference_env=make_env(components, seed=0), reference_actor=frozen)
    batch = make_batch(loss.reference_env)
    assert loss(loss.transitions.loss_input(batch))["base_mse"] == 0
    with torch.no_grad():
        for p in components.unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    before = loss(loss.transitions.loss_input(batch))["base_mse"]
    assert before > 0
    optimizer = torch.optim.SGD(loss.actor_parameters(), lr=0.05)
    for _ in range(5):
        optimizer.zero_grad()
        loss(loss.transitions.loss_input(batch))["loss_actor"].backward()
        optimizer.step()
    assert loss(loss.transitions.loss_input(batch))["base_mse"] < before
    assert all(p.grad is None for p in frozen.parameters())
    with pytest.raises(ValueError, match="base_weight > 0 anchors the actor to the frozen base policy"):
        DPGLoss(transitions, UNetActor(components.unet, 1.0), critic, config, reference_env=loss.reference_env)
    with pytest.raises(ValueError, match="guidance_scale=1.0"):
        DPGLoss(transitions, UNetActor(components.unet, 1.0), critic, config, reference_env=loss.reference_env,
                reference_actor=UNetActor(frozen.unet, 3.0))


@pytest.mark.parametrize(
    ("field", "value"),
    [("exploration_actions", 0), ("critic_updates", 0), ("warmup_steps", -1), ("exploration_space", "pixels"),
     ("actor_weighting", "cosine"), ("normalization_rate", 0.0), ("pair_weight", float("nan")),
     ("critic_form", "v"), ("actor_reads", "both")],
)
def test_bad_dpg_settings_raise(field, value):
    with pytest.raises(ValueError, match=field):
        DPGConfig(**{field: value})
    with pytest.raises(ValueError, match="critic_batch_size"):
        DPGConfig(critic_batch_size=10, replay_size=5)


# --------------------------------------------------------------------------------------- trainer: lambda = 0 identity
def test_dpg_with_lambda_zero_trains_the_unet_exactly_like_dreambooth(tiny_sd_path, instance_dir, tmp_path):
    """Same seed, same data stream: DPG with lambda = 0 (critic trained, never read) ends with U-Net weights
    bit-identical to DreamBooth's after N steps, with prior preservation; lambda > 0 does not."""
    common = dict(max_steps=4, batch_size=2, num_class_images=2, class_prompt="a photo of dog",
                  class_dir=str(tmp_path / "cls"), warmup_steps=0, lam_ramp_steps=0, critic_states=2,
                  critic_batch_size=2, critic_updates=2, diagnose_every=2)
    hashes = {}
    for name, settings in {"dreambooth": dict(method="dreambooth"), "lambda0": dict(method="dpg", lam=0.0),
                           "lambda1": dict(method="dpg", lam=1.0)}.items():
        trainer = Trainer(train_config(tiny_sd_path, instance_dir, tmp_path / name, **common, **settings))
        result = trainer.train()
        hashes[name] = unet_hash(trainer.components.unet)
        if name == "lambda0":
            assert "critic/critic_r2_heldout" in result.history[0] and "critic/actor_grad_ratio" in result.history[2]
    assert hashes["lambda0"] == hashes["dreambooth"]
    assert hashes["lambda1"] != hashes["dreambooth"]


def test_replay_buffer_entries_are_tensordicts(components):
    loss = make_dpg(components, DPGConfig(critic_batch_size=2))
    loss(loss.transitions.loss_input(make_batch(loss.reference_env)))
    sample = loss.transitions.replay.sample()
    assert isinstance(sample, TensorDict) and sample.batch_size == (2,)
    assert sample["action"].shape[1] == loss.config.exploration_actions + 1  # mu(s) and K explorations
