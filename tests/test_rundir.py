"""Run folders: one writer, no silent overwrite, resume checks, interrupted and failed writes, and user errors."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import diffrl.training.trainer as trainer_module
from diffrl.cli import main
from diffrl.io import DiskFullError
from diffrl.training import CheckpointError, ConfigError, TrainConfig, Trainer, train
from diffrl.training.acceleration import wait_past_event_files
from diffrl.training.checkpoint import list_checkpoints, resolve_checkpoint
from diffrl.training.history import read_history
from diffrl.training.lock import LOCK_FILE, RunDirError, RunLock, RunLockedError
from diffrl.training.rundir import ConfigMismatchError, config_differences, open_run_dir

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def instance_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("instance")
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


LIGHT_CRITIC = dict(critic_states=2, critic_batch_size=4, critic_updates=2, warmup_steps=2, lam_ramp_steps=2)
"""DPG's critic at a tiny-model scale (it reaches the actor from step 3)."""


def config(tiny_sd_path: Path, instance_dir: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(pretrained=str(tiny_sd_path), instance_dir=str(instance_dir), instance_prompt="a photo of sks dog",
                    output_dir=str(out), method="dreambooth", rewards={"lookforward": 1.0}, lr_actor=1e-3,
                    lr_critic=1e-3, max_steps=2, sample_steps=2, **LIGHT_CRITIC)
    return TrainConfig(**{**settings, **overrides})


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def unet_hash(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, param in sorted(module.state_dict().items()):
        digest.update(name.encode() + param.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


STALLED_RUN = """
import sys, time
from pathlib import Path
from diffrl.training import TrainConfig, Trainer
from diffrl.training.build import build_loss

stall_at = int(sys.argv[2])

def factory(cfg, context):  # the loss's forward of step `stall_at` hangs: the test kills the run there
    loss = build_loss(cfg, context)
    calls = {"n": 0}
    def stall(module, args):
        calls["n"] += 1
        if calls["n"] == stall_at:
            print("STALLED", flush=True)
            time.sleep(600)
    loss.register_forward_pre_hook(stall)
    return loss

Trainer(TrainConfig.from_json(Path(sys.argv[1]).read_text()), factory).train()
"""


def start_stalled_run(cfg: TrainConfig, stall_at: int, tmp_path: Path) -> subprocess.Popen:
    """A real training process that hangs in step `stall_at` (after its earlier steps and checkpoints)."""
    (tmp_path / "run.json").write_text(cfg.to_json())
    log = open(tmp_path / "stalled.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(STALLED_RUN), str(tmp_path / "run.json"),
                             str(stall_at)], stdout=subprocess.PIPE, stderr=log, text=True, env=ENV)
    lines = iter(proc.stdout.readline, "")  # libraries may print first (torchrl logs its replay storage to stdout)
    if not any(line.strip() == "STALLED" for line in lines):
        proc.kill()
        pytest.fail(f"the training process did not reach step {stall_at}: {(tmp_path / 'stalled.log').read_text()}")
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


# ------------------------------------------------------------------ a killed run resumes exactly
def test_killed_training_process_resumes_to_the_uninterrupted_result(tiny_sd_path, instance_dir, tmp_path, caplog):
    """DPG (critic, env noise), checkpoint at step 4, SIGKILL in step 6, resume: == 8 uninterrupted steps."""
    common = dict(method="dpg", max_steps=8, checkpoint_every=4)
    full = Trainer(config(tiny_sd_path, instance_dir, tmp_path / "full", **common))
    full.train()
    split = config(tiny_sd_path, instance_dir, tmp_path / "split", **common)
    proc = start_stalled_run(split, stall_at=6, tmp_path=tmp_path)
    kill(proc)
    assert [r["step"] for r in read_history(tmp_path / "split")] == [1, 2, 3, 4, 5]  # step 5 is after the checkpoint
    with caplog.at_level(logging.WARNING):
        resumed = Trainer(dataclasses.replace(split, resume="latest"))
    assert f"from PID {proc.pid} on host {socket.gethostname()}" in caplog.text and "Taking over" in caplog.text
    assert resumed.step == 4
    resumed.train()
    assert unet_hash(resumed.components.unet) == unet_hash(full.components.unet)
    assert read_history(tmp_path / "split") == read_history(tmp_path / "full")  # steps 1-8 once each, same values
    assert [r["step"] for r in read_history(tmp_path / "full")] == list(range(1, 9))
    assert tensorboard_steps(tmp_path / "split" / "logs", "train/loss_actor") == list(range(1, 9))  # none twice


def test_a_resume_opens_its_event_file_after_the_interrupted_runs_second(tmp_path: Path) -> None:
    """TensorBoard reads event files in name order (creation second, then host and PID); in the same second, a resumed
    run's file (the lower PID) sorted first and its purge of the interrupted run's steps did nothing (seen in CI)."""
    now = int(time.time())
    (tmp_path / f"events.out.tfevents.{now:010d}.{socket.gethostname()}.999999.0").write_bytes(b"")
    wait_past_event_files(tmp_path)
    assert time.time() >= now + 1
    started = time.monotonic()
    wait_past_event_files(tmp_path / "empty")  # no event files: no wait
    assert time.monotonic() - started < 0.1


def tensorboard_steps(logs: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logs / "diffrl"))  # the Accelerate tracker's folder
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


# ------------------------------------------------------------------ one writer per folder
def test_a_second_run_into_a_busy_folder_fails_at_once_naming_the_holder(tiny_sd_path, instance_dir, tmp_path, capsys):
    cfg = config(tiny_sd_path, instance_dir, tmp_path / "run", max_steps=3, checkpoint_every=1)
    proc = start_stalled_run(cfg, stall_at=2, tmp_path=tmp_path)
    try:
        before = sorted(str(p.relative_to(tmp_path / "run")) for p in (tmp_path / "run").rglob("*"))
        started = time.monotonic()
        argv = ["personalize", "--pretrained", str(tiny_sd_path), "--instance-dir", str(instance_dir),
                "--instance-prompt", "a photo of sks dog", "--output-dir", str(tmp_path / "run"), "--resume", "auto",
                "--method", "dreambooth", "--max-steps", "3"]
        assert main(argv) == 2
        assert time.monotonic() - started < 10  # before any model is loaded
        err = capsys.readouterr().err
        assert f"is in use by another run, PID {proc.pid} on host {socket.gethostname()}" in err
        assert len(err.strip().splitlines()) == 1
        after = sorted(str(p.relative_to(tmp_path / "run")) for p in (tmp_path / "run").rglob("*"))
        assert after == before
    finally:
        kill(proc)


def test_lock_is_exclusive_and_a_dead_holders_lock_is_taken_over(tmp_path: Path, caplog) -> None:
    held = RunLock(tmp_path)
    with pytest.raises(RunLockedError, match=f"in use by another run, PID {os.getpid()} on host"):
        RunLock(tmp_path)
    held.release()
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released cleanly: nothing to report
    with caplog.at_level(logging.WARNING):
        RunLock(tmp_path).release()
    assert "Taking over" not in caplog.text
    holder = subprocess.run([sys.executable, "-c", "import os, sys; from diffrl.training.lock import RunLock; "
                             "RunLock(sys.argv[1]); os._exit(0)", str(tmp_path)], env=ENV, timeout=60)
    assert holder.returncode == 0
    assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == socket.gethostname()
    with caplog.at_level(logging.WARNING):
        lock = RunLock(tmp_path)
    assert "Taking over" in caplog.text and "ended without releasing it" in caplog.text
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_another_hosts_record_is_not_taken_over(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 4242, "host": "gpu-node-7", "since": "yesterday"}))
    with pytest.raises(RunLockedError, match=r"PID 4242 on host gpu-node-7.*may still be running there.*delete"):
        RunLock(tmp_path)


