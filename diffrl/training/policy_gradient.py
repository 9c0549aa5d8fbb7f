"""Fine-tuning on a reward over a prompt dataset: policy gradients (DDPO, GRPO), reward backpropagation (DRaFT-K) and
deterministic policy gradients with a critic (DPG).

One DDPO / GRPO iteration: `diffrl.collectors.TrajectoryCollector` samples P prompts x G trajectories with the current
U-Net on a stochastic schedule and scores the final images with a black-box reward; the loss (`DDPOLoss` or
`GRPOLoss`) then takes ``inner_epochs`` passes over the stored transitions in shuffled minibatches, one optimizer step
each. One DRaFT iteration draws the same P x G prompts and takes one optimizer step of `RewardBackpropLoss`: it samples
with gradients through the last ``draft_k`` steps and ascends the (differentiable) reward directly. One DPG iteration
collects the same P x G trajectories and takes ``inner_epochs`` steps of `DPGLoss` on their final samples: each step
noises the P x G samples afresh (the states of the policy's own marginal at a random t), the critic learns the reward
of the look-forward image decode(x0_hat(s, a)) from explored actions (the same black box, scored per step), and the
U-Net maximises lambda Q(s, mu(s)) plus the eps-MSE on its own samples (which anchors it to its current
distribution, as the reference images anchor DreamBooth); ``critic_updates - 1`` critic-only updates follow.

`PolicyGradientTrainer` is a `diffrl.training.loop.TrainingLoop` (one step = one iteration), so its run folder works
as personalisation's: ``history.jsonl`` (one record per iteration; the same scalars go to the Accelerate trackers,
``report_to``: TensorBoard under ``logs/diffrl``), ``checkpoints/ckpt-NNNNNN`` (U-Net, optimizer, collector and
generators: a resumed run is bit-identical to an uninterrupted one) and ``model/`` (a diffusers folder), one writer
per folder, ``resume`` ("latest", "auto", a checkpoint) checked against the settings, ``overwrite``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from diffrl.objectives.dpg import DPGConfig
from diffrl.training.acceleration import (
    make_accelerator,
    mean_over_processes,
)
from diffrl.training.config import (
    MIXED_PRECISION,
    TRACKERS,
    ConfigError,
    TrainConfig,
    check_report_to,
    check_run_control,
)
from diffrl.training.loop import TrainingLoop
from diffrl.training.rng import find_generators
from diffrl.training.rundir import releases_run_dir
from diffrl.training.updates import LossUpdater, average_logs

if TYPE_CHECKING:
    from diffrl.agents import UNetActor
    from diffrl.envs import DenoisingEnv

LossFactory = Callable[["PolicyGradientConfig", "DenoisingEnv", "UNetActor"], nn.Module]
CRITIC_GRAD_CLIP = TrainConfig.critic_grad_clip
"""Max gradient norm of DPG's critic (its loss is in band-normalised units), as in personalisation."""


@dataclass(frozen=True)
class PGMethod:
    """A method of `PolicyGradientTrainer`.

    Attributes:
        build: ``(config, env, actor) -> loss module``: ``env`` is the sampling env (P x G, terminal reward, the
            config's stochastic schedule), ``actor`` the trained U-Net with the config's guidance.
        data: what one optimizer step of the loss reads. ``"transitions"``: a minibatch of the collected transitions
            (an iteration collects, then takes ``inner_epochs`` passes of minibatch steps); ``"samples"``: the
            collection's P x G final samples as ``"x0"`` with their prompts' embeddings (``inner_epochs`` steps per
            collection); ``"prompts"``: only the drawn prompts' embeddings, from which the loss samples with gradients
            itself (one optimizer step per iteration).
        differentiable_reward: the method backpropagates through the reward.
        summary: one line for the command line's help.
    """

    build: LossFactory
    data: str
    differentiable_reward: bool
    summary: str


def _build_ddpo(config: PolicyGradientConfig, env: DenoisingEnv, actor: UNetActor) -> nn.Module:
    from diffrl.objectives import DDPOConfig, DDPOLoss

    return DDPOLoss(env, actor, DDPOConfig(clip_range=config.clip_range))


