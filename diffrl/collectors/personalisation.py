"""Personalisation batches: the subject's reference images (and class images) as VAE latents with their prompts and
per-row noise, one TensorDict per micro-batch of a training step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict
from torch import Tensor

from diffrl.models import SDComponents, encode_images, encode_prompts
from diffrl.training.data import ReferenceImages, derive_seed, global_rows, schedule_noise


@dataclass(frozen=True)
class PersonalisationBatchConfig:
    """Attributes:
    instance_prompt: the prompt of the subject's images ("a photo of sks dog").
    class_prompt: the prompt of the class images (prior preservation; ``None`` without).
    seed: the run's seed; row i's image, augmentation, noise and schedule step are functions of (seed, i).
    batch_size: rows per micro-batch and process.
    accumulation_steps: micro-batches per step.
    num_inference_steps: the schedule the noise steps index (uniform over its steps).
    train_text_encoder: encode the prompts with gradients (the text encoder is trained), else once, frozen.
    """

    instance_prompt: str
    class_prompt: str | None
    seed: int
    batch_size: int
    accumulation_steps: int
    num_inference_steps: int
    train_text_encoder: bool = False


class PersonalisationCollector:
    """The loss's input for micro-batch ``micro`` of step ``step``: this process's rows of the global batch, a pure
    function of the seed, the step, the micro-batch and the process (`diffrl.training.data.global_rows`), so that
    resuming at a step reproduces its batches and the split over processes and accumulation changes no row.

    ``collect(step, micro)`` returns a TensorDict ``[batch_size]`` with ``"x0"`` (VAE latents of the augmented instance
    images, scaled), ``"prompt_embeds"`` (the instance prompt), ``"negative_prompt_embeds"`` (the empty prompt),
    ``"noise"`` ``[B, C, h, w]`` and ``"step"`` ``[B]`` (schedule index) per row; with class images also ``"prior"``,
    the same keys (without the negative prompt) for the class images and the class prompt. The keys
    `diffrl.objectives.DiffusionLoss` documents.

    Args:
        components: the pipeline (its VAE encodes, its tokenizer and text encoder embed the prompts).
        instances: the subject's images.
        classes: the class images (prior preservation), or ``None``.
        config: prompts, seed and batch geometry.
        rank, world_size: this process and the number of processes.
    """

    def __init__(self, components: SDComponents, instances: ReferenceImages, classes: ReferenceImages | None,
                 config: PersonalisationBatchConfig, rank: int = 0, world_size: int = 1) -> None:
        if classes is not None and not (config.class_prompt or "").strip():
            raise ValueError("class images need a class prompt (PersonalisationBatchConfig.class_prompt).")
        self.components, self.instances, self.classes, self.config = components, instances, classes, config
        self.rank, self.world_size = rank, world_size
        with torch.no_grad():
            prompts = {"negative": "", "instance": config.instance_prompt, "class": config.class_prompt or ""}
            embeds = self._encode(list(prompts.values()))
        self.embeds = {name: embeds[i : i + 1] for i, name in enumerate(prompts)}

    def _encode(self, prompts: list[str]) -> Tensor:
        return encode_prompts(self.components.tokenizer, self.components.text_encoder, prompts)

    def collect(self, step: int, micro: int = 0) -> TensorDict:
        """The batch of micro-batch ``micro`` of step ``step`` (see the class docstring)."""
        config, device, size = self.config, self.components.device, self.config.batch_size
        position = step * config.accumulation_steps + micro
        rows = global_rows(position, size, self.rank, self.world_size)
        images = self.instances.batch(position, size, config.seed, self.rank, self.world_size).to(device)
        with torch.no_grad():
            x0 = encode_images(self.components.vae, images)
        instance = self._encode([config.instance_prompt]) if config.train_text_encoder else self.embeds["instance"]
        batch = TensorDict(
            {
                "x0": x0,
                "prompt_embeds": instance.expand(size, -1, -1),
                "negative_prompt_embeds": self.embeds["negative"].expand(size, -1, -1),
                **self._noise(config.seed, rows, x0),
            },
            batch_size=[size],
        )
        if self.classes is not None:
            class_seed = derive_seed(config.seed, 2)
            class_images = self.classes.batch(position, size, class_seed, self.rank, self.world_size).to(device)
            with torch.no_grad():
                prior_x0 = encode_images(self.components.vae, class_images)
            embeds = self._encode([config.class_prompt]) if config.train_text_encoder else self.embeds["class"]
            batch["prior"] = TensorDict(
                {"x0": prior_x0, "prompt_embeds": embeds.expand(size, -1, -1), **self._noise(class_seed, rows, prior_x0)},
                batch_size=[size],
            )
        return batch

    def _noise(self, seed: int, rows: range, x0: Tensor) -> dict[str, Tensor]:
        """``"noise"`` and ``"step"`` (schedule index) of each row, drawn per global row (`schedule_noise`)."""
        noise, step = schedule_noise(seed, rows, x0.shape[1:], self.config.num_inference_steps, x0.device)
        return {"noise": noise.to(x0.dtype), "step": step}