# ------------------------------------------------------------------ no silent overwrite
def test_rerun_into_a_finished_folder_is_refused_and_overwrite_replaces_it(tiny_sd_path, instance_dir, tmp_path):
    train(config(tiny_sd_path, instance_dir, tmp_path, max_steps=2, checkpoint_every=1))
    weights = tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    before = file_hash(weights)
    with pytest.raises(RunDirError, match=r"already holds a run \(checkpoints, model, logs, history.jsonl\).*"
                                          r"--resume latest.*--overwrite"):
        Trainer(config(tiny_sd_path, instance_dir, tmp_path, max_steps=1))
    assert file_hash(weights) == before and resolve_checkpoint(tmp_path / "checkpoints", "latest").name == "ckpt-000002"
    result = train(config(tiny_sd_path, instance_dir, tmp_path, max_steps=1, overwrite=True))
    assert result.step == 1 and file_hash(weights) != before
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["ckpt-000001"]
    assert [r["step"] for r in read_history(tmp_path)] == [1]


def test_resume_auto_starts_an_empty_folder_and_resumes_a_started_one(tiny_sd_path, instance_dir, tmp_path):
    first = train(config(tiny_sd_path, instance_dir, tmp_path, max_steps=1, resume="auto"))
    assert first.step == 1 and [h["step"] for h in first.history] == [1]
    trainer = Trainer(config(tiny_sd_path, instance_dir, tmp_path, max_steps=2, resume="auto"))
    assert trainer.step == 1
    trainer.train()
    assert [r["step"] for r in read_history(tmp_path)] == [1, 2]


