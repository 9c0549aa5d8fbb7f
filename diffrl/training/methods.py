"""The training methods of `Trainer`, by name: each builds its loss module from the run's `TrainConfig`.

``TrainConfig(method=NAME)`` accepts exactly the names registered here; the CLI's ``--method`` lists them. A new
method is one decorated function (no other file changes)::

    from diffrl.training.methods import register_method

    @register_method("my_method", uses_rewards=True, summary="DreamBooth plus my term")
    def build_my_method(config, context):
        ...  # return a DiffusionLoss (see diffrl.training.build for the envs and rewards it can use)

This module stays light (the CLI imports it for ``--help``): every builder imports models, envs and objectives when
it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from diffrl.training.build import TrainingContext
    from diffrl.training.config import TrainConfig

LossBuilder = Callable[["TrainConfig", "TrainingContext"], "nn.Module"]
ConfigCheck = Callable[["TrainConfig"], None]


@dataclass(frozen=True)
class Method:
    """Attributes:
    build: ``(config, context) -> loss module`` (a `diffrl.objectives.DiffusionLoss`).
    uses_rewards: whether the method reads ``config.rewards`` (then at least one non-zero weight is required).
    summary: one line for the CLI's help.
    check: extra validation of a `TrainConfig` using this method; raises `diffrl.training.ConfigError`.
    """

    build: LossBuilder
    uses_rewards: bool
    summary: str
    check: ConfigCheck | None = None


METHODS: dict[str, Method] = {}


def register_method(
    name: str, *, uses_rewards: bool, summary: str, check: ConfigCheck | None = None
) -> Callable[[LossBuilder], LossBuilder]:
    """Decorator registering a loss builder under ``name`` (see the module docstring); a taken name is an error."""

    def register(build: LossBuilder) -> LossBuilder:
        if name in METHODS:
            raise ValueError(f"A training method named {name!r} is already registered; pick another name.")
        METHODS[name] = Method(build=build, uses_rewards=uses_rewards, summary=summary, check=check)
        return build

    return register


def get_method(name: str) -> Method:
    """The registered method ``name``; an unknown name is a `ValueError` listing the known ones."""
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; choose from {list(METHODS)}, or register a new one with "
                         "diffrl.training.methods.register_method.")
    return METHODS[name]


def method_help() -> str:
    """``name: summary`` of every registered method, for the CLI."""
    return "; ".join(f"{name}: {method.summary}" for name, method in METHODS.items())


# --------------------------------------------------------------------------------------------- built-in methods
def _prior_weight(config: TrainConfig) -> float:
    return config.prior_weight if config.prior_preservation else 0.0


def _text_encoder(config: TrainConfig, context: TrainingContext) -> nn.Module | None:
    return context.components.text_encoder if config.train_text_encoder else None


@register_method("dreambooth", uses_rewards=False, summary="the eps-MSE (+ prior preservation) alone")
def build_dreambooth(config: TrainConfig, context: TrainingContext) -> nn.Module:
    from diffrl import objectives
    from diffrl.agents import UNetActor
    from diffrl.training.build import reference_env

    actor = UNetActor(context.components.unet, guidance_scale=1.0)
    settings = objectives.DreamBoothConfig(prior_weight=_prior_weight(config))
    return objectives.DreamBoothLoss(reference_env(config, context, None), actor, settings,
                                     text_encoder=_text_encoder(config, context))


def _dpg(config: TrainConfig, context: TrainingContext, bootstrap: bool) -> nn.Module:
    from diffrl import objectives
    from diffrl.agents import QCritic, UNetActor
    from diffrl.envs import DenoisingConfig
    from diffrl.training.build import build_reward, make_env, reference_env
    from diffrl.training.data import derive_seed

    components = context.components
    reward = build_reward(config, context)
    reference = reference_env(config, context, reward)
    # the critic reads the action through x0_hat; rewards comparing x0_hat with x0 also need x0 and the error
    inputs = ("x0_hat", "x0", "lookforward_error") if config.rewards.get("lookforward", 0) else ("x0_hat",)
    critic = QCritic(reference.latent_shape, components.text_encoder.config.hidden_size, inputs=inputs)
    # the critic's transitions: a batch of their own, stepped by an env whose generator the actor's noising never sees
    transitions = make_env(config, context, DenoisingConfig(num_inference_steps=config.num_inference_steps,
                                                            mode="reference"),
                           reward, batch_size=config.critic_states, seed=derive_seed(context.seed, 1))
    return objectives.DPGLoss(
        transitions, UNetActor(components.unet, guidance_scale=1.0), critic.to(components.device),
        config.dpg_config(_prior_weight(config), bootstrap=bootstrap), reference_env=reference,
        text_encoder=_text_encoder(config, context), seed=derive_seed(context.seed, 2),
    )


@register_method("dpg", uses_rewards=True, summary="DreamBooth + lambda Q of a critic with the Bellman backup")
def build_dpg(config: TrainConfig, context: TrainingContext) -> nn.Module:
    return _dpg(config, context, bootstrap=True)


@register_method("one_step", uses_rewards=True, summary="DPG whose critic regresses the immediate reward (no backup)")
def build_one_step(config: TrainConfig, context: TrainingContext) -> nn.Module:
    return _dpg(config, context, bootstrap=False)


@register_method("direct_reward", uses_rewards=True,
                 summary="DreamBooth + lambda w(t) times the exact differentiable reward of x0_hat (no critic)")
def build_direct_reward(config: TrainConfig, context: TrainingContext) -> nn.Module:
    from diffrl import objectives
    from diffrl.agents import UNetActor
    from diffrl.training.build import build_reward, reference_env

    settings = objectives.DirectRewardConfig(lam=config.lam, actor_weighting=config.actor_weighting, gamma=config.gamma,
                                             prior_weight=_prior_weight(config))
    return objectives.DirectRewardLoss(reference_env(config, context, build_reward(config, context)),
                                       UNetActor(context.components.unet, guidance_scale=1.0), settings,
                                       text_encoder=_text_encoder(config, context))


def _check_reward_backprop(config: TrainConfig) -> None:
    from diffrl.training.config import ConfigError

    if config.rewards.get("lookforward", 0) != 0:
        raise ConfigError("method 'reward_backprop' samples from noise, where the 'lookforward' reward has no reference "
                          "x0; use rewards={'dino': 1.0} (or method 'dpg').")


@register_method("reward_backprop", uses_rewards=True, check=_check_reward_backprop,
                 summary="backpropagate the terminal reward through sampling (DRaFT / AlignProp)")
def build_reward_backprop(config: TrainConfig, context: TrainingContext) -> nn.Module:
    from diffrl import objectives
    from diffrl.agents import UNetActor
    from diffrl.envs import DenoisingConfig
    from diffrl.training.build import build_reward, make_env, reference_env

    reward = build_reward(config, context)
    sampling = make_env(config, context, DenoisingConfig(num_inference_steps=config.sample_steps,
                                                         reward_mode="terminal"), reward)
    actor = UNetActor(context.components.unet, guidance_scale=config.guidance_scale)
    return objectives.RewardBackpropLoss(sampling, actor, objectives.RewardBackpropConfig(prior_weight=_prior_weight(config)),
                                         reference_env=reference_env(config, context, reward),
                                         text_encoder=_text_encoder(config, context))