def base_policy(config: PolicyGradientConfig, env: DenoisingEnv, guidance_scale: float) -> UNetActor:
    """A frozen copy of the base U-Net (``config.pretrained``) as a policy with ``guidance_scale``: the reference of
    GRPO's KL and of DPG's base anchor."""
    from diffrl.agents import UNetActor
    from diffrl.models import load_sd_components

    base = load_sd_components(config.pretrained, scheduler="ddim", device=env.device).unet.requires_grad_(False)
    return UNetActor(base, guidance_scale=guidance_scale)


def _build_grpo(config: PolicyGradientConfig, env: DenoisingEnv, actor: UNetActor) -> nn.Module:
    from diffrl.objectives import GRPOConfig, GRPOLoss

    reference = base_policy(config, env, config.guidance_scale) if config.kl_weight > 0 else None
    return GRPOLoss(env, actor, GRPOConfig(clip_range=config.clip_range, kl_weight=config.kl_weight),
                    reference_actor=reference)


def _build_draft(config: PolicyGradientConfig, env: DenoisingEnv, actor: UNetActor) -> nn.Module:
    from diffrl.objectives import RewardBackpropConfig, RewardBackpropLoss

    return RewardBackpropLoss(env, actor, RewardBackpropConfig(k=config.draft_k))


def _build_dpg(config: PolicyGradientConfig, env: DenoisingEnv, actor: UNetActor) -> nn.Module:
    from diffrl.agents import QCritic, UNetActor
    from diffrl.envs import DenoisingConfig, DenoisingEnv
    from diffrl.objectives import DPGLoss
    from diffrl.training.data import derive_seed

    seed = env.rng.initial_seed()  # the process's seed; DPG's streams are derived from it
    batch = env.batch_size[0]  # P x G final samples: the actor's noised states, and the critic's

    def states(reward: nn.Module | None, stream: int) -> DenoisingEnv:  # reference mode on SD's t -> t - 1 chain
        chain = DenoisingConfig(num_inference_steps=TrainConfig.num_inference_steps, mode="reference")
        return DenoisingEnv(env.components, env.prompts, batch_size=batch, config=chain, reward=reward,
                            seed=derive_seed(seed, stream))

    transitions = states(PG_REWARDS[config.reward](), 3)  # steps the critic's explored actions, scoring each
    critic = QCritic(transitions.latent_shape, env.components.text_encoder.config.hidden_size, inputs=("x0_hat",))
    settings = DPGConfig(lam=config.lam, warmup_steps=config.warmup_steps, base_weight=config.kl_weight)
    reference = base_policy(config, env, 1.0) if config.kl_weight > 0 else None
    return DPGLoss(transitions, UNetActor(actor.unet, guidance_scale=1.0), critic.to(env.device), settings,
                   reference_env=states(None, 4), seed=derive_seed(seed, 5), reference_actor=reference)


PG_METHODS: dict[str, PGMethod] = {
    "ddpo": PGMethod(_build_ddpo, data="transitions", differentiable_reward=False,
                     summary="PPO-clipped importance ratios, per-prompt normalised advantages"),
    "grpo": PGMethod(_build_grpo, data="transitions", differentiable_reward=False,
                     summary="group-relative advantages, optional KL to the frozen base model"),
    "draft": PGMethod(_build_draft, data="prompts", differentiable_reward=True,
                      summary="DRaFT-K: backpropagate a differentiable reward through the last draft_k steps"),
    "dpg": PGMethod(_build_dpg, data="samples", differentiable_reward=False,
                    summary="a critic of the reward of x0_hat on the policy's own noised samples; the U-Net "
                            "maximises lambda Q plus its eps-MSE on them"),
}
"""Method name -> `PGMethod`; add entries for more (the config, the CLI and pg_task read this dict)."""


def _color_reward() -> nn.Module:
    from diffrl.rewards import ColorTargetReward

    return ColorTargetReward(target_rgb=(0.9, 0.15, 0.15))