def test_resume_auto_restarts_an_attempt_without_checkpoint_but_never_a_finished_model(tmp_path, caplog) -> None:
    cfg = config(Path("sd"), Path("images"), tmp_path, resume="auto")
    (tmp_path / "logs").mkdir()
    (tmp_path / "history.jsonl").write_text('{"step": 1.0}\n')  # killed at step 2, before any checkpoint
    with caplog.at_level(logging.WARNING):
        run = open_run_dir(cfg, world_size=1)
    run.release()
    assert run.resume_from is None and "removed the previous run's logs, history.jsonl" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]
    (tmp_path / "model").mkdir()
    with pytest.raises(RunDirError, match="holds a finished model but no checkpoint"):
        open_run_dir(cfg, world_size=1)
    assert (tmp_path / "model").is_dir()


def test_changed_settings_on_resume_are_listed_and_allow_changed_applies_them(tiny_sd_path, instance_dir, tmp_path):
    train(config(tiny_sd_path, instance_dir, tmp_path, max_steps=2))
    changed = dict(resume="latest", lr_actor=1e-2, seed=5, batch_size=2, max_steps=3, log_every=2)
    with pytest.raises(ConfigMismatchError) as info:
        Trainer(config(tiny_sd_path, instance_dir, tmp_path, **changed))
    message = str(info.value)
    for difference in ("lr_actor: 0.001 -> 0.01", "seed: 0 -> 5", "batch_size: 1 -> 2"):
        assert difference in message
    assert "max_steps" not in message and "log_every" not in message  # harmless by default
    assert "--allow-changed lr_actor batch_size seed" in message
    trainer = Trainer(config(tiny_sd_path, instance_dir, tmp_path, allow_changed=("lr_actor", "seed", "batch_size"),
                             **changed))
    assert trainer.step == 2 and [g["lr"] for g in trainer.optimizer.param_groups] == [1e-2]  # not the checkpoint's
    result = trainer.train()
    assert result.step == 3
    assert json.loads((tmp_path / "model" / "training_config.json").read_text())["lr_actor"] == 1e-2


def test_config_comparison_covers_every_field(tiny_sd_path, instance_dir, tmp_path) -> None:
    cfg = config(tiny_sd_path, instance_dir, tmp_path)
    stored = json.loads(cfg.to_json())
    assert config_differences(stored, cfg) == {}
    names = [item.name for item in dataclasses.fields(TrainConfig)]
    assert TrainConfig.HARMLESS_CHANGES <= set(names)
    for name in names:  # a field added later is compared too: nothing is listed by hand
        assert name in config_differences({**stored, name: "another value"}, cfg), name
    missing = {key: value for key, value in stored.items() if key != "gamma"}  # written before `gamma` existed
    assert config_differences(missing, cfg) == {}  # counts at its default
    assert config_differences(missing, dataclasses.replace(cfg, gamma=0.5)) == {"gamma": (0.9986, 0.5)}
    assert config_differences({**stored, "retired_setting": 1}, cfg) == {}


