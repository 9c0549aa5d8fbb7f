"""Build the reward and the loss module of a run from its `TrainConfig` (the default loss factory of `Trainer`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from diffrl.envs import DenoisingConfig, DenoisingEnv
from diffrl.models import SDComponents
from diffrl.training.config import METHODS, TrainConfig
from diffrl.training.data import derive_seed


@dataclass
class TrainingContext:
    """What a loss factory gets besides the config.

    Attributes:
        components: the loaded pipeline (U-Net trainable, LoRA already added when ``lora_rank > 0``).
        reference_images: the subject's un-augmented images ``[N, 3, R, R]`` in ``[0, 1]`` (on the device).
        seed: this process's seed (for the loss's environment generator).
    """

    components: SDComponents
    reference_images: Tensor
    seed: int


def build_reward(config: TrainConfig, context: TrainingContext) -> nn.Module:
    """``sum_i w_i * r_i`` over ``config.rewards`` (zero weights dropped)."""
    from diffrl.models.encoders import DINOEncoder
    from diffrl.rewards import DINOReward, LookForwardReward

    terms = []
    for name, weight in config.rewards.items():
        if weight == 0:
            continue
        if name == "lookforward":
            reward = LookForwardReward()
        else:
            encoder = DINOEncoder.from_pretrained(config.dino_arch, weights=config.dino_weights, **config.dino_kwargs)
            reward = DINOReward(encoder.to(context.components.device), context.reference_images)
        terms.append(weight * reward)
    return sum(terms)


def build_loss(config: TrainConfig, context: TrainingContext) -> nn.Module:
    """The `DiffusionLoss` of ``config.method`` over the components' U-Net (see `diffrl.objectives`)."""
    from diffrl import objectives
    from diffrl.agents import UNetActor
    from diffrl.agents.critic import QCritic

    components = context.components
    reward = build_reward(config, context) if config.uses_rewards else None
    prior_weight = config.prior_weight if config.prior_preservation else 0.0
    text_encoder = components.text_encoder if config.train_text_encoder else None
    reference = _env(config, context, DenoisingConfig(num_inference_steps=config.num_inference_steps, mode="reference"), reward)
    if config.method == "dreambooth":
        actor = UNetActor(components.unet, guidance_scale=1.0)
        return objectives.DreamBoothLoss(reference, actor, objectives.DreamBoothConfig(prior_weight=prior_weight), text_encoder=text_encoder)
    if config.method == "reward_backprop":
        sampling = _env(config, context, DenoisingConfig(num_inference_steps=config.sample_steps, reward_mode="terminal"), reward)
        actor = UNetActor(components.unet, guidance_scale=config.guidance_scale)
        backprop = objectives.RewardBackpropConfig(prior_weight=prior_weight)
        return objectives.RewardBackpropLoss(sampling, actor, backprop, reference_env=reference, text_encoder=text_encoder)
    if config.method == "direct_reward":
        actor = UNetActor(components.unet, guidance_scale=1.0)
        direct = objectives.DirectRewardConfig(
            lam=config.lam, actor_weighting=config.actor_weighting, gamma=config.gamma, prior_weight=prior_weight
        )
        return objectives.DirectRewardLoss(reference, actor, direct, text_encoder=text_encoder)
    if config.method not in ("dpg", "one_step"):
        raise ValueError(
            f"build_loss has no loss for method {config.method!r}; pick one of {list(METHODS)} or add its branch here."
        )
    # the critic reads the action through x0_hat; rewards comparing x0_hat with x0 also need x0 and the error
    inputs = ("x0_hat", "x0", "lookforward_error") if config.rewards.get("lookforward", 0) else ("x0_hat",)
    critic = QCritic(reference.latent_shape, components.text_encoder.config.hidden_size, inputs=inputs)
    # the critic's transitions: a batch of their own, stepped by an env whose generator the actor's noising never sees
    transitions = _env(config, context, DenoisingConfig(num_inference_steps=config.num_inference_steps, mode="reference"),
                       reward, batch_size=config.critic_states, seed=derive_seed(context.seed, 1))
    actor = UNetActor(components.unet, guidance_scale=1.0)
    return objectives.DPGLoss(
        transitions, actor, critic.to(components.device), config.dpg_config(prior_weight), reference_env=reference,
        text_encoder=text_encoder, seed=derive_seed(context.seed, 2),
    )


def _env(
    config: TrainConfig,
    context: TrainingContext,
    settings: DenoisingConfig,
    reward: nn.Module | None,
    batch_size: int | None = None,
    seed: int | None = None,
) -> DenoisingEnv:
    settings.height = settings.width = config.resolution
    return DenoisingEnv(
        context.components, config.instance_prompt, batch_size=batch_size or config.batch_size, config=settings,
        reward=reward, seed=context.seed if seed is None else seed,
    )
