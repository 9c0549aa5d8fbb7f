"""Atomic checkpoints: round trip, pruning, corruption errors, and SIGKILL during a write."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import diffrl.io
from diffrl.io import DiskFullError
from diffrl.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    clean_interrupted_replace,
    clean_interrupted_writes,
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
    save_checkpoint(tmp_path, make(3))  # a save leaves other temporaries alone: they may be a live writer's
    assert partial.is_dir()
    assert clean_interrupted_writes(tmp_path) == ["removed ckpt-000002.tmp"]  # what the run holding the folder does
    assert not partial.exists() and resolve_checkpoint(tmp_path, "latest").name == "ckpt-000003"


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


RESAVE_KILLED_BETWEEN_RENAMES = """
import os, signal
from pathlib import Path
ckpt.save_checkpoint(root, checkpoint(1))
ckpt.save_checkpoint(root, checkpoint(2))
real_replace = os.replace
def replace(src, dst):  # the second rename of a re-save: the old ckpt-000002 is already ckpt-000002.old
    if str(src).endswith("ckpt-000002.tmp") and Path(root, "ckpt-000002.old").exists():
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
ckpt.os.replace = replace
ckpt.save_checkpoint(root, checkpoint(2))
"""


def test_sigkill_between_the_renames_of_a_resave_keeps_the_checkpoint(tmp_path: Path) -> None:
    proc = _spawn(RESAVE_KILLED_BETWEEN_RENAMES, tmp_path)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (tmp_path / "ckpt-000002").exists() and (tmp_path / "ckpt-000002.old").is_dir()  # latest dangles
    assert clean_interrupted_writes(tmp_path) == [
        "restored ckpt-000002 from ckpt-000002.old (a replacement was interrupted)", "removed ckpt-000002.tmp"]
    assert _assert_latest_valid(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000001", "ckpt-000002", "latest"]


def _fail_writes_after(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """torch.save writes half of its file, then fails with `error` (what a full disk does)."""
    real_save = torch.save

    def full(state, path):
        real_save(state, path)
        Path(path).write_bytes(Path(path).read_bytes()[:10])
        raise error

    monkeypatch.setattr(torch, "save", full)


def _assert_only_checkpoint_1(root: Path) -> None:
    assert sorted(p.name for p in root.iterdir()) == ["ckpt-000001", "latest"]  # no ckpt-000002.tmp, no .latest.*.tmp
    loaded = load_checkpoint(resolve_checkpoint(root, "latest"))
    assert loaded.step == 1 and torch.equal(loaded.tensors["model"]["w"], torch.full((16,), 1.0))


def test_disk_full_during_a_save_cleans_up_and_says_how_much_was_needed(tmp_path: Path, monkeypatch) -> None:
    save_checkpoint(tmp_path, make(1))
    _fail_writes_after(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(DiskFullError, match=r"disk holding .* is full: writing checkpoint 'ckpt-000002'.*needs about "
                                            r"1\.0 MiB.*intact.*--resume latest") as info:
        save_checkpoint(tmp_path, make(2))
    assert info.value.errno == errno.ENOSPC
    _assert_only_checkpoint_1(tmp_path)


def test_disk_full_reported_by_torch_as_a_runtime_error(tmp_path: Path, monkeypatch) -> None:
    save_checkpoint(tmp_path, make(1))
    _fail_writes_after(monkeypatch, RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64"))
    usage = shutil.disk_usage(tmp_path)
    calls = iter([usage, usage._replace(free=1000)])  # enough space before the write; the disk is full after it
    monkeypatch.setattr(diffrl.io.shutil, "disk_usage", lambda path: next(calls))
    with pytest.raises(DiskFullError, match=r"is full.*RuntimeError.*unexpected pos.*1000 B are free"):
        save_checkpoint(tmp_path, make(2))
    _assert_only_checkpoint_1(tmp_path)


def test_not_enough_space_is_refused_before_writing(tmp_path: Path, monkeypatch) -> None:
    save_checkpoint(tmp_path, make(1))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(diffrl.io.shutil, "disk_usage", lambda path: usage._replace(free=4096))
    with pytest.raises(DiskFullError, match=r"Not enough disk space.*'ckpt-000002': it needs about 1\.0 MiB, 4\.0 KiB"):
        save_checkpoint(tmp_path, make(2))
    _assert_only_checkpoint_1(tmp_path)


def test_any_error_during_a_save_removes_the_partial_write(tmp_path: Path, monkeypatch) -> None:
    save_checkpoint(tmp_path, make(1))
    _fail_writes_after(monkeypatch, ValueError("a bug in a state dict"))
    with pytest.raises(ValueError, match="a bug"):
        save_checkpoint(tmp_path, make(2))
    _assert_only_checkpoint_1(tmp_path)


def test_a_bad_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path: Path, caplog) -> None:
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, make(step), keep=3)
    weights = tmp_path / "ckpt-000003" / "model.safetensors"
    weights.write_bytes(b"x" * weights.stat().st_size)  # same size, other content: only the hash tells
    with caplog.at_level(logging.WARNING):
        assert resolve_checkpoint(tmp_path, "latest").name == "ckpt-000002"
    assert "names 'ckpt-000003', which cannot be used" in caplog.text and "corrupt: 'model.safetensors'" in caplog.text
    assert "newest complete checkpoint, '" in caplog.text
    shutil.rmtree(tmp_path / "ckpt-000003")  # dangling
    assert resolve_checkpoint(tmp_path, "latest").name == "ckpt-000002"
    (tmp_path / "latest").write_bytes(b"\x00\xff garbage")
    assert resolve_checkpoint(tmp_path, "latest").name == "ckpt-000002"
    (tmp_path / "latest").unlink()  # killed after the rename, before latest was written
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert resolve_checkpoint(tmp_path, "latest").name == "ckpt-000002"
    assert "latest' does not exist" in caplog.text
    for path in list_checkpoints(tmp_path):
        (path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="No complete checkpoint to resume from.*No other checkpoint verifies"):
        resolve_checkpoint(tmp_path, "latest")


def test_what_is_not_a_checkpoint_is_named(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "run" / "checkpoints", make(1))
    (path / "manifest.json").write_text("{}")
    with pytest.raises(CheckpointError, match="manifest.json is not a diffrl checkpoint manifest"):
        load_checkpoint(path)
    model = tmp_path / "run" / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    with pytest.raises(CheckpointError, match="is a trained model.*not a checkpoint.*--resume latest"):
        load_checkpoint(model)
    with pytest.raises(CheckpointError, match=f"is a run folder.*--output-dir {tmp_path / 'run'} --resume latest"):
        load_checkpoint(tmp_path / "run")
    with pytest.raises(CheckpointError, match=f"is a checkpoints folder.*--output-dir {tmp_path / 'run'} --resume"):
        load_checkpoint(tmp_path / "run" / "checkpoints")


def test_interrupted_replace_is_undone(tmp_path: Path) -> None:
    target = tmp_path / "model"
    replace_dir_atomically(target, lambda d: (d / "weights.txt").write_text("v1"))
    os.replace(target, tmp_path / ".model.old")  # killed between the two renames of a replacement
    (tmp_path / ".model.k3j.tmp").mkdir()
    (tmp_path / ".model.k3j.tmp" / "weights.txt").write_text("v2")
    assert clean_interrupted_replace(target) == [
        "restored model from .model.old (a replacement was interrupted)", "removed .model.k3j.tmp"]
    assert (target / "weights.txt").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_new_folders_and_files_respect_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        model = replace_dir_atomically(tmp_path / "model", lambda d: (d / "weights.txt").write_text("v1"))
        save_checkpoint(tmp_path / "checkpoints", make(1))
    finally:
        os.umask(previous)
    assert model.stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "checkpoints" / "latest").stat().st_mode & 0o777 == 0o640