def test_resume_refuses_a_model_folder_and_a_checkpoint_beyond_max_steps(tiny_sd_path, instance_dir, tmp_path):
    train(config(tiny_sd_path, instance_dir, tmp_path / "run", max_steps=2))
    model = str(tmp_path / "run" / "model")
    with pytest.raises(CheckpointError, match="is a trained model.*not a checkpoint.*--resume latest"):
        Trainer(config(tiny_sd_path, instance_dir, tmp_path / "run", resume=model))
    with pytest.raises(RunDirError, match="at step 2, beyond max_steps=1; resume with --max-steps 2"):
        Trainer(config(tiny_sd_path, instance_dir, tmp_path / "run", resume="latest", max_steps=1))
    resumed = train(config(tiny_sd_path, instance_dir, tmp_path / "run", resume="latest"))  # at max_steps: re-export
    assert resumed.step == 2 and [r["step"] for r in read_history(tmp_path / "run")] == [1, 2]


def test_output_dir_that_is_a_file_fails_before_the_model_loads(tiny_sd_path, instance_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "load_sd_components", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(RunDirError, match="'.*out' is a file, not a folder"):
        Trainer(config(tiny_sd_path, instance_dir, tmp_path / "out"))


# ------------------------------------------------------------------ interrupted and failed writes
def test_leftovers_of_killed_writes_are_cleaned_when_the_run_resumes(tiny_sd_path, instance_dir, tmp_path, caplog):
    train(config(tiny_sd_path, instance_dir, tmp_path, max_steps=2, checkpoint_every=1))
    ckpts = tmp_path / "checkpoints"
    os.replace(ckpts / "ckpt-000002", ckpts / "ckpt-000002.old")  # a re-save killed between its renames
    (ckpts / "ckpt-000002.tmp").mkdir()
    (ckpts / "ckpt-000007.tmp").mkdir()  # a killed write
    (ckpts / ".latest.x1.tmp").write_text("ckpt-000007")
    (tmp_path / ".model.y2.tmp").mkdir()  # a killed export
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(config(tiny_sd_path, instance_dir, tmp_path, max_steps=3, resume="latest"))
    assert "restored ckpt-000002 from ckpt-000002.old" in caplog.text and "removed ckpt-000007.tmp" in caplog.text
    assert trainer.step == 2
    assert sorted(p.name for p in ckpts.iterdir()) == ["ckpt-000001", "ckpt-000002", "latest"]
    assert not list(tmp_path.glob(".model.*"))
    trainer.run_dir.release()


def test_full_disk_stops_training_with_a_message_and_the_run_resumes(tiny_sd_path, instance_dir, tmp_path, monkeypatch):
    real_save = torch.save

    def full_from_step_2(state, path):
        real_save(state, path)
        if "ckpt-000002" in str(path):
            Path(path).write_bytes(b"")
            raise OSError(errno.ENOSPC, "No space left on device")

    cfg = config(tiny_sd_path, instance_dir, tmp_path, max_steps=3, checkpoint_every=1)
    monkeypatch.setattr(torch, "save", full_from_step_2)
    with pytest.raises(DiskFullError, match=r"disk holding .* is full: writing checkpoint 'ckpt-000002'.*needs about"):
        train(cfg)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ckpt-000001", "latest"]
    monkeypatch.undo()
    resumed = train(dataclasses.replace(cfg, resume="latest"))  # the lock was released; nothing blocks the resume
    assert resumed.step == 3


def test_full_disk_during_the_export_leaves_no_partial_model(tiny_sd_path, instance_dir, tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    def full(self, folder, **kwargs):
        (Path(folder) / "model_index.json").write_text("{")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(StableDiffusionPipeline, "save_pretrained", full)
    with pytest.raises(DiskFullError, match=r"writing the model .*model'.*needs about .*--resume latest"):
        train(config(tiny_sd_path, instance_dir, tmp_path, max_steps=1))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".model", "model"))) == []
    assert resolve_checkpoint(tmp_path / "checkpoints", "latest").name == "ckpt-000001"


