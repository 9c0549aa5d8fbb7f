"""Taking a run folder: one writer, no silent overwrite, and a resume that checks what it resumes.

`claim_run_dir`, called by a trainer before it loads any model, on the main process (``config``: a `TrainConfig` or
a `PolicyGradientConfig`, any dataclass with the run-control fields ``output_dir``, ``resume``, ``overwrite``,
``allow_changed``, the properties ``checkpoint_dir`` and ``model_dir``, and the class attributes ``STEPS_FIELD`` and
``HARMLESS_CHANGES``):

1. refuses an ``output_dir`` that is a file, then takes the folder's lock (`diffrl.training.lock.RunLock`);
2. repairs what killed writers left (partial checkpoints and exports, temporary files): only now, under the lock, can
   they not belong to a live run;
3. decides where the run starts. Without ``resume``, a folder that already holds a run (`RUN_ENTRIES`) is refused
   unless ``overwrite``, which deletes that run first. ``resume="auto"`` resumes when there is a checkpoint and starts
   fresh otherwise; ``"latest"`` or a checkpoint path resume from that checkpoint, whose recorded configuration must
   match this run's in every field that changes the result (all fields but the config's ``HARMLESS_CHANGES`` and
   those named in ``allow_changed``);
4. trims the run's history log (`diffrl.training.history`) to the step it starts from.

Other processes receive the main process's decision, or its error.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from diffrl.io import atomic_write_leftovers, remove_path
from diffrl.training.checkpoint import (
    clean_interrupted_replace,
    clean_interrupted_writes,
    list_checkpoints,
    resolve_checkpoint,
    verify_checkpoint,
)
from diffrl.training.history import HISTORY_FILE, HistoryLog
from diffrl.training.lock import RunDirError, RunLock

if TYPE_CHECKING:
    from accelerate import Accelerator

RunConfig = Any
"""A run's config dataclass (`TrainConfig`, `PolicyGradientConfig`): see the module docstring for what it has."""

RUN_ENTRIES = ("checkpoints", "model", "logs", HISTORY_FILE)  # what a started or finished run leaves in its folder

logger = logging.getLogger(__name__)
Method = TypeVar("Method", bound=Callable[..., Any])


class ConfigMismatchError(RunDirError):
    """A resume would change settings that change the result; the message lists each difference."""


@dataclass
class RunDir:
    """A run folder taken by this run: where it resumes from and (main process only) its step, lock and history."""

    folder: Path
    resume_from: Path | None
    start_step: int = 0
    lock: RunLock | None = None
    history: HistoryLog | None = None

    def record(self, logs: dict[str, float]) -> None:
        """Append one step's logs to the history log (main process)."""
        if self.history is not None:
            self.history.append(logs)

    def release(self) -> None:
        """Let other runs use the folder (idempotent)."""
        if self.lock is not None:
            self.lock.release()


def claim_run_dir(config: RunConfig, accelerator: Accelerator) -> RunDir:
    """`open_run_dir` on the main process; every other process gets its decision or raises its error."""
    world = accelerator.num_processes
    if world == 1:
        return open_run_dir(config, world)
    from accelerate.utils import broadcast_object_list

    run, decision = None, [None]
    if accelerator.is_main_process:
        try:
            run = open_run_dir(config, world)
            decision = [run.resume_from]
        except Exception as err:  # sent to the other processes, then raised everywhere
            decision = [err]
    broadcast_object_list(decision)
    if isinstance(decision[0], Exception):
        raise decision[0]
    return run or RunDir(Path(config.output_dir), decision[0])


def open_run_dir(config: RunConfig, world_size: int) -> RunDir:
    """Take ``config.output_dir`` for a run of `world_size` processes (steps 1-4 of the module docstring)."""
    folder = Path(config.output_dir)
    if folder.exists() and not folder.is_dir():
        raise RunDirError(f"--output-dir '{folder}' is a file, not a folder; choose a folder for the run's outputs.")
    folder.mkdir(parents=True, exist_ok=True)
    lock = RunLock(folder)
    try:
        repaired = _clean_interrupted(config)
        if repaired:
            logger.warning("Cleaned up after an interrupted run in '%s': %s.", folder, "; ".join(repaired))
        resume_from = _starting_point(config, world_size)
        start = int(_meta(resume_from)["step"]) if resume_from else 0
        return RunDir(folder, resume_from, start, lock, HistoryLog(folder, start))
    except BaseException:
        lock.release()
        raise


def _clean_interrupted(config: RunConfig) -> list[str]:
    done = clean_interrupted_writes(config.checkpoint_dir) + clean_interrupted_replace(config.model_dir)
    for leftover in atomic_write_leftovers(Path(config.output_dir) / HISTORY_FILE):
        remove_path(leftover)
        done.append(f"removed {leftover.name}")
    return done


