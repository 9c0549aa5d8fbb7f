"""DDPO / GRPO losses over stored denoising transitions, and group-relative advantages (tiny models, CPU)."""

from __future__ import annotations

import pytest
import torch

from diffrl.agents import UNetActor
from diffrl.envs import DenoisingConfig, DenoisingEnv
from diffrl.models import load_sd_components
from diffrl.objectives.advantages import group_normalized
from diffrl.objectives.ddpo import DDPOConfig, DDPOLoss
from diffrl.objectives.grpo import GRPOConfig, GRPOLoss
from diffrl.training.lock import RunDirError, RunLockedError
from diffrl.training.rundir import ConfigMismatchError

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["a sks dog", "a sks dog", "a red cat", "a red cat"]


@pytest.fixture
def components(tiny_sd_path):
    return load_sd_components(tiny_sd_path, scheduler="ddim")


def transitions(components, eta: float = 1.0):
    """A rollout of 3 steps for 4 samples (2 prompts x 2), flattened to [12], with group-relative advantages of the
    final latents' negative squared norm."""
    env = DenoisingEnv(components, PROMPTS, batch_size=4, config=DenoisingConfig(num_inference_steps=3, eta=eta), seed=0)
    actor = UNetActor(components.unet, guidance_scale=3.0)
    with torch.no_grad():
        rollout = env.rollout(3, policy=actor)
    reward = -rollout[:, -1]["next", "latents"].pow(2).flatten(1).mean(1)
    advantage = group_normalized(reward, torch.tensor([0, 0, 1, 1]))
    rollout["advantage"] = advantage[:, None].expand(4, 3)
    return env, actor, rollout.reshape(-1)


def test_group_normalized_advantages_are_standardised_within_each_prompt():
    rewards = torch.tensor([1.0, 3.0, 10.0, 10.0, 20.0, -5.0])
    groups = torch.tensor([7, 7, 2, 2, 2, 9])
    advantages = group_normalized(rewards, groups)
    for group in (7, 2):
        chosen = advantages[groups == group]
        assert chosen.mean().abs() < 1e-5 and (chosen.pow(2).mean() - 1).abs() < 1e-3
    torch.testing.assert_close(advantages[:2], torch.tensor([-1.0, 1.0]), rtol=0, atol=1e-5)
    assert advantages[5] == 0  # alone in its group: nothing to compare with
    with pytest.raises(ValueError, match="NaN or inf at samples \\[1\\]"):
        group_normalized(torch.tensor([1.0, float("nan")]), torch.tensor([0, 0]))


