"""Atomic checkpoints: round trip, pruning, corruption errors, and SIGKILL during a write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from diffrl.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    replace_dir_atomically,
    resolve_checkpoint,
    save_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]


def make(step: int, numel: int = 16) -> Checkpoint:
    return Checkpoint(
        step=step,
        tensors={"model": {"w": torch.full((numel,), float(step)), "b": torch.arange(3.0) + step}},
        states={"optim": {"state": {0: {"exp_avg": torch.ones(2) * step}}, "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99)}]}},
        meta={"note": "x"},
    )


def test_round_trip_latest_and_pruning(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, make(step), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-000002", "ckpt-000003"]
    latest = resolve_checkpoint(tmp_path, "latest")
    assert latest.name == "ckpt-000003"
    loaded = load_checkpoint(latest)
    assert loaded.step == 3 and loaded.meta["note"] == "x"
    assert torch.equal(loaded.tensors["model"]["b"], torch.arange(3.0) + 3)
    assert loaded.states["optim"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert torch.equal(loaded.states["optim"]["state"][0]["exp_avg"], torch.ones(2) * 3)
    save_checkpoint(tmp_path, make(3), keep=2)  # re-saving a step replaces it
    assert load_checkpoint(tmp_path / "ckpt-000003").step == 3


def test_corrupt_and_partial_checkpoints_give_clear_errors(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, make(1, numel=1000))
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt: 'model.safetensors'"):
        load_checkpoint(path)
    (path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete or corrupt.*manifest.json"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="No checkpoint to resume from"):
        resolve_checkpoint(tmp_path / "nothing", "latest")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "ckpt-000099")


def test_replace_dir_keeps_old_content_when_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "model"
    replace_dir_atomically(target, lambda d: (d / "weights.txt").write_text("v1"))

    def failing(folder: Path) -> None:
        (folder / "weights.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_dir_atomically(target, failing)
    assert (target / "weights.txt").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left behind
    replace_dir_atomically(target, lambda d: (d / "weights.txt").write_text("v2"))
    assert (target / "weights.txt").read_text() == "v2"


SLOW_WRITER = """
import sys, time
import torch
import diffrl.training.checkpoint as ckpt

root = sys.argv[1]
def checkpoint(step):
    return ckpt.Checkpoint(step=step, tensors={{"model": {{"w": torch.full((2_000_000,), float(step))}}}}, states={{"s": {{"step": step}}}})
{body}
"""

STALL = """
ckpt.save_checkpoint(root, checkpoint(1))
real_save = ckpt.save_file
def stalled(tensors, filename):  # write part of the file, then hang: the parent kills us here
    real_save(tensors, filename)
    data = open(filename, "rb").read()
    open(filename, "wb").write(data[: len(data) // 3])
    print("WRITING", flush=True)
    time.sleep(120)
ckpt.save_file = stalled
ckpt.save_checkpoint(root, checkpoint(2))
"""

LOOP = """
step = 1
while True:
    ckpt.save_checkpoint(root, checkpoint(step), keep=2)
    print("SAVED", step, flush=True)
    step += 1
"""


def _spawn(body: str, root: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    script = textwrap.dedent(SLOW_WRITER.format(body=body))
    return subprocess.Popen([sys.executable, "-c", script, str(root)], stdout=subprocess.PIPE, text=True, env=env)


def _assert_latest_valid(root: Path) -> int:
    loaded = load_checkpoint(resolve_checkpoint(root, "latest"))
    assert torch.equal(loaded.tensors["model"]["w"], torch.full((2_000_000,), float(loaded.step)))
    assert loaded.states["s"] == {"step": loaded.step}
    return loaded.step


def test_sigkill_during_write_leaves_previous_checkpoint_loadable(tmp_path: Path) -> None:
    proc = _spawn(STALL, tmp_path)
    try:
        assert proc.stdout.readline().strip() == "WRITING"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert _assert_latest_valid(tmp_path) == 1
    partial = tmp_path / "ckpt-000002.tmp"
    assert partial.is_dir() and not (tmp_path / "ckpt-000002").exists()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(partial)
    save_checkpoint(tmp_path, make(3))  # the next save cleans the stale partial write
    assert not partial.exists()


@pytest.mark.parametrize("delay", [0.05, 0.2])
def test_sigkill_at_random_times_during_repeated_saves(tmp_path: Path, delay: float) -> None:
    proc = _spawn(LOOP, tmp_path)
    try:
        assert proc.stdout.readline().startswith("SAVED")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert _assert_latest_valid(tmp_path) >= 1
    for path in list_checkpoints(tmp_path):
        load_checkpoint(path)
    json.loads((resolve_checkpoint(tmp_path, "latest") / "manifest.json").read_text())
