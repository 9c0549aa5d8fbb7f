"""Atomic, verifiable checkpoint directories.

Layout of ``ROOT/ckpt-000120/``: ``<group>.safetensors`` (tensors), ``<name>.pt`` (state dicts, read back with
``torch.load(weights_only=True)``), ``meta.json`` and ``manifest.json`` (size and SHA-256 of every file, written
last). A checkpoint is written to ``ckpt-000120.tmp/``, fsynced, and renamed; only then is ``ROOT/latest`` (a text
file naming the directory) replaced atomically. A killed write leaves a ``.tmp`` directory that is never loaded and is
removed by the next save; the previous checkpoint stays valid throughout.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from diffrl.io import atomic_write_text, fsync_path

MANIFEST = "manifest.json"
LATEST = "latest"
PATTERN = re.compile(r"^ckpt-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt; the message names it and says what is wrong."""


@dataclass
class Checkpoint:
    """The contents of one checkpoint."""

    step: int
    tensors: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # group -> name -> tensor
    states: dict[str, Any] = field(default_factory=dict)  # name -> state dict (tensors, numbers, lists, dicts)
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _write(path: Path, writer: Callable[[Path], None]) -> dict[str, Any]:
    writer(path)
    fsync_path(path)
    return {"size": path.stat().st_size, "sha256": _sha256(path)}


def save_checkpoint(root: str | os.PathLike, checkpoint: Checkpoint, keep: int = 2) -> Path:
    """Write `checkpoint` as ``root/ckpt-<step>`` atomically, point ``root/latest`` at it and keep the last `keep`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("ckpt-*.tmp"):  # left by a killed write
        shutil.rmtree(stale, ignore_errors=True)
    name = f"ckpt-{checkpoint.step:06d}"
    tmp, final = root / f"{name}.tmp", root / name
    tmp.mkdir()
    files: dict[str, Any] = {}
    for group, tensors in checkpoint.tensors.items():
        data = {key: value.detach().contiguous().cpu() for key, value in tensors.items()}
        files[f"{group}.safetensors"] = _write(tmp / f"{group}.safetensors", lambda p, d=data: save_file(d, str(p)))
    for key, state in checkpoint.states.items():
        files[f"{key}.pt"] = _write(tmp / f"{key}.pt", lambda p, s=state: torch.save(s, p))
    meta = {"step": checkpoint.step, **checkpoint.meta}
    files["meta.json"] = _write(tmp / "meta.json", lambda p: p.write_text(json.dumps(meta, indent=2)))
    _write(tmp / MANIFEST, lambda p: p.write_text(json.dumps({"step": checkpoint.step, "files": files}, indent=2)))
    fsync_path(tmp)
    if final.exists():  # re-saving a step: move the old one aside only once the new one is complete
        old = root / f"{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    fsync_path(root)
    atomic_write_text(root / LATEST, name + "\n")
    _prune(root, keep, final)
    return final


def _prune(root: Path, keep: int, current: Path) -> None:
    for path in list_checkpoints(root)[:-keep]:
        if path != current:  # rename first: an interrupted delete leaves a .tmp, never a broken checkpoint
            doomed = path.with_name(path.name + ".tmp")
            os.replace(path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Checkpoint directories under `root`, oldest first (``.tmp`` ones excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in root.iterdir() if (match := PATTERN.match(path.name)) and path.is_dir()]
    return [path for _, path in sorted(found)]


def resolve_checkpoint(root: str | os.PathLike, spec: str) -> Path:
    """``"latest"`` -> the directory ``root/latest`` names; anything else is a checkpoint directory path."""
    if spec != LATEST:
        return Path(spec)
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        raise CheckpointError(f"No checkpoint to resume from: '{pointer}' does not exist (no checkpoint was completed).")
    return Path(root) / pointer.read_text().strip()


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Check that every file of the manifest exists with the recorded size and hash; return the manifest."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"Checkpoint '{path}' does not exist or is not a directory.")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"Checkpoint '{path}' is incomplete or corrupt: its {MANIFEST} is missing or unreadable ({err}). "
            "It was probably interrupted while being written; resume from an earlier checkpoint."
        ) from err
    for name, info in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"Checkpoint '{path}' is incomplete: file '{name}' is missing.")
        if file.stat().st_size != info["size"] or _sha256(file) != info["sha256"]:
            raise CheckpointError(f"Checkpoint '{path}' is corrupt: '{name}' does not match its recorded size/SHA-256.")
    return manifest


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Verify and read a checkpoint directory (see `verify_checkpoint`)."""
    path = Path(path)
    manifest = verify_checkpoint(path)
    checkpoint = Checkpoint(step=int(manifest["step"]))
    try:
        for name in manifest["files"]:
            file = path / name
            if name.endswith(".safetensors"):
                checkpoint.tensors[name.removesuffix(".safetensors")] = load_file(str(file))
            elif name.endswith(".pt"):
                checkpoint.states[name.removesuffix(".pt")] = torch.load(file, map_location="cpu", weights_only=True)
            elif name == "meta.json":
                checkpoint.meta = json.loads(file.read_text())
    except (SafetensorError, RuntimeError, OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"Checkpoint '{path}': '{file.name}' could not be read ({type(err).__name__}: {err}).") from err
    return checkpoint


def replace_dir_atomically(target: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Fill a fresh temporary directory beside `target` with ``write(tmp)``, fsync it, then swap it in.

    An existing `target` is untouched until the new content is complete on disk; it is then moved aside and
    removed. If ``write`` fails or the process dies, `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        write(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                fsync_path(file)
        fsync_path(tmp)
        old = target.parent / f".{target.name}.old"
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        fsync_path(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