def _red_backdrop_reward() -> nn.Module:
    from diffrl.rewards import ColorTargetReward

    return ColorTargetReward(target_rgb=(0.9, 0.15, 0.15), border=0.15)


def _contrast_reward() -> nn.Module:
    from diffrl.rewards import ContrastReward

    return ContrastReward()


def _jpeg_reward() -> nn.Module:
    from diffrl.rewards import JPEGCompressibilityReward

    return JPEGCompressibilityReward()


def _context_reward() -> nn.Module:
    from diffrl.zoo.rewards import ContextReward

    return ContextReward()


def _noise_reward() -> nn.Module:
    from diffrl.rewards import NoiseReward

    return NoiseReward()


PG_REWARDS: dict[str, Callable[[], nn.Module]] = {
    "red": _color_reward, "red_backdrop": _red_backdrop_reward, "contrast": _contrast_reward, "jpeg": _jpeg_reward,
    "context": _context_reward, "noise": _noise_reward,
}
"""Reward name -> factory of the reward of the final images: ``"red"`` (closeness of the mean colour to red;
differentiable, so DRaFT can use it too), ``"red_backdrop"`` (the same over the outer 15% frame of the image only:
the scene's backdrop, not the subject), ``"contrast"`` (the colour distance between the image's centre and its
frame: a centred subject standing out from its backdrop, which no global colour shift changes; differentiable),
``"jpeg"`` (JPEG compressibility, DDPO's; a black box), ``"context"`` (the
zoo's pixel checker's evidence for the context the prompt names; a black box), ``"noise"`` (a control without
signal: what the updates alone do to the model). Add entries for more."""


def pg_choices() -> dict[str, tuple[str, ...]]:
    """The allowed values of `PolicyGradientConfig`'s choice fields, for its command lines (`PG_REWARDS` as it is
    now, entries added included)."""
    return {"method": tuple(PG_METHODS), "reward": tuple(PG_REWARDS), "mixed_precision": MIXED_PRECISION,
            "report_to": tuple(TRACKERS)}