def _starting_point(config: RunConfig, world_size: int) -> Path | None:
    """The checkpoint to resume from (checked against `config`), or None to start at step 0 in an emptied folder."""
    folder = Path(config.output_dir)
    started = [name for name in RUN_ENTRIES if (folder / name).exists()]
    has_checkpoint = bool(list_checkpoints(config.checkpoint_dir)) or (config.checkpoint_dir / "latest").exists()
    spec = config.resume
    if spec == "auto":  # an attempt killed before its first checkpoint has nothing to continue: start it over
        if not has_checkpoint and "model" in started:
            raise RunDirError(f"Output folder '{folder}' holds a finished model but no checkpoint to resume from; "
                              "replace the run with --overwrite, or choose another --output-dir.")
        spec = "latest" if has_checkpoint else None
    if spec is None:
        if started and not (config.overwrite or config.resume == "auto"):
            raise RunDirError(
                f"Output folder '{folder}' already holds a run ({', '.join(started)}). Continue it with --resume "
                "latest, replace it with --overwrite, or choose another --output-dir."
            )
        for name in started:
            remove_path(folder / name)
        if started:
            why = "--overwrite" if config.overwrite else "--resume auto, and no checkpoint was completed"
            logger.warning("Starting over in '%s' (%s): removed the previous run's %s.", folder, why,
                           ", ".join(started))
        return None
    path = resolve_checkpoint(config.checkpoint_dir, spec)  # "latest" comes back verified
    if spec != "latest":
        verify_checkpoint(path)
    check_resumable(path, _meta(path), config, world_size)
    return path


def _meta(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "meta.json").read_text())


def check_resumable(path: Path, meta: Mapping[str, Any], config: RunConfig, world_size: int) -> None:
    """Raise unless a run of `config` on `world_size` processes may continue the checkpoint `path` (`meta`)."""
    if meta.get("world_size") != world_size:
        raise RunDirError(f"Checkpoint '{path}' was written by {meta.get('world_size')} processes; resume it with "
                          f"the same number (this run has {world_size}).")
    steps = config.STEPS_FIELD
    if meta["step"] > getattr(config, steps):
        raise RunDirError(f"Checkpoint '{path}' is at step {meta['step']}, beyond {steps}={getattr(config, steps)}; "
                          f"resume with --{steps.replace('_', '-')} {meta['step']} or more.")
    stored = meta.get("config", "{}")
    differences = config_differences(json.loads(stored) if isinstance(stored, str) else stored, config)
    allowed = config.HARMLESS_CHANGES | set(config.allow_changed)
    refused = {name: change for name, change in differences.items() if name not in allowed}
    if refused:
        listing = "; ".join(f"{name}: {old!r} -> {new!r}" for name, (old, new) in refused.items())
        raise ConfigMismatchError(
            f"Cannot resume from '{path}': this run's settings differ from the checkpoint's in ways that change the "
            f"result ({listing}). Rerun with the checkpoint's values, start a new run in another --output-dir, or "
            f"accept the change with --allow-changed {' '.join(refused)}."
        )
    for name, (old, new) in differences.items():
        if name not in config.HARMLESS_CHANGES:
            logger.warning("Resuming '%s' with %s changed from %r to %r (allowed).", path, name, old, new)


def config_differences(stored: Mapping[str, Any], config: Any) -> dict[str, tuple[Any, Any]]:
    """``{field: (stored, now)}`` for every field of the dataclass ``config`` (a `TrainConfig`, a
    `PolicyGradientConfig`) whose value differs from the ``stored`` record, compared as JSON.

    A field the stored record lacks (written before the field existed) counts at its default, which is how the
    version that wrote it behaved; a stored key that is no longer a field cannot change what this version does.
    """
    now = json.loads(json.dumps(dataclasses.asdict(config)))
    differences = {}
    for item in dataclasses.fields(config):
        old = stored[item.name] if item.name in stored else recorded_default(item)
        if old != now[item.name]:
            differences[item.name] = (old, now[item.name])
    return differences


def recorded_default(item: dataclasses.Field) -> Any:
    """The default of a dataclass field as a stored record would hold it (JSON round-tripped): what a record
    written before the field existed counts it as; ``"(not recorded)"`` for a field without a default."""
    if item.default is not dataclasses.MISSING:
        return json.loads(json.dumps(item.default))
    if item.default_factory is not dataclasses.MISSING:
        return json.loads(json.dumps(item.default_factory()))
    return "(not recorded)"


def releases_run_dir(always: bool) -> Callable[[Method], Method]:
    """Decorate a method of an object with a ``run_dir`` so that the folder is released when the method raises
    (and, with `always`, when it returns): an in-process caller can then start another run there at once."""

    def decorate(method: Method) -> Method:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                result = method(self, *args, **kwargs)
            except BaseException:
                if getattr(self, "run_dir", None) is not None:
                    self.run_dir.release()
                raise
            if always:
                self.run_dir.release()
            return result

        return wrapper  # type: ignore[return-value]

    return decorate


