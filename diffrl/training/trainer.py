"""The training loop: data, loss module, optimizers, Accelerate, logging and checkpoints."""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from diffrl.collectors.personalisation import PersonalisationBatchConfig, PersonalisationCollector
from diffrl.data.images import list_images
from diffrl.models import SDComponents, load_sd_components
from diffrl.training.acceleration import (
    finish_trackers,
    make_accelerator,
    per_process,
    start_trackers,
)
from diffrl.training.build import TrainingContext, build_loss
from diffrl.training.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_loss_module_state,
    loss_module_state,
    save_checkpoint,
)
from diffrl.training.config import TrainConfig
from diffrl.training.data import (
    ReferenceImages,
    check_identifier,
    derive_seed,
    ensure_class_images,
)
from diffrl.training.export import save_model
from diffrl.training.history import read_history
from diffrl.training.progress import Progress
from diffrl.training.rng import capture_rng, find_generators, restore_rng
from diffrl.training.rundir import claim_run_dir, releases_run_dir
from diffrl.training.updates import LossUpdater

LossFactory = Callable[[TrainConfig, TrainingContext], nn.Module]


@dataclass
class TrainResult:
    """Outcome of `train`: final step, per-step logs (averaged over processes), where the model and last checkpoint are."""

    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    model_dir: Path | None = None
    checkpoint: Path | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Personalize a diffusion model with one `DiffusionLoss` (trainer interface in DESIGN.md / diffrl.objectives).

    Every process builds identical models (same seed) and takes its own rows of each global batch (the images, their
    augmentation, noise and t of global row i depend on the seed and i only, `diffrl.training.data.global_rows`);
    the loss module is wrapped in DDP by `Accelerator.prepare`, which averages the gradients, so parameters stay
    identical across processes and P processes x batch B step like one process with batch P x B. With
    ``gradient_accumulation_steps`` A, one step runs A micro-batches under `Accelerator.accumulate`: like batch A x B.

    Args:
        config: the run.
        loss_factory: ``(config, context) -> loss module``; default `build_loss` (by ``config.method``).
        accelerator: an `accelerate.Accelerator` (default: one built from ``config.mixed_precision``).
        components: already loaded components to train (default: loaded from ``config.pretrained``).
    """

    @releases_run_dir(always=False)
    def __init__(
        self,
        config: TrainConfig,
        loss_factory: LossFactory = build_loss,
        accelerator: Accelerator | None = None,
        components: SDComponents | None = None,
    ) -> None:
        self.config = config
        self.accelerator = accelerator or make_accelerator(config.mixed_precision, config.output_dir, config.report_to,
                                                             config.gradient_accumulation_steps)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        check_identifier(config.instance_prompt, config.identifier)
        instance_paths = list_images(config.instance_dir)  # fail fast, before loading the model
        self.run_dir = claim_run_dir(config, self.accelerator)  # lock, overwrite and resume checks (rundir.py)
        seed_everything(config.seed)  # identical initialisation (e.g. LoRA) in every process
        self.components = components or load_sd_components(config.pretrained, device=self.accelerator.device)
        self._freeze()
        native = self.components.latent_shape[1] * self.components.vae_scale_factor
        self.resolution = config.resolution or native
        augment = dict(random_flip=config.random_flip, crop_scale=config.random_crop_scale)
        self.instances = ReferenceImages(instance_paths, self.resolution, **augment)
        self.classes = ReferenceImages(self._class_images(), self.resolution, **augment) if config.prior_preservation else None
        self.collector = PersonalisationCollector(self.components, self.instances, self.classes, PersonalisationBatchConfig(
            config.instance_prompt, config.class_prompt if config.prior_preservation else None, config.seed,
            config.batch_size, config.gradient_accumulation_steps, config.num_inference_steps,
            config.train_text_encoder), self.rank, self.world)
        context = TrainingContext(self.components, self.instances.stacked.to(self.accelerator.device), derive_seed(config.seed, self.rank))
        self.loss = loss_factory(config, context)
        self.updater = LossUpdater(
            self.accelerator, self.loss, {"actor": config.resolved_lr_actor(), "critic": config.lr_critic},
            {"actor": config.grad_clip, "critic": config.critic_grad_clip}, warmup_steps=config.lr_warmup_steps,
            nonfinite=config.nonfinite, ema_decay=config.ema_decay if config.use_ema else None,
            fix_hint="Lower the learning rate, enable grad_clip, or set nonfinite='skip'.")
        self.actor_params = self.updater.params["actor"]  # includes the text encoder's when it is trained
        self.critic_params = self.updater.params["critic"]
        self.optimizer, self.scheduler, self.ema = self.updater.optimizer, self.updater.scheduler, self.updater.ema
        self.generators = find_generators(self.loss)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.last_checkpoint: Path | None = None
        start_trackers(self.accelerator, config.output_dir, self.run_dir.start_step, json.loads(config.to_json()))
        if self.run_dir.resume_from is not None:
            self.load(self.run_dir.resume_from)

    # ------------------------------------------------------------------ setup
    def _freeze(self) -> None:
        c, config = self.components, self.config
        c.vae.requires_grad_(False)
        c.text_encoder.requires_grad_(config.train_text_encoder)
        if config.lora_rank > 0:
            from diffrl.agents.lora import add_lora, add_text_encoder_lora

            add_lora(c.unet, config.lora_rank)
            if config.train_text_encoder:
                add_text_encoder_lora(c.text_encoder, config.lora_rank)
        else:
            c.unet.requires_grad_(True)
        if config.gradient_checkpointing:
            c.unet.enable_gradient_checkpointing()
            if config.train_text_encoder:
                c.text_encoder.gradient_checkpointing_enable()

    def _class_images(self) -> list[Path]:
        """Generate missing class images with the (still frozen) model on the main process; everyone waits."""
        from diffrl.sampling import generate

        config = self.config
        folder = config.class_images_dir

        def make(first: int, n: int) -> Tensor:
            return generate(
                self.components,
                [config.class_prompt] * n,
                num_inference_steps=config.sample_steps,
                guidance_scale=config.guidance_scale,
                seed=derive_seed(config.seed, first),
            )

        if self.accelerator.is_main_process:
            ensure_class_images(folder, config.num_class_images, make)
        self.accelerator.wait_for_everyone()
        return ensure_class_images(folder, config.num_class_images, make)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        """One optimizer update (`LossUpdater.update`) on this step's ``gradient_accumulation_steps`` micro-batches
        from the collector. Returns the logs, averaged over micro-batches and processes."""
        micro_batches = (self.collector.collect(self.step, micro) for micro in range(self.config.gradient_accumulation_steps))
        return self.updater.update(micro_batches, f"step {self.step + 1}")

    def diagnose(self) -> dict[str, float]:
        """Critic diagnostics (`diffrl.objectives.critic_diagnostics.diagnose`) on this step's batch, from a
        generator of their own (the run's streams are untouched); empty for losses without a critic."""
        from diffrl.objectives import DPGLoss
        from diffrl.objectives.critic_diagnostics import diagnose

        if not isinstance(self.loss, DPGLoss):
            return {}
        generator = torch.Generator(device=self.accelerator.device).manual_seed(derive_seed(self.config.seed, self.step, 3))
        return {f"critic/{key}": value for key, value in diagnose(self.loss, self.collector.collect(self.step), generator).items()}

    # ------------------------------------------------------------------ loop
    @releases_run_dir(always=True)
    def train(self, progress: Progress | None = None) -> TrainResult:
        """Run up to ``config.max_steps`` (from the resumed step), checkpoint, save the model. With ``progress``, the
        model is also scored at step 0 (a fresh start), every ``progress.every`` steps and at the end (main process;
        see `diffrl.training.progress`)."""
        config = self.config
        main = self.accelerator.is_main_process
        if progress is not None and self.step == 0 and main and not read_history(config.output_dir):
            scores = progress.measure(self.components, 0)  # the model before training
            self.history.append({"step": 0.0, **scores})
            self.run_dir.record(self.history[-1])
            self._log(scores)
        bar = tqdm(total=config.max_steps, initial=self.step, disable=not main, desc="personalize")
        while self.step < config.max_steps:
            logs = self.train_step()
            if config.diagnose_every and self.step % config.diagnose_every == 0:
                logs.update(self.diagnose())
            self.step += 1
            if progress is not None and main and progress.due(self.step, config.max_steps):
                logs.update(progress.measure(self.components, self.step))
            self.history.append({"step": float(self.step), **logs})
            self.run_dir.record(self.history[-1])
            self._log(logs)
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k.startswith(("loss", "reward"))}, refresh=False)
            if config.checkpoint_every and self.step % config.checkpoint_every == 0 and self.step < config.max_steps:
                self.save()
            if config.sample_every and self.step % config.sample_every == 0:
                self.log_samples()
        bar.close()
        if self.last_checkpoint is None or not self.last_checkpoint.name.endswith(f"{self.step:06d}"):
            self.save()
        model_dir = None
        if self.accelerator.is_main_process:
            with self.ema_weights():
                model_dir = save_model(config, self.components)
        finish_trackers(self.accelerator)
        self.accelerator.wait_for_everyone()
        return TrainResult(step=self.step, history=self.history, model_dir=model_dir or config.model_dir, checkpoint=self.last_checkpoint)

    def _log(self, logs: dict[str, float]) -> None:
        if self.step % self.config.log_every == 0:
            self.accelerator.log({f"train/{key}": value for key, value in logs.items()}, step=self.step)

    @torch.no_grad()
    def log_samples(self) -> None:
        """A grid of samples of the instance prompt (fixed seed) sent to every tracker, from the main process."""
        if not self.accelerator.is_main_process or not self.accelerator.trackers:
            return
        from torchvision.utils import make_grid

        from diffrl.sampling import generate

        config = self.config
        images = generate(
            self.components,
            [config.instance_prompt] * config.num_samples,
            num_inference_steps=config.sample_steps,
            guidance_scale=config.guidance_scale,
            seed=config.seed,
        )
        grid = make_grid(images.float().cpu(), nrow=config.num_samples)[None]  # [1, 3, H, W]
        for tracker in self.accelerator.trackers:
            tracker.log_images({"samples": grid}, step=self.step)

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Inside the block the trained parameters hold their moving average (``use_ema``); restored after."""
        if self.ema is None:
            yield
            return
        self.ema.store(self.actor_params)
        self.ema.copy_to(self.actor_params)
        try:
            yield
        finally:
            self.ema.restore(self.actor_params)

    # ------------------------------------------------------------------ state
    def _trained_modules(self) -> dict[str, nn.Module]:
        modules = {"unet": self.components.unet}
        if self.config.train_text_encoder:
            modules["text_encoder"] = self.components.text_encoder
        return modules

    def state(self) -> Checkpoint:
        """Everything needed to resume exactly (RNG states of every process included)."""
        tensors: dict[str, dict[str, Tensor]] = {
            name: {key: p for key, p in module.named_parameters() if p.requires_grad}
            for name, module in self._trained_modules().items()
        }
        tensors["loss"] = loss_module_state(self.loss, [p for trained in tensors.values() for p in trained.values()])
        rng = per_process(self.accelerator, capture_rng(self.generators))
        states = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"ranks": rng},
        }
        if self.ema is not None:
            states["ema"] = self.ema.state_dict()
        if self.updater.transitions is not None:  # DPG's replay buffer, one per process
            collected = self.updater.transitions.state_dict()
            states["collection"] = {"ranks": per_process(self.accelerator, collected)}
        images_seen = self.step * self.config.batch_size * self.config.gradient_accumulation_steps * self.world
        meta = {"world_size": self.world, "data_position": {"step": self.step, "images_seen": images_seen}, "config": self.config.to_json()}
        return Checkpoint(step=self.step, tensors=tensors, states=states, meta=meta)

    def save(self) -> Path:
        """Checkpoint into ``output_dir/checkpoints`` (written by the main process, atomically)."""
        checkpoint = self.state()
        path = self.config.checkpoint_dir / f"ckpt-{self.step:06d}"
        if self.accelerator.is_main_process:
            path = save_checkpoint(self.config.checkpoint_dir, checkpoint, keep=self.config.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        self.last_checkpoint = path
        return path

    def load(self, path: Path) -> None:
        """Restore a checkpoint written by `save` (same configuration and number of processes)."""
        checkpoint = load_checkpoint(path)
        world = checkpoint.meta.get("world_size")
        if world != self.world:
            raise ValueError(f"Checkpoint '{path}' was written by {world} processes; resume with the same number (got {self.world}).")
        for name, module in self._trained_modules().items():
            saved = checkpoint.tensors.get(name, {})
            params = dict(module.named_parameters())
            unknown = sorted(set(saved) - set(params))
            if unknown:
                raise ValueError(f"Checkpoint '{path}' has {name} weights this model lacks ({unknown[:3]}...); was lora_rank changed?")
            with torch.no_grad():
                for key, value in saved.items():
                    params[key].copy_(value)
        load_loss_module_state(self.loss, checkpoint.tensors["loss"], path)
        learning_rates = list(self.scheduler.base_lrs)  # this run's (an allowed change must not be undone)
        self.optimizer.load_state_dict(checkpoint.states["optimizer"])
        self.scheduler.load_state_dict(checkpoint.states["scheduler"])
        set_base_learning_rates(self.scheduler, learning_rates)
        restore_rng(checkpoint.states["rng"]["ranks"][self.rank], self.generators)
        if self.ema is not None:
            if "ema" not in checkpoint.states:
                raise ValueError(f"Checkpoint '{path}' has no moving average of the weights; was use_ema turned on?")
            self.ema.load_state_dict(checkpoint.states["ema"])
        if self.updater.transitions is not None:
            if "collection" not in checkpoint.states:
                raise ValueError(f"Checkpoint '{path}' has no replay buffer for {type(self.loss).__name__}; was the method changed?")
            self.updater.transitions.load_state_dict(checkpoint.states["collection"]["ranks"][self.rank])
        self.step = checkpoint.step
        self.last_checkpoint = Path(path)


def set_base_learning_rates(scheduler: LambdaLR, base_lrs: list[float]) -> None:
    """Give a (just restored) `LambdaLR` and its optimizer these base learning rates, at the scheduler's step."""
    scheduler.base_lrs = list(base_lrs)
    for group, base, factor in zip(scheduler.optimizer.param_groups, base_lrs, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = base
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def train(config: TrainConfig, loss_factory: LossFactory = build_loss) -> TrainResult:
    """Build a `Trainer` for `config` and run it."""
    return Trainer(config, loss_factory).train()