@dataclass
class PolicyGradientConfig:
    """Attributes:
    pretrained: a diffusers Stable Diffusion folder or hub id.
    prompts: a text file with one prompt per line (blank lines and lines starting with '#' are skipped).
    output_dir: the run folder.
    method: a name in `PG_METHODS`: "ddpo" (PPO-clipped, per-prompt normalised advantages), "grpo" (group-relative,
        optional KL), "draft" (backpropagate a differentiable reward through the last ``draft_k`` sampling steps) or
        "dpg" (a critic of the reward; the module docstring).
    reward: a name in `PG_REWARDS`.
    iterations: collect-then-update rounds.
    prompts_per_batch, samples_per_prompt: P and G of each collection (G >= 2).
    inference_steps, eta: the sampling schedule (DDIM; eta > 0 makes it stochastic, as log-probabilities need).
    guidance_scale: classifier-free guidance of the sampled and trained policy.
    inner_epochs, minibatch: passes over each collection and transitions per optimizer step (DDPO, GRPO); DPG takes
        ``inner_epochs`` steps per collection, each on all its P x G samples.
    lr: AdamW learning rate of the U-Net (of its LoRA adapter with ``lora_rank > 0``).
    lr_critic: AdamW learning rate of DPG's critic (its other settings are `diffrl.objectives.DPGConfig`'s defaults).
    lam: DPG's weight of -Q(s, mu(s)) in the actor loss.
    warmup_steps: DPG's actor steps before the actor reads Q (the critic learns meanwhile; lambda then ramps up over
        `DPGConfig.lam_ramp_steps`).
    lora_rank: LoRA rank of the U-Net's attention projections (DDPO's default way of training); 0 fine-tunes all
        weights. The exported model is then ``pytorch_lora_weights.safetensors``
        (``StableDiffusionPipeline.from_pretrained(pretrained)``, then ``pipe.load_lora_weights(model/)``).
    grad_clip: max gradient norm of the U-Net.
    clip_range: PPO's epsilon.
    kl_weight: weight of the anchor to the frozen base model (0: no reference copy): GRPO's per-step KL; DPG's
        `DPGConfig.base_weight` (the mean squared difference of the U-Net's and the base model's noise predictions at
        the actor's states, a KL up to a constant factor).
    draft_k: DRaFT's number of final sampling steps differentiated through (1 <= draft_k <= inference_steps).
    seed: seed of the collection, the sampling noise and the minibatch order (process k draws from seeds derived from
        (seed, k): every process collects its own prompts and trajectories).
    mixed_precision: "no", "fp16" or "bf16" (Accelerate's autocast).
    report_to: the Accelerate trackers of the per-iteration scalars (`diffrl.training.config.TRACKERS`).
    checkpoint_every: iterations between checkpoints (and one at the end).
    keep_checkpoints: how many checkpoints to keep.
    resume: "latest" or a checkpoint directory to continue from; "auto": "latest" if there is a checkpoint, else a
        fresh start (`diffrl.training.rundir` says what a resume checks).
    overwrite: replace the run already in `output_dir` (without it, such a folder is refused).
    allow_changed: fields that may differ from the resumed checkpoint's configuration.
    """

    pretrained: str
    prompts: str
    output_dir: str
    method: str = "ddpo"
    reward: str = "red"
    iterations: int = 20
    prompts_per_batch: int = 4
    samples_per_prompt: int = 4
    inference_steps: int = 10
    eta: float = 1.0
    guidance_scale: float = 5.0
    inner_epochs: int = 1
    minibatch: int = 40
    lr: float = 1e-6
    lr_critic: float = TrainConfig.lr_critic
    lam: float = DPGConfig.lam
    warmup_steps: int = DPGConfig.warmup_steps
    lora_rank: int = 0
    grad_clip: float = 1.0
    clip_range: float = 0.2
    kl_weight: float = 0.0
    draft_k: int = 1
    seed: int = 0
    checkpoint_every: int = 5
    keep_checkpoints: int = 2
    mixed_precision: str = "no"
    report_to: str = "tensorboard"
    resume: str | None = None
    overwrite: bool = False
    allow_changed: tuple[str, ...] = ()

    STEPS_FIELD: ClassVar[str] = "iterations"
    """The field that says how far the run goes (a resume may raise it)."""
    HARMLESS_CHANGES: ClassVar[frozenset[str]] = frozenset(
        {"iterations", "checkpoint_every", "keep_checkpoints", "report_to", "output_dir", "resume", "overwrite",
         "allow_changed"})
    """Fields a resume may change: they do not change what is trained."""

    def __post_init__(self) -> None:
        if self.method not in PG_METHODS:
            raise ConfigError(f"Unknown policy-gradient method {self.method!r}; choose from {list(PG_METHODS)} (or add "
                              "one to diffrl.training.policy_gradient.PG_METHODS).")
        if self.reward not in PG_REWARDS:
            raise ConfigError(f"Unknown reward {self.reward!r}; choose from {list(PG_REWARDS)} (or add one to "
                              "diffrl.training.policy_gradient.PG_REWARDS).")
        for name in ("iterations", "prompts_per_batch", "inference_steps", "inner_epochs", "minibatch", "draft_k",
                     "checkpoint_every", "keep_checkpoints"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ConfigError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}.")
        if not (isinstance(self.samples_per_prompt, int) and self.samples_per_prompt >= 2):
            raise ConfigError(f"samples_per_prompt must be >= 2 (advantages compare the samples of one prompt), "
                              f"got {self.samples_per_prompt!r}.")
        if not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0):
            raise ConfigError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}.")
        if not (isinstance(self.lora_rank, int) and self.lora_rank >= 0):
            raise ConfigError(f"lora_rank must be an integer >= 0 (0: full fine-tuning), got {self.lora_rank!r}.")
        for name in ("eta", "guidance_scale", "lr", "lr_critic", "lam", "grad_clip", "clip_range", "kl_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}.")
        if self.eta <= 0 or self.lr <= 0 or self.lr_critic <= 0 or self.clip_range <= 0:
            raise ConfigError(f"eta, lr, lr_critic and clip_range must be > 0 (eta = 0 has no log-probabilities), got "
                              f"eta={self.eta}, lr={self.lr}, lr_critic={self.lr_critic}, clip_range={self.clip_range}.")
        if self.kl_weight > 0 and self.method not in ("grpo", "dpg"):
            raise ConfigError("kl_weight anchors GRPO or DPG to the base model: use method='grpo' or 'dpg', or "
                              "kl_weight=0.")
        if self.draft_k > self.inference_steps:
            raise ConfigError(f"draft_k ({self.draft_k}) must be <= inference_steps ({self.inference_steps}).")
        if PG_METHODS[self.method].differentiable_reward and not PG_REWARDS[self.reward]().differentiable:
            raise ConfigError(f"method={self.method!r} backpropagates through the reward, and {self.reward!r} is not "
                              f"differentiable: use {[n for n, m in PG_METHODS.items() if not m.differentiable_reward]},"
                              f" or a differentiable reward "
                              f"({[name for name, make in PG_REWARDS.items() if make().differentiable]}).")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"mixed_precision must be one of {list(MIXED_PRECISION)}, got {self.mixed_precision!r}.")
        check_report_to(self.report_to)
        check_run_control(self, example="lr")

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.output_dir) / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return Path(self.output_dir) / "model"


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a text file, one per line; blank lines and '#' comments skipped. Errors name the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Prompt file '{path}' does not exist: give a text file with one prompt per line.")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"Prompt file '{path}' holds no prompts: write one prompt per line.")
    return prompts


