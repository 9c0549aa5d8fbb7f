"""The trainer on tiny models: exact resume, loadable output, two processes, and bad input."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffrl.data.images import ImageLoadError
from diffrl.training import ConfigError, NonFiniteLossError, ReferenceImages, TrainConfig, Trainer, check_identifier, train
from diffrl.training.build import build_loss
from diffrl.training.data import ensure_class_images

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def instance_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("instance")
    rng = np.random.default_rng(0)
    for index, size in enumerate([(20, 24), (16, 16), (30, 18)]):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


def config(tiny_sd_path: Path, instance_dir: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(
        pretrained=str(tiny_sd_path),
        instance_dir=str(instance_dir),
        instance_prompt="a photo of sks dog",
        output_dir=str(out),
        method="dreambooth",
        rewards={"lookforward": 1.0},
        lr_actor=1e-3,
        lr_critic=1e-3,
        max_steps=1,
        sample_steps=2,
        # DPG's critic at a tiny-model scale: it reaches the actor from step 3
        critic_states=2,
        critic_batch_size=4,
        critic_updates=2,
        warmup_steps=2,
        lam_ramp_steps=2,
    )
    return TrainConfig(**{**settings, **overrides})


def unet_hash(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, param in sorted(module.state_dict().items()):
        digest.update(name.encode() + param.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def trained_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in trainer.components.unet.named_parameters()}


def update_gap(start: dict[str, torch.Tensor], got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    """||(got - start) - (expected - start)|| / ||expected - start|| over all weights: 0 for the same training."""
    gap = sum(float((got[k] - expected[k]).pow(2).sum()) for k in expected)
    update = sum(float((expected[k] - start[k]).pow(2).sum()) for k in expected)
    return (gap / update) ** 0.5


def assert_same_training(start: dict[str, torch.Tensor], got: dict[str, torch.Tensor],
                         expected: dict[str, torch.Tensor]) -> None:
    """Weights to 1e-5 and the whole update to 1e-3 of its size. AdamW amplifies float noise only where a gradient
    is near its eps (1e-8): such an element moves by up to ~lr differently, so the runs use lr 1e-5."""
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-5, msg=key)
    assert update_gap(start, got, expected) < 1e-3


def initial_unet(path: Path) -> dict[str, torch.Tensor]:
    from diffusers import UNet2DConditionModel

    return {k: v.detach() for k, v in UNet2DConditionModel.from_pretrained(path, subfolder="unet").named_parameters()}


# ------------------------------------------------------------------ resume
def test_resume_reproduces_the_uninterrupted_run(tiny_sd_path: Path, instance_dir: Path, tmp_path: Path) -> None:
    """DPG (critic, target critic, replay buffer, PopArt statistics, the loss's and the envs' generators, the lambda
    schedule, critic-only updates, diagnostics) with prior preservation: 2 steps + resume == 4 steps, to 1e-6."""
    common = dict(method="dpg", batch_size=2, num_class_images=2, class_prompt="a photo of dog", class_dir=str(tmp_path / "cls"),
                  warmup_steps=1, lam_ramp_steps=2, critic_states=2, critic_batch_size=3, critic_updates=2,
                  diagnose_every=3)
    full = train(config(tiny_sd_path, instance_dir, tmp_path / "full", max_steps=4, **common))
    first = train(config(tiny_sd_path, instance_dir, tmp_path / "split", max_steps=2, **common))
    resumed = train(config(tiny_sd_path, instance_dir, tmp_path / "split", max_steps=4, resume="latest", **common))
    assert [h["step"] for h in first.history + resumed.history] == [1, 2, 3, 4]
    assert resumed.checkpoint.name == "ckpt-000004"
    for expected, got in zip(full.history[2:], resumed.history, strict=True):
        for key in ("loss_actor", "loss_critic", "reward", "prior_mse", "q_value", "lam", "critic_r2_fresh"):
            assert got[key] == pytest.approx(expected[key], abs=1e-6, rel=1e-6), key
    assert resumed.history[1]["critic/grad_cosine"] == pytest.approx(full.history[3]["critic/grad_cosine"], abs=1e-6)
    assert resumed.history[0]["lam"] > 0 and resumed.history[1]["lam"] == 1.0  # the critic reaches the actor
    assert full.history[2]["loss_critic"] != full.history[3]["loss_critic"]  # the comparison is not vacuous
    assert len(list((tmp_path / "cls").glob("*.png"))) == 2


def test_direct_reward_with_lam_zero_trains_like_dreambooth(tiny_sd_path: Path, instance_dir: Path, tmp_path: Path):
    """Paired randomness through the trainer: the same seed, images, t and eps; lam = 0 leaves DreamBooth's U-Net."""
    common = dict(max_steps=2, batch_size=2, rewards={"lookforward": 1.0})
    dreambooth = Trainer(config(tiny_sd_path, instance_dir, tmp_path / "db", method="dreambooth", **common))
    dreambooth.train()
    runs = {}
    for lam in (0.0, 1.0):
        cfg = config(tiny_sd_path, instance_dir, tmp_path / f"direct{lam}", method="direct_reward", lam=lam, **common)
        runs[lam] = Trainer(cfg)
        history = runs[lam].train().history
        assert history[-1]["reward_policy"] < 0 and "eps_mse" in history[-1]
    assert unet_hash(runs[0.0].components.unet) == unet_hash(dreambooth.components.unet)
    assert unet_hash(runs[1.0].components.unet) != unet_hash(dreambooth.components.unet)