# ------------------------------------------------------------------ settings and messages
@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid with a GPU")
def test_fp16_without_a_gpu_is_refused(tiny_sd_path, instance_dir, tmp_path) -> None:
    with pytest.raises(ConfigError, match="mixed_precision='fp16' needs a CUDA GPU"):
        Trainer(config(tiny_sd_path, instance_dir, tmp_path, mixed_precision="fp16"))
    assert not (tmp_path / "logs").exists()


def test_instance_image_smaller_than_the_resolution_warns(tiny_sd_path, tmp_path) -> None:
    from diffrl.training import ReferenceImages

    Image.new("RGB", (4, 6)).save(tmp_path / "tiny.png")
    with pytest.warns(UserWarning, match=r"'.*tiny.png' is 4x6 pixels, smaller than the training resolution 16"):
        ReferenceImages.from_folder(tmp_path, 16)


def personalize_argv(tiny_sd_path: Path, instance_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["personalize", "--pretrained", str(tiny_sd_path), "--instance-dir", str(instance_dir), "--instance-prompt",
            "a photo of sks dog", "--output-dir", str(out), "--method", "dreambooth", "--max-steps", "1", *extra]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rewards", "lookforward=nan"], r"rewards\['lookforward'\] \(a reward weight\) must be a finite number >= 0"),
        (["--rewards", "lookforward=-1"], r"rewards\['lookforward'\].*>= 0, got -1.0"),
        (["--lr-actor", "inf"], "lr_actor must be a finite number, got inf"),
        (["--allow-changed", "learning-rate"], r"allow_changed names unknown setting\(s\) \['learning_rate'\]"),
        (["--resume", "latest", "--overwrite"], "exclude each other"),
        (["--resume", "latest"], "No checkpoint to resume from"),
    ],
)
def test_personalize_reports_user_errors_in_one_line(tiny_sd_path, instance_dir, tmp_path, capsys, extra, message):
    assert main(personalize_argv(tiny_sd_path, instance_dir, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("diffrl personalize: error: ")
    assert "Traceback" not in err
    assert re.search(message, err), err


def test_verbose_adds_the_traceback(tiny_sd_path, instance_dir, tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("")
    assert main(personalize_argv(tiny_sd_path, instance_dir, tmp_path / "file", "-v")) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("diffrl personalize: error: --output-dir")


def test_personalize_loads_a_dino_with_its_kwargs(tiny_sd_path, instance_dir, tiny_dino, tmp_path, capsys) -> None:
    weights, kwargs = tiny_dino
    argv = personalize_argv(tiny_sd_path, instance_dir, tmp_path / "run", "--method", "dpg", "--rewards", "dino=1",
                            "--dino-weights", str(weights))
    assert main(argv) == 2  # without the kwargs the architecture does not fit the weights: said in one line
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]  # the rest: model-loading progress bars
    assert len(errors) == 1 and "do not fit timm model" in errors[0] and "--dino-kwargs" in errors[0]
    assert main([*argv, "--dino-kwargs", json.dumps(kwargs)]) == 0  # the failed attempt left nothing in the way
    assert json.loads((tmp_path / "run" / "model" / "training_config.json").read_text())["dino_kwargs"] == kwargs


def test_sample_reports_a_missing_model_in_one_line(tmp_path: Path, capsys) -> None:
    argv = ["sample", "--pretrained", str(tmp_path / "nope"), "--prompt", "a dog", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"diffrl sample: error: Pipeline folder '{tmp_path / 'nope'}' does not exist")
    assert len(err.strip().splitlines()) == 1


def test_which_errors_are_the_users() -> None:
    from diffrl.errors import is_user_error

    assert is_user_error(DiskFullError("full")) and is_user_error(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_user_error(ConfigError("lr")) and is_user_error(FileNotFoundError(2, "No such file", "x.png"))
    assert not is_user_error(OSError(errno.EIO, "I/O error")) and not is_user_error(KeyError("files"))