class PolicyGradientTrainer(TrainingLoop):
    """DDPO, GRPO, DRaFT-K and DPG over a prompt file (see the module docstring); one step of `TrainingLoop` is one
    iteration: a collection, then the method's optimizer updates on it.

    Under ``accelerate launch`` every process collects its own P x G trajectories (its own seeds) and the loss
    module is wrapped in DDP by `Accelerator.prepare`: the minibatch gradients are averaged over processes, so the
    U-Net stays identical in all of them; the logged scalars are means over processes.
    """

    @releases_run_dir(always=False)
    def __init__(self, config: PolicyGradientConfig) -> None:
        from diffrl.agents import UNetActor
        from diffrl.collectors import TrajectoryCollector, TrajectoryCollectorConfig
        from diffrl.envs import DenoisingConfig, DenoisingEnv
        from diffrl.models import load_sd_components
        from diffrl.training.data import derive_seed

        prompts = read_prompts(config.prompts)
        if len(prompts) < config.prompts_per_batch:
            raise ValueError(f"'{config.prompts}' has {len(prompts)} prompts, fewer than prompts_per_batch="
                             f"{config.prompts_per_batch}.")
        self.open_run(config, make_accelerator(config.mixed_precision, config.output_dir, config.report_to))
        seed = derive_seed(config.seed, self.rank)  # this process's collection, sampling noise and minibatch order
        torch.manual_seed(config.seed)
        device = self.accelerator.device
        self.components = load_sd_components(config.pretrained, scheduler="ddim", device=device)
        self.components.vae.requires_grad_(False)
        self.components.text_encoder.requires_grad_(False)
        if config.lora_rank > 0:
            from diffrl.agents.lora import add_lora

            add_lora(self.components.unet, rank=config.lora_rank)
        batch = config.prompts_per_batch * config.samples_per_prompt
        env = DenoisingEnv(self.components, prompts[0], batch_size=batch, reward=PG_REWARDS[config.reward](),
                           config=DenoisingConfig(num_inference_steps=config.inference_steps, eta=config.eta,
                                                  reward_mode="terminal"), seed=seed)
        actor = UNetActor(self.components.unet, guidance_scale=config.guidance_scale)
        self.collector = TrajectoryCollector(env, actor, prompts, TrajectoryCollectorConfig(
            config.prompts_per_batch, config.samples_per_prompt), seed=derive_seed(seed, 1))
        self.loss = PG_METHODS[config.method].build(config, env, actor)
        self.updater = LossUpdater(self.accelerator, self.loss, {"actor": config.lr, "critic": config.lr_critic},
                                   {"actor": config.grad_clip, "critic": CRITIC_GRAD_CLIP},
                                   fix_hint="Lower lr (or lr_critic) or check the reward.")
        self.shuffle = torch.Generator().manual_seed(derive_seed(seed, 2))
        self.generators = self._generators()
        self.resume_if_asked()

    # ------------------------------------------------------------------ train
    def iterate(self) -> dict[str, float]:
        """One iteration (see the module docstring); returns its record (means over optimizer steps and processes):
        ``samples`` (trajectories collected so far, all processes), ``train_reward`` and the loss's logs."""
        data = PG_METHODS[self.config.method].data
        if data == "prompts":
            self.collector.draw_prompts()
            env = self.collector.env
            outs = [self._update(TensorDict(prompt_embeds=env.prompt_embeds, batch_size=env.batch_size,
                                            negative_prompt_embeds=env.negative_prompt_embeds))]
            train_reward = outs[0]["reward"]  # a mean over processes already
        else:
            batch = self.collector.collect()
            train_reward = self._mean(batch["final_reward"].float().mean())
            if data == "samples":
                samples = self._final_samples(batch)
                outs = [self._update(samples) for _ in range(self.config.inner_epochs)]
            else:
                outs = []
                for _ in range(self.config.inner_epochs):
                    order = torch.randperm(len(batch), generator=self.shuffle)
                    outs += [self._update(minibatch) for minibatch in batch[order].split(self.config.minibatch)]
        samples = (self.step + 1) * self.config.prompts_per_batch * self.config.samples_per_prompt * self.world
        return {"samples": samples, "train_reward": train_reward, **average_logs(outs)}

    def _final_samples(self, transitions: TensorDict) -> TensorDict:
        """The collection's final samples ``[P * G]``: ``"x0"`` (x_0 of each trajectory) with its prompt's
        ``"prompt_embeds"`` and ``"negative_prompt_embeds"``, in the collector env's row order. The loss's envs get
        the same prompts (a reward that reads the prompt scores each row against its own)."""
        final = transitions[transitions["next", "done"].squeeze(-1)]
        prompts = self.collector.env.prompts
        if len(final) != len(prompts):
            raise RuntimeError(f"Expected one final transition per trajectory ({len(prompts)}), got {len(final)}.")
        for env in (self.loss.env, self.loss.reference_env):
            env.set_prompts(prompts)
        return TensorDict(x0=final["next", "latents"], prompt_embeds=final["prompt_embeds"],
                          negative_prompt_embeds=final["negative_prompt_embeds"], batch_size=[len(final)])

    def _update(self, batch: TensorDict) -> dict[str, float]:
        """One optimizer update (`LossUpdater.update`) of the loss on ``batch``; returns its logs."""
        return self.updater.update([batch], f"iteration {self.step + 1}")

    def _mean(self, value: Tensor) -> float:
        """The mean of a 0-d tensor over processes."""
        return mean_over_processes(self.accelerator, {"value": value.float()})["value"]

    # ------------------------------------------------------------- checkpoint
    def own_state(self) -> dict[str, Any]:
        return {"collector": self.collector.state_dict()}

    def load_own_state(self, state: dict[str, Any]) -> None:
        self.collector.load_state_dict(state["collector"])

    def _generators(self) -> dict[str, torch.Generator]:
        """Every generator the run draws from: the collector env's, the minibatch order's and the loss's own (DPG's
        exploration and replay sampling, its envs' noising)."""
        generators = {"env": self.collector.env.rng, "shuffle": self.shuffle}
        known = {id(gen) for gen in generators.values()}
        generators.update({f"loss.{name}": gen for name, gen in find_generators(self.loss).items() if id(gen) not in known})
        return generators