def test_build_loss_rejects_a_method_it_has_no_loss_for(tiny_sd_path: Path, instance_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Unknown method 'ppo'; choose from \['dreambooth', 'dpg'"):
        config(tiny_sd_path, instance_dir, tmp_path / "run", method="ppo")
    cfg = config(tiny_sd_path, instance_dir, tmp_path / "run")
    cfg.method = "ppo"  # validated on construction; changed afterwards, it must not silently become DPG
    with pytest.raises(ValueError, match="Unknown method 'ppo'"):
        Trainer(cfg)


def test_a_registered_method_trains_without_other_changes(tiny_sd_path: Path, instance_dir: Path,
                                                          tmp_path: Path) -> None:
    from diffrl.training import methods

    calls = []

    @methods.register_method("test_halved_dreambooth", uses_rewards=False, summary="DreamBooth, quarter prior")
    def build(cfg, context):
        calls.append(cfg.method)
        loss = methods.build_dreambooth(cfg, context)
        loss.config.prior_weight = 0.25
        return loss

    try:
        with pytest.raises(ValueError, match="already registered"):
            methods.register_method("test_halved_dreambooth", uses_rewards=False, summary="again")(build)
        trainer = Trainer(config(tiny_sd_path, instance_dir, tmp_path / "run", method="test_halved_dreambooth"))
        assert calls == ["test_halved_dreambooth"] and trainer.loss.config.prior_weight == 0.25
        assert not trainer.config.uses_rewards
    finally:
        del methods.METHODS["test_halved_dreambooth"]


def test_lr_actor_none_takes_the_pretrained_folders_recommendation(tiny_sd_path: Path, instance_dir: Path,
                                                                  tmp_path: Path) -> None:
    import shutil

    from diffrl.models import FINETUNING_FILE, ModelLoadError
    from diffrl.training.config import DEFAULT_LR_ACTOR

    assert config(tiny_sd_path, instance_dir, tmp_path / "a", lr_actor=None).resolved_lr_actor() == DEFAULT_LR_ACTOR
    folder = tmp_path / "pipeline"
    shutil.copytree(tiny_sd_path, folder)
    (folder / FINETUNING_FILE).write_text('{"lr_actor": 2e-4}')
    cfg = config(folder, instance_dir, tmp_path / "b", lr_actor=None, max_steps=1)
    assert cfg.resolved_lr_actor() == 2e-4
    trainer = Trainer(cfg)
    assert trainer.scheduler.base_lrs[0] == 2e-4  # what the optimizer uses
    exported = trainer.train().model_dir  # the personalised model recommends what its base model did
    assert config(exported, instance_dir, tmp_path / "f", lr_actor=None).resolved_lr_actor() == 2e-4
    assert config(folder, instance_dir, tmp_path / "c", lr_actor=1e-5).resolved_lr_actor() == 1e-5  # explicit wins
    (folder / FINETUNING_FILE).write_text('{"lr_actor": "fast"}')
    with pytest.raises(ModelLoadError, match="must map setting names to numbers.*fix or delete it"):
        config(folder, instance_dir, tmp_path / "d", lr_actor=None).resolved_lr_actor()
    with pytest.raises(ConfigError, match="lr_actor must be > 0 or None"):
        config(folder, instance_dir, tmp_path / "e", lr_actor=0.0)


def test_progress_is_scored_at_step_zero_every_n_steps_and_at_the_end_without_touching_the_run(
        tiny_sd_path: Path, instance_dir: Path, tmp_path: Path) -> None:
    from diffrl.training import Progress, progress_curve, read_history

    def score(components, step: int) -> dict[str, float]:
        torch.randn(100)  # a scorer that draws random numbers must not change the run
        return {"norm": float(sum(p.double().norm() for p in components.unet.parameters())), "step_seen": float(step)}

    plain = Trainer(config(tiny_sd_path, instance_dir, tmp_path / "plain", max_steps=3))
    plain.train()
    scored = Trainer(config(tiny_sd_path, instance_dir, tmp_path / "scored", max_steps=2))
    scored.train(Progress(score, every=2))
    resumed = Trainer(config(tiny_sd_path, instance_dir, tmp_path / "scored", max_steps=3, resume="latest"))
    resumed.train(Progress(score, every=2))
    assert unet_hash(resumed.components.unet) == unet_hash(plain.components.unet)
    history = read_history(tmp_path / "scored")
    steps, seen = progress_curve(history, "step_seen")
    assert steps == [0, 2, 3] and seen == [0.0, 2.0, 3.0]  # no second step-0 point after the resume
    _, norms = progress_curve(history, "norm")
    assert norms[0] != norms[-1]  # the model changed between the first and last points
    state = torch.get_rng_state()
    Progress(score, every=1).measure(plain.components, 0)
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        Progress(score, every=0)


# ------------------------------------------------------------------ output
def test_full_finetune_output_loads_with_from_pretrained(tiny_sd_path: Path, instance_dir: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    trainer = Trainer(config(tiny_sd_path, instance_dir, tmp_path / "run", sample_every=1, num_samples=2))
    result = trainer.train()
    pipe = StableDiffusionPipeline.from_pretrained(result.model_dir, safety_checker=None)
    assert unet_hash(pipe.unet) == unet_hash(trainer.components.unet)
    assert unet_hash(pipe.unet) != unet_hash(StableDiffusionPipeline.from_pretrained(tiny_sd_path).unet)
    images = pipe("a photo of sks dog", num_inference_steps=2, output_type="pt").images
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    assert list((tmp_path / "run" / "logs" / "diffrl").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("text_encoder", [False, True])
def test_lora_export_loads_with_load_lora_weights_and_reproduces_the_trained_model(
        tiny_sd_path: Path, instance_dir: Path, tmp_path: Path, text_encoder: bool) -> None:
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    trainer = Trainer(config(tiny_sd_path, instance_dir, tmp_path / "run", lora_rank=2, lr_actor=1e-2, max_steps=2,
                             train_text_encoder=text_encoder))
    result = trainer.train()
    saved = load_file(result.model_dir / "pytorch_lora_weights.safetensors")
    assert any(k.startswith("text_encoder.") for k in saved) == text_encoder and any(k.startswith("unet.") for k in saved)
    trained_b = [v for k, v in saved.items() if "lora_B" in k and k.startswith("text_encoder." if text_encoder else "unet.")]
    assert trained_b and any(v.abs().max() > 0 for v in trained_b)  # the adapters moved off their identity init

    def images(pipe) -> torch.Tensor:
        pipe.set_progress_bar_config(disable=True)
        return pipe("a photo of sks dog", num_inference_steps=2, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    trained = images(trainer.components.pipeline())
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_path, safety_checker=None)
    base = images(pipe)
    pipe.load_lora_weights(result.model_dir)
    loaded = images(pipe)
    assert not torch.allclose(base, trained, atol=1e-4)
    torch.testing.assert_close(loaded, trained, rtol=1e-4, atol=1e-5)


def test_bf16_run_follows_a_full_precision_run_in_one_process(tiny_sd_path: Path, instance_dir: Path, tmp_path: Path) -> None:
    train(config(tiny_sd_path, instance_dir, tmp_path / "fp32"))
    trainer = Trainer(config(tiny_sd_path, instance_dir, tmp_path / "bf16", mixed_precision="bf16"))
    assert trainer.accelerator.mixed_precision == "bf16"
    result = trainer.train()
    assert result.step == 1 and np.isfinite(result.history[0]["loss_actor"])


# ------------------------------------------------------------------ two processes
LAUNCHED = """
import sys
from pathlib import Path
from accelerate import PartialState
from safetensors.torch import save_file
from diffrl.training import TrainConfig, Trainer

for name in sys.argv[2:]:
    trainer = Trainer(TrainConfig.from_json(Path(sys.argv[1], f"{name}.json").read_text()))
    trainer.train()
    trained = {f"{i}": p.detach().contiguous() for i, p in enumerate([*trainer.actor_params, *trainer.critic_params])}
    save_file(trained, str(Path(sys.argv[1], f"{name}-rank{PartialState().process_index}.safetensors")))
"""


def test_two_processes_step_like_one_process_with_twice_the_batch(tiny_sd_path: Path, instance_dir: Path,
                                                                   tmp_path: Path) -> None:
    """DDP through Accelerate (gloo on CPU): DreamBooth with 2 processes x batch 1 ends where 1 process x batch 2 does
    (`assert_same_training` after 3 AdamW steps); DPG (actor, critic, critic-only updates) keeps both processes identical."""
    from safetensors.torch import load_file

    runs = {"dreambooth": config(tiny_sd_path, instance_dir, tmp_path / "db2", max_steps=3, lr_actor=1e-5),
            "dpg": config(tiny_sd_path, instance_dir, tmp_path / "dpg2", method="dpg", max_steps=3)}
    for name, cfg in runs.items():
        (tmp_path / f"{name}.json").write_text(cfg.to_json())
    (tmp_path / "launched.py").write_text(textwrap.dedent(LAUNCHED))
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", str(tmp_path / "launched.py"), str(tmp_path), *runs]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in runs:
        ranks = [load_file(tmp_path / f"{name}-rank{rank}.safetensors") for rank in (0, 1)]
        assert all(torch.equal(ranks[0][key], ranks[1][key]) for key in ranks[0])
    assert (tmp_path / "db2" / "model" / "model_index.json").is_file()
    single = Trainer(config(tiny_sd_path, instance_dir, tmp_path / "db1", max_steps=3, batch_size=2, lr_actor=1e-5))
    single.train()
    distributed = load_file(tmp_path / "dreambooth-rank0.safetensors")
    names = [name for name, param in single.components.unet.named_parameters() if param.requires_grad]
    assert len(distributed) == len(names) == len(single.actor_params)
    assert_same_training(initial_unet(tiny_sd_path), {name: distributed[str(i)] for i, name in enumerate(names)},
                         trained_weights(single))


# ------------------------------------------------------------------ bad input
def test_missing_empty_and_unreadable_instance_images(tiny_sd_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="nowhere.*does not exist"):
        Trainer(config(tiny_sd_path, tmp_path / "nowhere", tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ImageLoadError, match="empty.*contains no images"):
        Trainer(config(tiny_sd_path, tmp_path / "empty", tmp_path / "out"))
    (tmp_path / "bad").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "bad" / "good.png")
    (tmp_path / "bad" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        ReferenceImages.from_folder(tmp_path / "bad", 16)


def test_prompt_without_identifier_warns(tiny_sd_path: Path, instance_dir: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="'sks'"):
        check_identifier("a photo of a dog", "sks")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_identifier("a photo of sks dog", "sks")
    with pytest.warns(UserWarning, match="does not contain the identifier token 'zwx'"):
        Trainer(config(tiny_sd_path, instance_dir, tmp_path / "out", identifier="zwx"))


def nan_at_step(step: int):
    """A loss factory whose loss is NaN at `step` (1-based)."""

    def factory(cfg: TrainConfig, context):
        loss = build_loss(cfg, context)
        calls = {"n": 0}

        def poison(module, args, out):
            calls["n"] += 1
            if calls["n"] == step:
                out["loss_actor"] = out["loss_actor"] * float("nan")
            return out

        loss.register_forward_hook(poison)
        return loss

    return factory


def test_ema_weights_are_exported_and_resume_exactly(tiny_sd_path: Path, instance_dir: Path, tmp_path: Path) -> None:
    """EMA and gradient accumulation on: the exported weights are the average, and 2 steps + resume == 4 steps."""
    from diffrl.models import load_sd_components

    common = dict(method="dreambooth", use_ema=True, ema_decay=0.5, checkpoint_every=2, gradient_accumulation_steps=2)
    trainer = Trainer(config(tiny_sd_path, instance_dir, tmp_path / "full", max_steps=4, **common))
    result = trainer.train()
    live = {k: v.detach().clone() for k, v in trainer.components.unet.named_parameters()}
    exported = dict(load_sd_components(str(result.model_dir)).unet.named_parameters())
    with trainer.ema_weights():
        averaged = {k: v.detach().clone() for k, v in trainer.components.unet.named_parameters()}
    assert all(torch.equal(v, trainer.components.unet.get_parameter(k)) for k, v in live.items())  # restored
    assert any(not torch.equal(live[k], averaged[k]) for k in live)
    for key, value in averaged.items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=0, msg=key)
    train(config(tiny_sd_path, instance_dir, tmp_path / "split", max_steps=2, **common))
    resumed = train(config(tiny_sd_path, instance_dir, tmp_path / "split", max_steps=4, resume="latest", **common))
    split = dict(load_sd_components(str(resumed.model_dir)).unet.named_parameters())
    for key, value in exported.items():
        torch.testing.assert_close(split[key], value, rtol=0, atol=1e-7, msg=key)
    with pytest.raises(ConfigError, match="ema_decay must be in"):
        config(tiny_sd_path, instance_dir, tmp_path / "bad", ema_decay=1.0)


def test_gradient_checkpointing_gives_the_same_training(tiny_sd_path: Path, instance_dir: Path, tmp_path: Path) -> None:
    weights = []
    for checkpointing in (False, True):
        trainer = Trainer(config(tiny_sd_path, instance_dir, tmp_path / str(checkpointing), method="dpg", max_steps=3,
                                 warmup_steps=0, train_text_encoder=True, gradient_checkpointing=checkpointing))
        assert trainer.components.unet.is_gradient_checkpointing == checkpointing
        trainer.train()
        weights.append(dict(trainer.components.unet.named_parameters()))
    plain, recomputed = weights
    assert any(not torch.equal(p, q) for p, q in zip(plain.values(), load_unet_params(tiny_sd_path).values()))
    for name, value in plain.items():
        torch.testing.assert_close(recomputed[name], value, rtol=1e-5, atol=1e-6, msg=name)


def load_unet_params(path: Path) -> dict[str, torch.Tensor]:
    from diffrl.models import load_sd_components

    return dict(load_sd_components(str(path)).unet.named_parameters())


def test_a_step_the_grad_scaler_skips_moves_neither_the_schedule_nor_the_target_critic(
        tiny_sd_path: Path, instance_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = Trainer(config(tiny_sd_path, instance_dir, tmp_path / "run", method="dpg", max_steps=2))
    trainer.train_step()
    targets = {name: getattr(trainer.loss, name).detach().clone()
               for name in ("target_critic_params", "target_value_network_params")}
    schedule = trainer.scheduler.last_epoch
    # what an fp16 overflow looks like to the trainer (the scaler skipped optimizer.step)
    monkeypatch.setattr(type(trainer.accelerator), "optimizer_step_was_skipped", property(lambda self: True))
    logs = trainer.train_step()
    assert logs["skipped"] == 1.0 and trainer.scheduler.last_epoch == schedule
    for name, before in targets.items():  # PopArt may rescale heads; no Polyak step, no critic-only updates
        after = getattr(trainer.loss, name)
        for key in ("blocks", "project", "modulate", "time_mlp", "text_proj"):
            assert (after[key] == before[key]).all(), (name, key)


def test_nonfinite_loss_raises_or_skips(tiny_sd_path: Path, instance_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match=r"step 2: loss_actor=nan"):
        train(config(tiny_sd_path, instance_dir, tmp_path / "raise", max_steps=3), loss_factory=nan_at_step(2))
    trainer = Trainer(config(tiny_sd_path, instance_dir, tmp_path / "skip", max_steps=2, nonfinite="skip"), nan_at_step(2))
    trainer.train_step()
    assert trainer.step == 1
    before = unet_hash(trainer.components.unet)
    with pytest.warns(RuntimeWarning, match="Non-finite loss at step 2: loss_actor=nan.*Skipping"):
        logs = trainer.train_step()
    assert logs["skipped"] == 1.0 and unet_hash(trainer.components.unet) == before
    assert all(torch.isfinite(p).all() for p in trainer.actor_params)


def test_report_to_all_logs_scalars_and_validation_grids_to_tensorboard_and_offline_wandb(
        tiny_sd_path: Path, instance_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(config(tiny_sd_path, instance_dir, tmp_path / "run", max_steps=2, sample_every=2, num_samples=2,
                 report_to="all"))
    events = EventAccumulator(str(tmp_path / "run" / "logs" / "diffrl"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss_actor")] == [1, 2] and events.Tags()["images"] == ["samples"]
    (run,) = (tmp_path / "run" / "logs" / "wandb").glob("offline-run-*")
    assert list(run.glob("*.wandb")) and list(run.rglob("media/images/samples_*.png"))
    resumed = train(config(tiny_sd_path, instance_dir, tmp_path / "run", max_steps=3, resume="latest", report_to="all"))
    assert resumed.step == 3 and len(list((tmp_path / "run" / "logs" / "wandb").glob("offline-run-*"))) == 2
    assert all(r.name.endswith((tmp_path / "run" / "logs" / "wandb_run_id").read_text())  # one wandb run, resumed
               for r in (tmp_path / "run" / "logs" / "wandb").glob("offline-run-*"))


def test_report_to_wandb_without_wandb_installed_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"report_to='wandb' needs the wandb package.*pip install wandb"):
        config(Path("sd"), Path("inst"), tmp_path, report_to="wandb")
    with pytest.raises(ConfigError, match=r"report_to must be one of"):
        config(Path("sd"), Path("inst"), tmp_path, report_to="mlflow")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(lr_actor=0.0), "lr_actor must be > 0"),
        (dict(batch_size=0), "batch_size must be > 0"),
        (dict(method="ppo"), "Unknown method .ppo.; choose from"),
        (dict(actor_weighting="sqrt"), "actor_weighting must be one of"),
        (dict(mixed_precision="fp8"), "mixed_precision must be one of"),
        (dict(gamma=1.5), r"gamma must be in \[0, 1\]"),
        (dict(resolution=12), "multiple of 8"),
        (dict(num_class_images=4), "needs class_prompt"),
        (dict(rewards={"clip": 1.0}), r"Unknown reward\(s\) \['clip'\]"),
        (dict(method="dpg", rewards={"lookforward": 0.0}), "non-zero weight"),
        (dict(grad_clip=0.0), "grad_clip must be > 0 or None"),
        (dict(nonfinite="ignore"), "nonfinite must be one of"),
        (dict(instance_prompt=" "), "instance_prompt must not be empty"),
        (dict(rewards={"lookforward": float("nan")}), r"rewards\['lookforward'\] .*finite number >= 0, got nan"),
        (dict(method="dpg", rewards={"lookforward": 1.0, "dino": -0.5}), r"rewards\['dino'\] .*got -0.5"),
        (dict(lr_critic=float("inf")), "lr_critic must be a finite number, got inf"),
        (dict(prior_weight=float("nan")), "prior_weight must be a finite number, got nan"),
        (dict(allow_changed=("lr",)), r"allow_changed names unknown setting\(s\) \['lr'\]"),
        (dict(resume="auto", overwrite=True), "exclude each other"),
    ],
)
def test_invalid_hyperparameters(overrides: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        config(Path("sd"), Path("inst"), tmp_path, **overrides)


def test_gradient_accumulation_steps_like_one_larger_batch(tiny_sd_path: Path, instance_dir: Path, tmp_path: Path) -> None:
    """2 micro-batches of 1 image == 1 batch of 2 images (the same global rows: images, augmentation, t and noise),
    prior preservation included, after 3 AdamW steps; 1 image per step is another training (the test can fail)."""
    common = dict(max_steps=3, lr_actor=1e-5, num_class_images=2, class_prompt="a photo of dog",
                  class_dir=str(tmp_path / "cls"))
    runs = {}
    for name, batch, accumulation in (("batch2", 2, 1), ("accumulated", 1, 2), ("batch1", 1, 1)):
        trainer = Trainer(config(tiny_sd_path, instance_dir, tmp_path / name, batch_size=batch,
                                 gradient_accumulation_steps=accumulation, **common))
        trainer.train()
        runs[name] = trained_weights(trainer)
    start = initial_unet(tiny_sd_path)
    assert_same_training(start, runs["accumulated"], runs["batch2"])
    assert update_gap(start, runs["batch1"], runs["batch2"]) > 0.1


# ------------------------------------------------------------------ data
def test_augmentation_is_a_function_of_seed_step_and_rank(instance_dir: Path) -> None:
    data = ReferenceImages.from_folder(instance_dir, 16, crop_scale=0.5)
    assert data.batch(3, 2, seed=0).shape == (2, 3, 16, 16)
    assert torch.equal(data.batch(3, 2, seed=0), data.batch(3, 2, seed=0))
    assert not torch.equal(data.batch(3, 2, seed=0), data.batch(4, 2, seed=0))
    assert not torch.equal(data.batch(3, 2, seed=0, rank=0, world_size=2), data.batch(3, 2, seed=0, rank=1, world_size=2))
    epoch = [i for step in range(3) for i in data.indices(step, 1, seed=0)]
    assert sorted(epoch) == [0, 1, 2]  # every image once per epoch
    # a global row's image does not depend on how the global batch is split over processes or positions
    split = torch.cat([data.batch(3, 1, seed=0, rank=rank, world_size=2) for rank in (0, 1)])
    assert torch.equal(split, data.batch(3, 2, seed=0)) and torch.equal(split, torch.cat([data.batch(6, 1, seed=0), data.batch(7, 1, seed=0)]))


def test_no_augmentation_returns_the_images_unchanged(instance_dir: Path) -> None:
    data = ReferenceImages.from_folder(instance_dir, 16, random_flip=False, crop_scale=1.0)
    indices = data.indices(0, 2, seed=0)
    assert torch.equal(data.batch(0, 2, seed=0), data.stacked[indices])


def test_class_images_are_generated_once_and_reused(tmp_path: Path) -> None:
    calls = []

    def generate(first: int, n: int) -> torch.Tensor:
        calls.append((first, n))
        return torch.rand(n, 3, 8, 8)

    paths = ensure_class_images(tmp_path, 5, generate, batch_size=2)
    assert calls == [(0, 2), (2, 2), (4, 1)] and len(paths) == 5
    calls.clear()
    assert ensure_class_images(tmp_path, 6, generate, batch_size=2)[:5] == paths
    assert calls == [(5, 1)]
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


# ------------------------------------------------------------------ example and CLI
def run_example(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    script = REPO / "examples" / "personalize_dino.py"
    return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=180)


def test_demo_trains_both_methods_on_two_subjects_and_draws_grid_and_progress(tmp_path: Path) -> None:
    from diffrl.training import progress_curve, read_history

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(REPO / "examples" / "demo.py"), "--steps", "2", "--score-every", "1",
               "--dpg-critic-states", "1", "--threads", "1", "--output-dir", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "grid.png").is_file() and (tmp_path / "progress.png").is_file()
    curves = {}
    for subject in ("guide_dog", "fancy_boot"):
        for method in ("dreambooth", "dpg"):
            steps, dino = progress_curve(read_history(tmp_path / subject / method), "DINO")
            assert steps == [0, 1, 2] and all(-1 <= d <= 1 for d in dino)
            curves[subject, method] = dino
        assert curves[subject, "dreambooth"][0] == curves[subject, "dpg"][0]  # one base model, one set of seeds
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)  # finished: re-plots
    assert again.returncode == 0, again.stderr[-3000:]
    assert progress_curve(read_history(tmp_path / "guide_dog" / "dpg"), "DINO")[1] == curves["guide_dog", "dpg"]
    same_class = subprocess.run([*command, "--subjects", "guide_dog", "guide_dog"], env=env, capture_output=True,
                                text=True, timeout=120)
    assert same_class.returncode == 2 and "different classes" in same_class.stderr


def grid_rows(path: Path) -> list[np.ndarray]:
    """The rows (references, before, after) of the example's before/after grid (make_grid: 2-pixel padding)."""
    grid = np.asarray(Image.open(path).convert("RGB"))
    size = (grid.shape[0] - 2) // 3 - 2
    return [grid[2 + row * (size + 2) : 2 + row * (size + 2) + size] for row in range(3)]


def test_example_writes_grid_and_reward_curve_and_resumes_a_finished_run(tmp_path: Path) -> None:
    args = ["--output-dir", str(tmp_path), "--max-steps", "1", "--checkpoint-every", "0", "--lr-actor", "1e-3"]
    done = run_example(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("before_after.png", "reward_curve.png", "model/model_index.json"):
        assert (tmp_path / name).is_file(), name
    _, before, after = grid_rows(tmp_path / "before_after.png")
    assert not np.array_equal(before, after)  # the comparison below can tell trained from base weights
    again = run_example(*args, "--resume", "latest")  # at max_steps already: nothing to train, nothing to crash
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reward curve: steps 1-1" in again.stdout  # read back from the run folder, not from this process
    _, resumed_before, resumed_after = grid_rows(tmp_path / "before_after.png")
    assert np.array_equal(resumed_before, before)  # the base model, not the resumed weights
    assert np.array_equal(resumed_after, after)


def load_example():
    spec = importlib.util.spec_from_file_location("personalize_dino", REPO / "examples" / "personalize_dino.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_honours_instance_flags_without_pretrained(instance_dir: Path, tmp_path: Path) -> None:
    example = load_example()
    cfg, _ = example.build_config(["--instance-dir", str(instance_dir), "--instance-prompt", "a sks blob",
                                   "--output-dir", str(tmp_path)])
    assert (cfg.instance_dir, cfg.instance_prompt, cfg.class_prompt) == (str(instance_dir), "a sks blob", None)
    assert cfg.dino_kwargs  # still the zoo's model and DINO
    cfg, _ = example.build_config(["--instance-prompt", "a photo of sks poodle", "--output-dir", str(tmp_path)])
    assert cfg.instance_prompt == "a photo of sks poodle" and cfg.instance_dir.endswith(example.DEFAULT_SUBJECT)
    with pytest.raises(ConfigError, match="--instance-dir needs --instance-prompt"):
        example.build_config(["--instance-dir", str(instance_dir)])
    with pytest.raises(ConfigError, match="give one of them"):
        example.build_config(["--instance-dir", str(instance_dir), "--instance-prompt", "a sks x", "--subject", "cat"])
    with pytest.raises(ConfigError, match="--pretrained needs --instance-dir and --instance-prompt"):
        example.build_config(["--pretrained", "sd"])
    done = run_example("--instance-dir", str(tmp_path / "nonexistent"), "--instance-prompt", "a sks dog",
                       "--output-dir", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"personalize_dino.py: error: Image folder '{tmp_path}")
    assert "Traceback" not in done.stderr


def test_personalize_command_is_registered() -> None:
    from diffrl.cli import build_parser
    from diffrl.training.cli import config_from_args

    args = build_parser().parse_args(
        ["personalize", "--pretrained", "sd", "--instance-dir", "d", "--instance-prompt", "a sks dog", "--output-dir", "o",
         "--rewards", "lookforward=1,dino=0.25", "--method", "one_step"]
    )
    cfg = config_from_args(args)
    assert cfg.rewards == {"lookforward": 1.0, "dino": 0.25} and cfg.method == "one_step"
    assert cfg.actor_weighting == "gamma_t"
    args = build_parser().parse_args(
        ["personalize", "--pretrained", "sd", "--instance-dir", "d", "--instance-prompt", "a sks dog", "--output-dir", "o",
         "--method", "direct_reward", "--rewards", "dino", "--actor-weighting", "snr", "--lam", "0.5"]
    )
    cfg = config_from_args(args)
    assert (cfg.method, cfg.actor_weighting, cfg.lam) == ("direct_reward", "snr", 0.5)
