"""Personalisation: fine-tune a model on a subject's images with one loss module (DreamBooth, DPG, ...)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch import Tensor, nn

from diffrl.collectors.personalisation import PersonalisationBatchConfig, PersonalisationCollector
from diffrl.data.images import list_images
from diffrl.models import SDComponents, load_sd_components
from diffrl.training.acceleration import make_accelerator
from diffrl.training.build import TrainingContext, build_loss
from diffrl.training.config import TrainConfig
from diffrl.training.data import (
    ReferenceImages,
    check_identifier,
    derive_seed,
    ensure_class_images,
)
from diffrl.training.history import read_history
from diffrl.training.loop import TrainingLoop, TrainResult
from diffrl.training.progress import Progress
from diffrl.training.rng import find_generators
from diffrl.training.rundir import releases_run_dir
from diffrl.training.updates import LossUpdater

LossFactory = Callable[[TrainConfig, TrainingContext], nn.Module]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer(TrainingLoop):
    """Personalize a diffusion model with one `DiffusionLoss` (trainer interface in DESIGN.md / diffrl.objectives):
    one step collects ``gradient_accumulation_steps`` micro-batches of the subject (`PersonalisationCollector`) and
    takes one optimizer update on them; `TrainingLoop` records, checkpoints and exports.

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

    description = "personalize"

    @releases_run_dir(always=False)
    def __init__(
        self,
        config: TrainConfig,
        loss_factory: LossFactory = build_loss,
        accelerator: Accelerator | None = None,
        components: SDComponents | None = None,
    ) -> None:
        accelerator = accelerator or make_accelerator(config.mixed_precision, config.output_dir, config.report_to,
                                                      config.gradient_accumulation_steps)
        check_identifier(config.instance_prompt, config.identifier)
        instance_paths = list_images(config.instance_dir)  # fail fast, before loading the model
        self.open_run(config, accelerator)
        self.log_every = config.log_every
        self.progress: Progress | None = None
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
        self.resume_if_asked()

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
    def iterate(self) -> dict[str, float]:
        """One optimizer update (`LossUpdater.update`) on this step's ``gradient_accumulation_steps`` micro-batches
        from the collector. Returns the logs, averaged over micro-batches and processes."""
        micro_batches = (self.collector.collect(self.step, micro) for micro in range(self.config.gradient_accumulation_steps))
        return self.updater.update(micro_batches, f"step {self.step + 1}")

    def diagnose(self, step: int) -> dict[str, float]:
        """Critic diagnostics (`diffrl.objectives.critic_diagnostics.diagnose`) on step ``step``'s batch, from a
        generator of their own (the run's streams are untouched); empty for losses without a critic."""
        from diffrl.objectives import DPGLoss
        from diffrl.objectives.critic_diagnostics import diagnose

        if not isinstance(self.loss, DPGLoss):
            return {}
        generator = torch.Generator(device=self.accelerator.device).manual_seed(derive_seed(self.config.seed, step, 3))
        return {f"critic/{key}": value for key, value in diagnose(self.loss, self.collector.collect(step), generator).items()}

    # ------------------------------------------------------------------ loop
    def train(self, progress: Progress | None = None) -> TrainResult:
        """Run up to ``config.max_steps`` (from the resumed step), checkpoint, save the model. With ``progress``, the
        model is also scored at step 0 (a fresh start), every ``progress.every`` steps and at the end (main process;
        see `diffrl.training.progress`)."""
        self.progress = progress
        return super().train()

    def on_start(self) -> None:
        """With ``progress``, score the model before training (a fresh start only)."""
        fresh = self.step == 0 and not read_history(self.config.output_dir)
        if self.progress is not None and fresh and self.accelerator.is_main_process:
            self.record(self.progress.measure(self.components, 0))

    def on_step(self) -> dict[str, float]:
        """Critic diagnostics every ``diagnose_every`` steps, the progress scores when due, tracker samples every
        ``sample_every`` steps."""
        config, logs = self.config, {}
        if config.diagnose_every and (self.step - 1) % config.diagnose_every == 0:
            logs.update(self.diagnose(self.step - 1))
        if self.progress is not None and self.accelerator.is_main_process and self.progress.due(self.step, config.max_steps):
            logs.update(self.progress.measure(self.components, self.step))
        if config.sample_every and self.step % config.sample_every == 0:
            self.log_samples()
        return logs

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

    # ------------------------------------------------------------------ state
    def trained_modules(self) -> dict[str, nn.Module]:
        modules = {"unet": self.components.unet}
        if self.config.train_text_encoder:
            modules["text_encoder"] = self.components.text_encoder
        return modules

    def checkpoint_meta(self) -> dict:
        images_seen = self.step * self.config.batch_size * self.config.gradient_accumulation_steps * self.world
        return {"data_position": {"step": self.step, "images_seen": images_seen}}


def train(config: TrainConfig, loss_factory: LossFactory = build_loss) -> TrainResult:
    """Build a `Trainer` for `config` and run it."""
    return Trainer(config, loss_factory).train()
