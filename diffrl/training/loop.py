"""The loop every trainer runs: one step collects data and takes the loss's optimizer updates on it; steps are
recorded, checkpointed and exported the same way whatever the method.

`TrainingLoop` is the trainer: a subclass (`Trainer` for personalisation, `PolicyGradientTrainer` for a reward over
prompts) says what one step collects and how many updates it takes (`iterate`: a collector's TensorDict, then K
epochs x minibatches of `LossUpdater.update`); the loop owns the rest:

- the run folder (`claim_run_dir`: one writer, no silent overwrite, a resume that checks its settings; released when
  `train` returns or raises);
- the step counter, ``history.jsonl`` and the Accelerate trackers (``train/<key>`` every ``log_every`` steps);
- checkpoints (`state` / `save` / `load`): the trained parameters, the loss module's own state (critic, targets),
  the optimizer, LR schedule and moving average, and per process its generators, the replay buffer and the
  subclass's `own_state` (e.g. the prompt collector's position). A resumed run is bit-identical to one that was
  never interrupted;
- the export of the model (`export`, `diffrl.training.export.save_model`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from diffrl.models import SDComponents
from diffrl.training.acceleration import finish_trackers, per_process, start_trackers
from diffrl.training.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_loss_module_state,
    loss_module_state,
    save_checkpoint,
)
from diffrl.training.config import config_json
from diffrl.training.export import save_model
from diffrl.training.rng import capture_rng, restore_rng
from diffrl.training.rundir import RunConfig, claim_run_dir, releases_run_dir
from diffrl.training.updates import LossUpdater


@dataclass
class TrainResult:
    """Outcome of `TrainingLoop.train`: final step, per-step logs (averaged over processes), where the model and the
    last checkpoint are."""

    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    model_dir: Path | None = None
    checkpoint: Path | None = None


class TrainingLoop:
    """Steps, records, checkpoints and exports a run (see the module docstring).

    A subclass's ``__init__`` calls `open_run` first (before loading any model: a busy or mismatched folder fails
    fast), then sets ``components``, ``loss``, ``updater`` and ``generators`` (every generator the run draws from,
    by name) and finally calls `resume_if_asked`. It implements `iterate` and may extend `trained_modules`,
    `own_state` / `load_own_state`, `checkpoint_meta`, `on_start`, `on_step` and `export`.
    """

    description = "train"  # the progress bar's label
    log_every = 1  # steps between tracker logs

    config: RunConfig
    accelerator: Accelerator
    components: SDComponents
    loss: nn.Module
    updater: LossUpdater
    generators: dict[str, torch.Generator]

    def open_run(self, config: RunConfig, accelerator: Accelerator) -> None:
        """Take ``config.output_dir`` for this run (`claim_run_dir`) and start at step 0."""
        self.config, self.accelerator = config, accelerator
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.run_dir = claim_run_dir(config, accelerator)  # lock, overwrite and resume checks (rundir.py)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.last_checkpoint: Path | None = None

    def resume_if_asked(self) -> None:
        """Load the checkpoint the run folder's claim chose to resume from, if any."""
        if self.run_dir.resume_from is not None:
            self.load(self.run_dir.resume_from)

    @property
    def total_steps(self) -> int:
        return getattr(self.config, self.config.STEPS_FIELD)

    # ------------------------------------------------------------------ steps
    def iterate(self) -> dict[str, float]:
        """Collect this step's data and take its optimizer updates; return the step's logs (means over updates and
        processes). Reads ``self.step`` (the steps done so far) and must not change it."""
        raise NotImplementedError

    def train_step(self) -> dict[str, float]:
        """One step (`iterate`); advances ``self.step`` and returns its logs."""
        logs = self.iterate()
        self.step += 1
        return logs

    def on_start(self) -> None:
        """Called once by `train` before the first step (trackers started, nothing trained yet by this call)."""

    def on_step(self) -> dict[str, float]:
        """Called by `train` after each step (``self.step`` already advanced); returns logs to add to the step's."""
        return {}

    @releases_run_dir(always=True)
    def train(self) -> TrainResult:
        """Run to the config's step count (from the resumed step), checkpointing every ``checkpoint_every`` steps and
        at the end; export the model. The run folder's lock is released when this returns or raises."""
        config, main = self.config, self.accelerator.is_main_process
        start_trackers(self.accelerator, config.output_dir, self.run_dir.start_step, dataclasses.asdict(config))
        try:
            self.on_start()
            bar = tqdm(total=self.total_steps, initial=self.step, disable=not main, desc=self.description)
            while self.step < self.total_steps:
                logs = self.train_step()
                logs.update(self.on_step())
                self.record(logs)
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k.startswith(("loss", "reward", "train_"))},
                                refresh=False)
                if config.checkpoint_every and self.step % config.checkpoint_every == 0 and self.step < self.total_steps:
                    self.save()
            bar.close()
            if self.last_checkpoint is None or not self.last_checkpoint.name.endswith(f"{self.step:06d}"):
                self.save()
            model_dir = self.export()
        finally:
            finish_trackers(self.accelerator)
        self.accelerator.wait_for_everyone()
        return TrainResult(step=self.step, history=self.history, model_dir=model_dir, checkpoint=self.last_checkpoint)

    def record(self, logs: dict[str, float]) -> None:
        """Append this step's logs to ``history``, to the history log (main process) and to the trackers."""
        self.history.append({"step": float(self.step), **logs})
        self.run_dir.record(self.history[-1])
        if self.step % self.log_every == 0:
            self.accelerator.log({f"train/{key}": value for key, value in logs.items()}, step=self.step)

    # ------------------------------------------------------------------ model
    def trained_modules(self) -> dict[str, nn.Module]:
        """The modules whose trainable parameters a checkpoint holds, by name."""
        return {"unet": self.components.unet}

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Inside the block the trained parameters hold their moving average (when the updater keeps one)."""
        ema, params = self.updater.ema, self.updater.params["actor"]
        if ema is None:
            yield
            return
        ema.store(params)
        ema.copy_to(params)
        try:
            yield
        finally:
            ema.restore(params)

    def export(self) -> Path:
        """Write the model (its moving average, if kept) to ``config.model_dir`` (`save_model`) on the main process;
        every process returns its path."""
        if self.accelerator.is_main_process:
            with self.ema_weights():
                save_model(self.config, self.components, text_encoder="text_encoder" in self.trained_modules())
        self.accelerator.wait_for_everyone()
        return self.config.model_dir

    # ------------------------------------------------------------------ state
    def own_state(self) -> dict[str, Any]:
        """This process's further state for a checkpoint (picklable), besides its generators and replay buffer."""
        return {}

    def load_own_state(self, state: dict[str, Any]) -> None:
        """Restore what `own_state` returned."""

    def checkpoint_meta(self) -> dict[str, Any]:
        """Further JSON facts for a checkpoint's ``meta.json``."""
        return {}

    def state(self) -> Checkpoint:
        """Everything needed to resume exactly (the generators of every process included)."""
        tensors: dict[str, dict[str, Tensor]] = {
            name: {key: p for key, p in module.named_parameters() if p.requires_grad}
            for name, module in self.trained_modules().items()
        }
        tensors["loss"] = loss_module_state(self.loss, [p for trained in tensors.values() for p in trained.values()])
        own = {"rng": capture_rng(self.generators), **self.own_state()}
        if self.updater.transitions is not None:  # DPG's replay buffer, one per process
            own["replay"] = self.updater.transitions.state_dict()
        states = {"optimizer": self.updater.optimizer.state_dict(), "scheduler": self.updater.scheduler.state_dict(),
                  "ranks": per_process(self.accelerator, own)}
        if self.updater.ema is not None:
            states["ema"] = self.updater.ema.state_dict()
        meta = {"world_size": self.world, "config": json.loads(config_json(self.config)),
                **self.checkpoint_meta()}
        return Checkpoint(step=self.step, tensors=tensors, states=states, meta=meta)

    def save(self) -> Path:
        """Checkpoint into ``config.checkpoint_dir`` (written by the main process, atomically)."""
        checkpoint = self.state()
        path = self.config.checkpoint_dir / f"ckpt-{self.step:06d}"
        if self.accelerator.is_main_process:
            path = save_checkpoint(self.config.checkpoint_dir, checkpoint, keep=self.config.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        self.last_checkpoint = path
        return path

    def load(self, path: Path) -> None:
        """Restore a checkpoint written by `save` (same settings and number of processes; `claim_run_dir` checked)."""
        checkpoint = load_checkpoint(path)
        if "ranks" not in checkpoint.states:
            raise ValueError(f"Checkpoint '{path}' was written by an older diffrl, before both trainers shared one "
                             "checkpoint format; continue it with that version or start a new run.")
        world = checkpoint.meta.get("world_size")
        if world != self.world:
            raise ValueError(f"Checkpoint '{path}' was written by {world} processes; resume with the same number "
                             f"(got {self.world}).")
        for name, module in self.trained_modules().items():
            saved = checkpoint.tensors.get(name, {})
            params = dict(module.named_parameters())
            unknown = sorted(set(saved) - set(params))
            if unknown:
                raise ValueError(f"Checkpoint '{path}' has {name} weights this model lacks ({unknown[:3]}...); was "
                                 "lora_rank changed?")
            with torch.no_grad():
                for key, value in saved.items():
                    params[key].copy_(value)
        load_loss_module_state(self.loss, checkpoint.tensors["loss"], path)
        learning_rates = list(self.updater.scheduler.base_lrs)  # this run's (an allowed change must not be undone)
        self.updater.optimizer.load_state_dict(checkpoint.states["optimizer"])
        self.updater.scheduler.load_state_dict(checkpoint.states["scheduler"])
        set_base_learning_rates(self.updater.scheduler, learning_rates)
        own = checkpoint.states["ranks"][self.rank]
        restore_rng(own["rng"], self.generators)
        self.load_own_state(own)
        if self.updater.ema is not None:
            if "ema" not in checkpoint.states:
                raise ValueError(f"Checkpoint '{path}' has no moving average of the weights; was use_ema turned on?")
            self.updater.ema.load_state_dict(checkpoint.states["ema"])
        if self.updater.transitions is not None:
            if "replay" not in own:
                raise ValueError(f"Checkpoint '{path}' has no replay buffer for {type(self.loss).__name__}; was the "
                                 "method changed?")
            self.updater.transitions.load_state_dict(own["replay"])
        self.step = checkpoint.step
        self.last_checkpoint = Path(path)


def set_base_learning_rates(scheduler: LambdaLR, base_lrs: list[float]) -> None:
    """Give a (just restored) `LambdaLR` and its optimizer these base learning rates, at the scheduler's step."""
    scheduler.base_lrs = list(base_lrs)
    for group, base, factor in zip(scheduler.optimizer.param_groups, base_lrs, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = base
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
