"""Atomic, verifiable checkpoint directories.

Layout of ``ROOT/ckpt-000120/``: ``<group>.safetensors`` (tensors), ``<name>.pt`` (state dicts, read back with
``torch.load(weights_only=True)``), ``meta.json`` and ``manifest.json`` (size and SHA-256 of every file, written
last). A checkpoint is written to ``ckpt-000120.tmp/``, fsynced, and renamed; only then is ``ROOT/latest`` (a text
file naming the directory) replaced atomically. A failed write removes its ``.tmp`` directory (a full disk raises
`DiskFullError`); a killed one leaves it, never loaded, for `clean_interrupted_writes` (run by the process that holds
the run folder, see `diffrl.training.rundir`). The previous checkpoint stays valid throughout, and ``latest`` falls back
to the newest complete checkpoint when the one it names is gone or corrupt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from diffrl.io import (
    atomic_write_leftovers,
    atomic_write_text,
    default_mode,
    disk_space_for,
    fsync_path,
    remove_path,
)

MANIFEST = "manifest.json"
LATEST = "latest"
PATTERN = re.compile(r"^ckpt-(\d+)$")
METADATA_BYTES = 1 << 20  # room for meta.json, manifest.json and the pickled non-tensor state, on top of the tensors

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt; the message names it and says what is wrong."""


@dataclass
class Checkpoint:
    """The contents of one checkpoint."""

    step: int
    tensors: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # group -> name -> tensor
    states: dict[str, Any] = field(default_factory=dict)  # name -> state dict (tensors, numbers, lists, dicts)
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable


def loss_module_state(loss: torch.nn.Module, saved_elsewhere: Iterable[Tensor]) -> dict[str, Tensor]:
    """The tensors of a loss module that a checkpoint must hold besides its trained models: everything in its
    ``state_dict`` except ``saved_elsewhere`` (e.g. the U-Net's trained parameters) and frozen parameters (a frozen
    reference copy is reloaded from the pretrained folder); e.g. DPG's critic, its targets and their statistics."""
    skip = {tensor.data_ptr() for tensor in saved_elsewhere}
    return {key: value for key, value in loss.state_dict(keep_vars=True).items()
            if value.data_ptr() not in skip and (not isinstance(value, torch.nn.Parameter) or value.requires_grad)}


def load_loss_module_state(loss: torch.nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """Restore `loss_module_state` from the checkpoint at ``path``; an entry the loss lacks is an error."""
    result = loss.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"Checkpoint '{path}' has loss-module entries this run lacks: {result.unexpected_keys[:5]}; "
                         "was the method changed?")


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
    """Write `checkpoint` as ``root/ckpt-<step>`` atomically, point ``root/latest`` at it and keep the last `keep`.

    On any error the partial ``.tmp`` directory is removed and the earlier checkpoints and ``latest`` are as they
    were; a full disk raises `diffrl.io.DiskFullError` (before writing anything when the free space is short).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{checkpoint.step:06d}"
    tmp, final = root / f"{name}.tmp", root / name
    hint = (f"The checkpoints already in '{root}' are intact; free space (or keep fewer checkpoints), then resume "
            "(CLI: --resume latest).")
    with disk_space_for(root, _nbytes(checkpoint) + METADATA_BYTES, f"checkpoint '{name}'", hint):
        remove_path(tmp)  # left by a killed write of this very step
        try:
            _write_files(tmp, checkpoint)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():  # re-saving a step: the old one moves aside only once the new one is complete; a kill
            old = root / f"{name}.old"  # between the two renames leaves it for clean_interrupted_writes to put back
            remove_path(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        fsync_path(root)
        atomic_write_text(root / LATEST, name + "\n")
    _prune(root, keep, final)
    return final


def _write_files(folder: Path, checkpoint: Checkpoint) -> None:
    """The checkpoint's files, each fsynced, then the manifest (size and SHA-256 of every other file) last."""
    folder.mkdir()
    files: dict[str, Any] = {}
    for group, tensors in checkpoint.tensors.items():
        data = {key: value.detach().contiguous().cpu() for key, value in tensors.items()}
        files[f"{group}.safetensors"] = _write(folder / f"{group}.safetensors", lambda p, d=data: save_file(d, str(p)))
    for key, state in checkpoint.states.items():
        files[f"{key}.pt"] = _write(folder / f"{key}.pt", lambda p, s=state: torch.save(s, p))
    meta = {"step": checkpoint.step, **checkpoint.meta}
    files["meta.json"] = _write(folder / "meta.json", lambda p: p.write_text(json.dumps(meta, indent=2)))
    manifest = {"step": checkpoint.step, "files": files}
    _write(folder / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=2)))
    fsync_path(folder)


def _nbytes(value: Any) -> int:
    """Bytes of the tensors in a (nested) state: what a checkpoint of it needs on disk, less the metadata."""
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Checkpoint):
        return _nbytes(value.tensors) + _nbytes(value.states)
    if isinstance(value, dict):
        return sum(_nbytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(item) for item in value)
    return 0


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