def test_ddpo_ratio_is_one_on_the_first_inner_epoch_and_moves_after_a_step(components):
    env, actor, batch = transitions(components)
    loss = DDPOLoss(env, actor, DDPOConfig(clip_range=0.2))
    out = loss(batch)
    torch.testing.assert_close(out["ratio"], torch.tensor(1.0), rtol=0, atol=1e-4)
    assert out["clip_fraction"] == 0 and out["approx_kl"].abs() < 1e-6
    out["loss_actor"].backward()
    grads = [p.grad for p in loss.actor_parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    with torch.no_grad():
        for p in loss.actor_parameters():
            p -= 1e-2 * p.grad.sign()
    moved = loss(batch)
    assert (moved["ratio"] - 1).abs() > 1e-3


def test_ddpo_loss_is_the_clipped_surrogate(components):
    env, actor, batch = transitions(components)
    batch["next", "sample_log_prob"] = batch["next", "sample_log_prob"] - torch.linspace(-0.3, 0.3, len(batch))
    loss = DDPOLoss(env, actor, DDPOConfig(clip_range=0.1, advantage_clip=0.5))
    with torch.no_grad():
        out = loss(batch)
        ratio = (env.log_prob(batch, loss.action(batch)) - batch["next", "sample_log_prob"]).exp()
    advantage = batch["advantage"].clamp(-0.5, 0.5)
    expected = -torch.minimum(ratio * advantage, ratio.clamp(0.9, 1.1) * advantage).mean()
    torch.testing.assert_close(out["loss_actor"], expected, rtol=1e-5, atol=1e-6)
    assert 0 < out["clip_fraction"] < 1


def test_grpo_kl_to_the_reference_is_zero_for_the_same_policy_and_grows_after_a_step(components):
    env, actor, batch = transitions(components)
    frozen = UNetActor(load_sd_components(components.source).unet, guidance_scale=3.0)
    loss = GRPOLoss(env, actor, GRPOConfig(kl_weight=0.5), reference_actor=frozen)
    out = loss(batch)
    assert out["kl"].abs() < 1e-6
    out["loss_actor"].backward()
    with torch.no_grad():
        for p in loss.actor_parameters():
            p -= 1e-2 * p.grad.sign()
    after = loss(batch)
    assert after["kl"] > 1e-4
    assert not any(p is q for p in loss.actor_parameters() for q in frozen.parameters())


def test_policy_gradient_losses_reject_what_they_cannot_use(components):
    env, actor, batch = transitions(components)
    with pytest.raises(ValueError, match="needs stochastic steps"):
        DDPOLoss(transitions(components, eta=0.0)[0], actor)
    with pytest.raises(ValueError, match="kl_weight > 0 needs the frozen reference policy"):
        GRPOLoss(env, actor, GRPOConfig(kl_weight=0.1))
    with pytest.raises(KeyError, match="advantage"):
        DDPOLoss(env, actor)(batch.exclude("advantage"))
    with pytest.raises(ValueError, match="clip_range"):
        DDPOConfig(clip_range=0.0)


class FinalBrightness(__import__("diffrl.rewards", fromlist=["Reward"]).Reward):
    """Mean of the decoded final image: a black-box score of the sample."""

    requires = frozenset({"images"})
    differentiable = False

    def forward(self, inputs):
        return inputs.images.flatten(1).mean(1)


def test_trajectory_collector_scores_groups_and_feeds_ddpo_with_ratio_one(components):
    from diffrl.collectors import TrajectoryCollector, TrajectoryCollectorConfig

    config = DenoisingConfig(num_inference_steps=3, eta=1.0, reward_mode="terminal")
    env = DenoisingEnv(components, "x", batch_size=6, config=config, reward=FinalBrightness(), seed=0)
    actor = UNetActor(components.unet, guidance_scale=3.0)
    prompts = ["a red dog", "a blue cat", "a green duck", "a sks dog"]
    collector = TrajectoryCollector(env, actor, prompts, TrajectoryCollectorConfig(prompts_per_batch=3, samples_per_prompt=2),
                                    seed=1)
    state = collector.state_dict()
    batch = collector.collect()
    assert batch.shape == (18,)
    ids = batch["prompt_id"].view(6, 3)[:, 0]
    assert len(set(ids.tolist())) == 3 and (ids.view(3, 2)[:, 0] == ids.view(3, 2)[:, 1]).all()
    advantage = batch["advantage"].view(6, 3)[:, 0].view(3, 2)
    assert torch.allclose(advantage.sum(1), torch.zeros(3), atol=1e-3)  # standardised within each prompt
    out = DDPOLoss(env, actor)(batch)
    torch.testing.assert_close(out["ratio"], torch.tensor(1.0), rtol=0, atol=1e-4)
    collector.load_state_dict(state)
    env.set_seed(0)
    again = collector.collect()
    assert torch.equal(again["prompt_id"], batch["prompt_id"])
    torch.testing.assert_close(again["next", "latents"], batch["next", "latents"])
    with pytest.raises(ValueError, match="terminal reward"):
        TrajectoryCollector(DenoisingEnv(components, "x", batch_size=6, config=DenoisingConfig(eta=1.0), seed=0),
                            actor, prompts, TrajectoryCollectorConfig(3, 2))


# --------------------------------------------------------------------------------------- the policy-gradient trainer
def pg_config(tiny_sd_path, tmp_path, out: str, **overrides):
    from diffrl.training.policy_gradient import PolicyGradientConfig

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# training prompts\na red cat\n\na sks dog\na blue car\na green boot\n")
    settings = dict(pretrained=str(tiny_sd_path), prompts=str(prompts), output_dir=str(tmp_path / out), iterations=2,
                    prompts_per_batch=2, samples_per_prompt=2, inference_steps=2, minibatch=4, lr=1e-3,
                    checkpoint_every=1, guidance_scale=3.0)
    return PolicyGradientConfig(**{**settings, **overrides})


def unet_weights(model_dir) -> dict[str, torch.Tensor]:
    return dict(load_sd_components(str(model_dir)).unet.state_dict())


@pytest.mark.parametrize("method", ["ddpo", "grpo", "draft", "dpg"])
def test_pg_trainer_moves_the_unet_and_resumes_exactly(tiny_sd_path, tmp_path, method):
    from diffrl.training import read_history
    from diffrl.training.policy_gradient import PolicyGradientTrainer

    extra = {"grpo": {"kl_weight": 0.1}, "draft": {"draft_k": 2}, "dpg": {"warmup_steps": 1}}.get(method, {})
    straight = PolicyGradientTrainer(pg_config(tiny_sd_path, tmp_path, "straight", method=method, **extra)).train().model_dir
    history = read_history(tmp_path / "straight")
    assert [r["step"] for r in history] == [1, 2] and history[-1]["samples"] == 8
    assert any((tmp_path / "straight" / "logs" / "diffrl").glob("events.out.tfevents.*"))
    first = PolicyGradientTrainer(pg_config(tiny_sd_path, tmp_path, "resumed", method=method, iterations=1, **extra))
    first.train()
    resumed = PolicyGradientTrainer(pg_config(tiny_sd_path, tmp_path, "resumed", method=method, resume="latest", **extra))
    assert resumed.step == 1
    final = resumed.train().model_dir
    base, a, b = unet_weights(tiny_sd_path), unet_weights(straight), unet_weights(final)
    assert any(not torch.equal(base[k], a[k]) for k in base)  # training moved the U-Net
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert [r["step"] for r in read_history(tmp_path / "resumed")] == [1, 2]


def test_pg_trainer_dpg_learns_a_critic_of_the_own_samples_and_resumes_it_exactly(tiny_sd_path, tmp_path):
    """DPG over prompts: the critic's envs score each own sample against its own prompt, the actor reads Q after the
    warm-up and is anchored to the frozen base model (kl_weight), and a resumed run restores the critic, its targets
    and the replay buffer exactly."""
    from diffrl.training import read_history
    from diffrl.training.policy_gradient import PolicyGradientTrainer

    settings = dict(method="dpg", warmup_steps=1, iterations=3, kl_weight=1.0)
    straight = PolicyGradientTrainer(pg_config(tiny_sd_path, tmp_path, "straight", **settings))
    straight.train()
    assert straight.loss.env.prompts == straight.collector.env.prompts == straight.loss.reference_env.prompts
    history = read_history(tmp_path / "straight")
    assert history[0]["base_mse"] == 0 and history[-1]["base_mse"] > 0  # the anchor to the frozen base model
    assert [r["lam"] for r in history][0] == 0 and history[-1]["lam"] > 0  # the warm-up, then Q in the actor loss
    assert all(r["loss_critic"] > 0 and r["grad_norm_critic"] > 0 for r in history)
    PolicyGradientTrainer(pg_config(tiny_sd_path, tmp_path, "resumed", **{**settings, "iterations": 2})).train()
    resumed = PolicyGradientTrainer(pg_config(tiny_sd_path, tmp_path, "resumed", resume="latest", **settings))
    assert len(resumed.loss.transitions.replay) == len(straight.loss.transitions.replay) - 4  # 2 x 2 states per iteration, restored
    resumed.train()
    for name in ("critic_params", "target_critic_params", "value_network_params"):
        a, b = getattr(straight.loss, name), getattr(resumed.loss, name)
        for key, value in a.items(True, True):
            torch.testing.assert_close(value, b[key], rtol=0, atol=0, msg=f"{name}.{key}")
    a, b = straight.loss.transitions.replay[:], resumed.loss.transitions.replay[:]
    assert (a == b).all()


def test_pg_trainer_with_lora_trains_the_adapter_only_resumes_exactly_and_exports_loadable_weights(tiny_sd_path, tmp_path):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from diffrl.training.policy_gradient import PolicyGradientTrainer

    straight = PolicyGradientTrainer(pg_config(tiny_sd_path, tmp_path, "straight", lora_rank=2, lr=1e-2))
    base = {k: v.clone() for k, v in straight.components.unet.named_parameters() if "lora" not in k}
    assert straight.updater.params["actor"] and all("lora" in name for name, p in straight.components.unet.named_parameters()
                                   if p.requires_grad)
    model = straight.train().model_dir
    assert all(torch.equal(base[k], p) for k, p in straight.components.unet.named_parameters() if k in base)
    PolicyGradientTrainer(pg_config(tiny_sd_path, tmp_path, "resumed", lora_rank=2, lr=1e-2, iterations=1)).train()
    resumed = PolicyGradientTrainer(pg_config(tiny_sd_path, tmp_path, "resumed", lora_rank=2, lr=1e-2, resume="latest"))
    a, b = (load_file(folder / "pytorch_lora_weights.safetensors") for folder in (model, resumed.train().model_dir))
    assert a.keys() == b.keys() and any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # B moved off 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd_path), safety_checker=None)
    pipe.load_lora_weights(str(model))
    unet = straight.components.unet
    latents = torch.randn(1, unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 4, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = (net(latents, 500, encoder_hidden_states=text).sample for net in (unet, pipe.unet))
        pipe.unet.disable_adapters()
        untrained = pipe.unet(latents, 500, encoder_hidden_states=text).sample
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(untrained, expected)


PG_LAUNCHED = """
import sys
from pathlib import Path
from accelerate import PartialState
from safetensors.torch import save_file
from diffrl.training.policy_gradient import PolicyGradientConfig, PolicyGradientTrainer

config = PolicyGradientConfig(**__import__("json").loads(Path(sys.argv[1]).read_text()))
trainer = PolicyGradientTrainer(config)
trainer.train()
weights = {k: v.detach().contiguous() for k, v in trainer.components.unet.named_parameters()}
save_file(weights, str(Path(sys.argv[2], f"rank{PartialState().process_index}.safetensors")))
"""


def test_pg_trainer_on_two_processes_keeps_one_unet_and_resumes(tiny_sd_path, tmp_path):
    """DDPO under `accelerate launch` (gloo on CPU): each process collects its own trajectories, DDP averages the
    gradients, so both U-Nets end identical; one history; a resume on 2 processes continues the run."""
    import dataclasses
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    from diffrl.training import read_history

    (tmp_path / "launched.py").write_text(PG_LAUNCHED)
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def launch(config) -> None:
        (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
        command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", str(tmp_path / "launched.py"),
                   str(tmp_path / "config.json"), str(tmp_path)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    launch(pg_config(tiny_sd_path, tmp_path, "run", iterations=1))
    launch(pg_config(tiny_sd_path, tmp_path, "run", iterations=2, resume="latest"))
    ranks = [load_file(tmp_path / f"rank{rank}.safetensors") for rank in (0, 1)]
    assert all(torch.equal(ranks[0][key], ranks[1][key]) for key in ranks[0])
    base = unet_weights(tiny_sd_path)
    assert any(not torch.equal(base[k], ranks[0][k]) for k in ranks[0])
    history = read_history(tmp_path / "run")
    assert [r["step"] for r in history] == [1, 2] and history[-1]["samples"] == 16  # 2 processes x 2 x 2 x 2


def test_pg_trainer_bad_input_is_a_clear_error(tiny_sd_path, tmp_path):
    from diffrl.training import ConfigError
    from diffrl.training.policy_gradient import PolicyGradientTrainer

    with pytest.raises(ConfigError, match="Unknown policy-gradient method 'ppo'"):
        pg_config(tiny_sd_path, tmp_path, "x", method="ppo")
    with pytest.raises(ConfigError, match="Unknown reward 'aesthetic'; choose from"):
        pg_config(tiny_sd_path, tmp_path, "x", reward="aesthetic")
    with pytest.raises(ConfigError, match="kl_weight anchors GRPO or DPG to the base model"):
        pg_config(tiny_sd_path, tmp_path, "x", kl_weight=0.1)
    with pytest.raises(ConfigError, match=r"'jpeg' is not differentiable: use \['ddpo', 'grpo', 'dpg'\], or a differentiable reward \(\['red', 'red_backdrop', 'contrast'\]\)"):
        pg_config(tiny_sd_path, tmp_path, "x", method="draft", reward="jpeg")
    with pytest.raises(ConfigError, match=r"draft_k \(3\) must be <= inference_steps \(2\)"):
        pg_config(tiny_sd_path, tmp_path, "x", method="draft", draft_k=3)
    with pytest.raises(FileNotFoundError, match="one prompt per line"):
        PolicyGradientTrainer(pg_config(tiny_sd_path, tmp_path, "x", prompts=str(tmp_path / "missing.txt")))
    PolicyGradientTrainer(pg_config(tiny_sd_path, tmp_path, "run", iterations=1)).train()
    with pytest.raises(RunDirError, match="already holds a run .*--resume latest, replace it with --overwrite"):
        PolicyGradientTrainer(pg_config(tiny_sd_path, tmp_path, "run", iterations=1))
    with pytest.raises(ConfigMismatchError, match=r"\(lr: 0.001 -> 0.0001\).*--allow-changed lr"):
        PolicyGradientTrainer(pg_config(tiny_sd_path, tmp_path, "run", iterations=2, lr=1e-4, resume="latest"))
    with pytest.raises(ConfigError, match="allow_changed names unknown setting"):
        pg_config(tiny_sd_path, tmp_path, "run", allow_changed=("lr_actor",))
    holding = PolicyGradientTrainer(pg_config(tiny_sd_path, tmp_path, "busy", iterations=1))  # one writer per folder
    with pytest.raises(RunLockedError, match="is in use by another run"):
        PolicyGradientTrainer(pg_config(tiny_sd_path, tmp_path, "busy", iterations=1))
    holding.train()  # releases the folder
    PolicyGradientTrainer(pg_config(tiny_sd_path, tmp_path, "busy", iterations=2, resume="latest")).train()


def test_pg_trainer_run_folder_overwrite_auto_resume_and_allowed_changes(tiny_sd_path, tmp_path):
    """The prompt trainer takes its folder as personalisation does (`claim_run_dir`): overwrite replaces a run,
    resume="auto" continues it (or starts an empty folder), an allowed change of lr takes effect on the resume."""
    from diffrl.training import read_history
    from diffrl.training.policy_gradient import PolicyGradientTrainer

    fresh = PolicyGradientTrainer(pg_config(tiny_sd_path, tmp_path, "run", iterations=1, resume="auto"))
    assert fresh.step == 0
    fresh.train()
    replaced = PolicyGradientTrainer(pg_config(tiny_sd_path, tmp_path, "run", iterations=1, overwrite=True))
    assert replaced.step == 0 and not (tmp_path / "run" / "checkpoints").exists()
    replaced.train()
    auto = PolicyGradientTrainer(pg_config(tiny_sd_path, tmp_path, "run", iterations=2, resume="auto", lr=1e-4,
                                           allow_changed=("lr",)))
    assert auto.step == 1 and auto.updater.optimizer.param_groups[0]["lr"] == 1e-4  # not the checkpoint's 1e-3
    auto.train()
    assert [r["step"] for r in read_history(tmp_path / "run")] == [1, 2]
    with pytest.raises(RunDirError, match="beyond iterations=1; resume with --iterations 2 or more"):
        PolicyGradientTrainer(pg_config(tiny_sd_path, tmp_path, "run", iterations=1, resume="latest"))


def test_diffrl_train_command(tiny_sd_path, tmp_path):
    from diffrl.cli import main

    config = pg_config(tiny_sd_path, tmp_path, "cli", iterations=1)
    argv = ["train", "--pretrained", config.pretrained, "--prompts", config.prompts, "--output-dir", config.output_dir,
            "--iterations", "1", "--prompts-per-batch", "2", "--samples-per-prompt", "2", "--inference-steps", "2",
            "--reward", "jpeg", "--method", "grpo"]
    assert main(argv) == 0
    assert (tmp_path / "cli" / "model" / "model_index.json").is_file()
    assert main(["train", "--pretrained", config.pretrained, "--prompts", config.prompts, "--output-dir",
                 str(tmp_path / "bad"), "--lr", "0"]) != 0  # a clear one-line error, not a traceback
