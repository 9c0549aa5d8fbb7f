"""The Accelerate side of a run: the `Accelerator` (precision, accumulation, DDP settings) and its trackers."""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import (
    DistributedDataParallelKwargs,
    ProjectConfiguration,
    gather_object,
)
from torch import Tensor

from diffrl.io import atomic_write_text
from diffrl.training.config import TRACKERS, ConfigError


def make_accelerator(mixed_precision: str, output_dir: str | Path, report_to: str = "none",
                     gradient_accumulation_steps: int = 1) -> Accelerator:
    """The `Accelerator` of a run: its precision, gradient accumulation and trackers (``report_to``, a key of
    `TRACKERS`, logging into ``output_dir/logs``); on a machine without CUDA, ``cpu=True`` makes ``accelerate launch
    --multi_gpu`` run gloo on CPU.

    The trained modules are wrapped in DDP by `Accelerator.prepare` without broadcasting buffers: a loss module's
    buffers (target critic, frozen statistics) are identical in every process by construction, or are its own.
    Accelerate keeps one global state per process; when an earlier run in this process chose another precision, that
    state (not the distributed process group) is reset so that runs with different settings can follow each other.
    """
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("mixed_precision='fp16' needs a CUDA GPU and none is available; use 'bf16' or 'no' on a CPU.")
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") not in (None, mixed_precision):
        AcceleratorState._reset_state()
    return Accelerator(
        mixed_precision=mixed_precision, cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=gradient_accumulation_steps,
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        log_with=list(TRACKERS[report_to]) or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(Path(output_dir) / "logs")),
    )


def start_trackers(accelerator: Accelerator, output_dir: str | Path, start_step: int, config: dict[str, Any]) -> None:
    """`Accelerator.init_trackers` (main process): TensorBoard in ``output_dir/logs/diffrl`` hides what an
    interrupted run logged after ``start_step`` (the checkpoint it resumes from); a resumed wandb run continues the
    run of the same id (kept in ``logs/``). ``config``: the run's settings (non-scalars are logged as JSON)."""
    if not accelerator.is_main_process:
        return
    logs = Path(output_dir) / "logs"
    settings: dict[str, dict[str, Any]] = {"tensorboard": {"purge_step": start_step + 1 if start_step else None}}
    if any(str(tracker) == "wandb" for tracker in accelerator.log_with):
        settings["wandb"] = {"dir": str(logs), "name": Path(output_dir).name, "resume": "allow", "id": wandb_run_id(logs)}
    hparams = {key: value if isinstance(value, (bool, int, float, str)) else json.dumps(value) for key, value in config.items()}
    if start_step:
        wait_past_event_files(logs / "diffrl")
    accelerator.init_trackers("diffrl", config=hparams, init_kwargs=settings)


def wait_past_event_files(folder: Path) -> None:
    """Sleep (under a second) until the clock is past the creation second of every TensorBoard event file in `folder`.

    TensorBoard reads a run's event files in name order, and a name starts with its creation second (then host and
    PID): a resumed run whose writer opened in the same second as the interrupted one's could sort before it, and
    then its purge of the interrupted run's later steps is read first and does nothing.
    """
    seconds = [int(m.group(1)) for f in folder.glob("events.out.tfevents.*")
               if (m := re.match(r"events\.out\.tfevents\.(\d+)\.", f.name))]
    wait = max(seconds, default=0) + 1 - time.time()
    if 0 < wait <= 1:  # a longer wait means a file from a clock ahead of this one: sleeping would not fix it
        time.sleep(wait)


def finish_trackers(accelerator: Accelerator) -> None:
    """Close the trackers (not `Accelerator.end_training`: it also ends the process group, which a caller may reuse)."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers.clear()


def wandb_run_id(logs: Path) -> str:
    """The wandb run id of the run logging into `logs`: made once (``logs/wandb_run_id``), read back on a resume."""
    path = logs / "wandb_run_id"
    if not path.is_file():
        logs.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, secrets.token_hex(4))  # 8 characters [0-9a-f], as wandb's own ids
    return path.read_text().strip()


def mean_over_processes(accelerator: Accelerator, values: dict[str, Tensor]) -> dict[str, float]:
    """The mean over processes of each 0-d tensor in ``values``, in one all-reduce."""
    if not values:
        return {}
    stacked = torch.stack(list(values.values())).to(accelerator.device)
    if accelerator.num_processes > 1:
        stacked = accelerator.reduce(stacked, reduction="mean")
    return dict(zip(values, stacked.tolist()))


def per_process(accelerator: Accelerator, state: Any) -> list[Any]:
    """Every process's ``state`` (picklable), in process order (a checkpoint keeps each process's generators)."""
    return gather_object([state]) if accelerator.num_processes > 1 else [state]