def clean_interrupted_writes(root: str | os.PathLike) -> list[str]:
    """Repair what killed `save_checkpoint` calls left in `root`; returns what was done, one phrase per item.

    Only the process that holds the run folder may call this: another live writer's ``.tmp`` would be deleted.
    ``ckpt-N.old`` is the complete previous version of a re-saved step: put back when the new one was not renamed in
    yet (``latest`` may name it), removed otherwise. Partial writes (``ckpt-N.tmp``, also left by an interrupted
    prune) and ``latest``'s temporary files are removed.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    done = [_settle(old, old.with_suffix("")) for old in sorted(root.glob("ckpt-*.old"))]
    for leftover in [*sorted(root.glob("ckpt-*.tmp")), *atomic_write_leftovers(root / LATEST)]:
        remove_path(leftover)
        done.append(f"removed {leftover.name}")
    return done


def clean_interrupted_replace(target: str | os.PathLike) -> list[str]:
    """What `clean_interrupted_writes` does for the checkpoints, for a folder written by `replace_dir_atomically`."""
    target = Path(target)
    old = target.parent / f".{target.name}.old"
    done = [_settle(old, target)] if old.exists() else []
    for leftover in sorted(target.parent.glob(f".{target.name}.*.tmp")):
        remove_path(leftover)
        done.append(f"removed {leftover.name}")
    return done


def _settle(old: Path, final: Path) -> str:
    """`old` is the complete previous version of `final`, moved aside by a swap: keep whichever is there."""
    if final.exists():
        remove_path(old)
        return f"removed {old.name}"
    os.replace(old, final)
    return f"restored {final.name} from {old.name} (a replacement was interrupted)"


def resolve_checkpoint(root: str | os.PathLike, spec: str) -> Path:
    """``"latest"`` -> the checkpoint ``root/latest`` names; anything else is a checkpoint directory path.

    When ``latest`` is missing, names a folder that is gone, or names one that fails `verify_checkpoint`, the newest
    checkpoint that verifies is returned instead, with a warning that says so.
    """
    if spec != LATEST:
        return Path(spec)
    root = Path(root)
    pointer = root / LATEST
    named: Path | None = None
    try:
        text = pointer.read_text().strip()
    except FileNotFoundError:
        problem = f"'{pointer}' does not exist."
    except (OSError, UnicodeDecodeError) as err:
        problem = f"'{pointer}' could not be read ({err})."
    else:
        if not PATTERN.match(text):
            problem = f"'{pointer}' does not name a checkpoint (it holds {text[:40]!r})."
        else:
            named = root / text
            try:
                verify_checkpoint(named)
                return named
            except CheckpointError as err:
                problem = f"'{pointer}' names '{text}', which cannot be used: {err}"
    for candidate in reversed(list_checkpoints(root)):
        if candidate == named:
            continue
        try:
            verify_checkpoint(candidate)
        except CheckpointError as err:
            logger.warning("Skipping checkpoint '%s': %s", candidate, err)
            continue
        logger.warning("%s Using the newest complete checkpoint, '%s', instead.", problem, candidate)
        return candidate
    if not pointer.exists() and not list_checkpoints(root):
        raise CheckpointError(
            f"No checkpoint to resume from: '{pointer}' does not exist (no checkpoint was completed)."
        )
    raise CheckpointError(f"No complete checkpoint to resume from in '{root}': {problem} No other checkpoint verifies.")


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Check that every file of the manifest exists with the recorded size and hash; return the manifest."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"Checkpoint '{path}' does not exist or is not a directory.")
    if not (path / MANIFEST).exists() and (other := _not_a_checkpoint(path)):
        raise CheckpointError(other)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"Checkpoint '{path}' is incomplete or corrupt: its {MANIFEST} is missing or unreadable ({err}). "
            "It was probably interrupted while being written; resume from an earlier checkpoint."
        ) from err
    if not _is_manifest(manifest):
        raise CheckpointError(
            f"Checkpoint '{path}' is corrupt: its {MANIFEST} is not a diffrl checkpoint manifest (an object with "
            "'step' and 'files', each file with 'size' and 'sha256'); resume from an earlier checkpoint."
        )
    for name, info in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"Checkpoint '{path}' is incomplete: file '{name}' is missing.")
        if file.stat().st_size != info["size"] or _sha256(file) != info["sha256"]:
            raise CheckpointError(f"Checkpoint '{path}' is corrupt: '{name}' does not match its recorded size/SHA-256.")
    return manifest


def _is_manifest(manifest: Any) -> bool:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("step"), int):
        return False
    files = manifest.get("files")
    entries = files.values() if isinstance(files, dict) else [None]
    return all(isinstance(entry, dict) and {"size", "sha256"} <= entry.keys() for entry in entries)


def _not_a_checkpoint(path: Path) -> str | None:
    """What a folder passed as a checkpoint is instead, and what to pass; None if it is nothing recognisable."""
    if (path / "model_index.json").is_file() or (path / "pytorch_lora_weights.safetensors").is_file():
        return (f"'{path}' is a trained model (what a finished run exports), not a checkpoint. To continue training, "
                "resume from a checkpoint: --resume latest with the run's --output-dir, or --resume "
                "OUTPUT_DIR/checkpoints/ckpt-NNNNNN.")
    if (path / "checkpoints").is_dir():
        return f"'{path}' is a run folder, not a checkpoint: pass --output-dir {path} --resume latest."
    if (path / LATEST).is_file() or list_checkpoints(path):
        return (f"'{path}' is a checkpoints folder, not a checkpoint: pass --output-dir {path.parent} --resume latest "
                "(or one of its ckpt-NNNNNN folders).")
    return None


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
    removed. If ``write`` fails, `target` is left as it was and the temporary directory removed; if the process dies,
    `clean_interrupted_replace` later removes what it left and puts back a `target` that was moved aside.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, default_mode(directory=True))
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
