"""Build the reward and the loss module of a run from its `TrainConfig` (the default loss factory of `Trainer`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from diffrl.envs import DenoisingConfig, DenoisingEnv
from diffrl.models import SDComponents
from diffrl.training.config import TrainConfig
from diffrl.training.methods import get_method


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
    """The loss module of ``config.method``, a name in `diffrl.training.methods.METHODS`."""
    return get_method(config.method).build(config, context)


def make_env(
    config: TrainConfig,
    context: TrainingContext,
    settings: DenoisingConfig,
    reward: nn.Module | None,
    batch_size: int | None = None,
    seed: int | None = None,
) -> DenoisingEnv:
    """A `DenoisingEnv` over the run's components and instance prompt at the run's resolution (``batch_size``:
    default the run's; ``seed``: default the process's)."""
    settings.height = settings.width = config.resolution
    return DenoisingEnv(
        context.components, config.instance_prompt, batch_size=batch_size or config.batch_size, config=settings,
        reward=reward, seed=context.seed if seed is None else seed,
    )


def reference_env(config: TrainConfig, context: TrainingContext, reward: nn.Module | None) -> DenoisingEnv:
    """The env that noises the instance batch (``mode="reference"``, the training schedule, the process's seed):
    every method's draws of t and eps for the eps-MSE, so that methods of one seed see the same noised states."""
    return make_env(config, context, DenoisingConfig(num_inference_steps=config.num_inference_steps, mode="reference"),
                    reward)
