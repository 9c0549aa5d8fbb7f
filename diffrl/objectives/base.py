"""The loss-module interface shared by every fine-tuning method, and the DreamBooth noise-prediction terms."""

from __future__ import annotations

from collections.abc import Sequence

from tensordict import TensorDictBase
from torch import Tensor, nn
from torchrl.objectives import LossModule, SoftUpdate

from diffrl.agents.actor import UNetActor
from diffrl.envs.denoising import DenoisingEnv
from diffrl.forward_process import true_noise

PROMPT_KEYS = ("prompt_embeds", "negative_prompt_embeds")
INSTANCE_KEYS = ("x0", *PROMPT_KEYS)


class DiffusionLoss(LossModule):
    """Base class of the fine-tuning losses (the trainer's interface).

    ``forward(batch) -> TensorDict`` of scalars: the trainer sums the entries whose key starts with ``"loss_"`` into one
    backward, every other entry is a detached metric to log. Each ``loss_*`` term moves only its own parameters:
    ``"loss_actor"`` the actor's (`actor_parameters`), ``"loss_critic"`` the critic's (`critic_parameters`).
    After each optimizer step the trainer calls ``target_updater.step()`` when it is not ``None``.

    The batch (batch size ``[B]``, B = the environment's batch size):
        ``"x0"`` ``[B, C, h, w]`` instance latents (VAE-encoded, scaled); ``"prompt_embeds"`` ``[B, L, D]`` (may carry
        gradients when the text encoder is trained); ``"negative_prompt_embeds"`` ``[B, L, D]``; optionally
        ``("prior", "x0")`` and ``("prior", "prompt_embeds")`` (class images of the frozen model and the class prompt)
        for prior preservation; optionally ``"noise"`` ``[B, C, h, w]`` and ``"step"`` ``[B]`` (int64 schedule
        indices) that noise ``x0`` (and ``("prior", "noise")``, ``("prior", "step")`` the prior batch's), see
        `noised_state`.

    Args:
        env: the `DenoisingEnv` producing the method's transitions. It is used, not owned: it is not a submodule, so
            the loss's ``state_dict`` holds no reward or VAE weights.
        actor: the policy; its U-Net is trained (all of it, or the LoRA weights after `diffrl.agents.add_lora`).
        reference_env: a reference-mode env used to noise ``x0`` for the DreamBooth terms (default: ``env`` when it is
            in reference mode).
        text_encoder: the text encoder when it is trained too (its trainable parameters join `actor_parameters`).
        same_batch_size: require ``env`` and ``reference_env`` to share the batch size (a subclass whose ``env``
            steps batches of its own sets False).
    """

    actor: UNetActor
    target_updater: SoftUpdate | None = None

    def __init__(
        self,
        env: DenoisingEnv,
        actor: UNetActor,
        *,
        reference_env: DenoisingEnv | None = None,
        text_encoder: nn.Module | None = None,
        same_batch_size: bool = True,
    ) -> None:
        super().__init__()
        check_actor(actor)
        if reference_env is not None and reference_env.config.mode != "reference":
            raise ValueError(f"reference_env must be in reference mode, got mode={reference_env.config.mode!r}.")
        if same_batch_size and reference_env is not None and reference_env.batch_size != env.batch_size:
            raise ValueError(f"reference_env batch_size {tuple(reference_env.batch_size)} != env's {tuple(env.batch_size)}.")
        self.__dict__["env"] = env
        self.__dict__["reference_env"] = reference_env or (env if env.config.mode == "reference" else None)
        self.actor = actor
        # the unguided conditional prediction eps(x_t, t, y) that the eps-MSE terms regress (shares the U-Net)
        self.__dict__["regression_actor"] = actor if actor.guidance_scale <= 1 else UNetActor(actor.unet, guidance_scale=1.0)
        self.text_encoder = text_encoder

    # ------------------------------------------------------------ parameters
    def actor_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the actor (U-Net or its LoRA weights) and of the text encoder, without duplicates."""
        modules = [self.actor] + ([self.text_encoder] if self.text_encoder is not None else [])
        unique = {id(p): p for module in modules for p in module.parameters() if p.requires_grad}
        return list(unique.values())

    def critic_parameters(self) -> list[nn.Parameter]:
        """Trainable critic parameters (empty for critic-free losses)."""
        return []

    # ----------------------------------------------------------------- batch
    def check_batch(self, batch: TensorDictBase, keys: Sequence[str] = INSTANCE_KEYS) -> None:
        """Raise a clear error when the batch misses one of ``keys`` or has the wrong batch size."""
        missing = [key for key in keys if key not in batch.keys()]
        if missing:
            raise KeyError(f"{type(self).__name__} needs batch keys {list(keys)}; missing {missing}.")
        expected = tuple((self.reference_env or self.env).batch_size)
        if tuple(batch.batch_size) != expected:
            raise ValueError(f"batch_size {tuple(batch.batch_size)} does not match the environment's {expected}.")

    # -------------------------------------------------- noising, DreamBooth
    def noised_state(self, batch: TensorDictBase) -> TensorDictBase:
        """s_t: the batch's ``"x0"`` noised to a schedule step per sample, with its prompt embeddings.

        The batch's ``"noise"`` ``[B, C, h, w]`` and ``"step"`` ``[B]`` (schedule indices) are used when it carries
        them (the trainer draws them per sample, so that a batch split over processes or accumulation steps sees the
        same draws); otherwise the reference env draws both from its seeded generator."""
        env = self._reference_env()
        given = batch.select(*INSTANCE_KEYS).clone(recurse=False)
        if "noise" in batch.keys() and "step" in batch.keys():
            given["step"] = batch["step"]
            given["latents"] = env.schedule.add_noise(batch["x0"], batch["noise"], env.schedule.timesteps[batch["step"]])
        return env.reset(given, set_state=True)

    def true_noise(self, state: TensorDictBase) -> Tensor:
        """eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t), ``[B, C, h, w]``, the regression target of eps_hat."""
        return true_noise(state["latents"], state["x0"], self._reference_env().schedule.abar(state["timestep"]))

    def eps_mse(self, state: TensorDictBase) -> Tensor:
        """Mean squared error between the state's ``"action"`` (eps_hat) and the true noise (the DreamBooth loss)."""
        return nn.functional.mse_loss(state["action"], self.true_noise(state))

    def prior_mse(self, batch: TensorDictBase) -> Tensor | None:
        """eps-MSE of the actor on the prior-preservation batch ``batch["prior"]``; ``None`` when there is none."""
        if "prior" not in batch.keys():
            return None
        prior = batch["prior"].clone(recurse=False)
        if "negative_prompt_embeds" not in prior.keys():
            prior["negative_prompt_embeds"] = batch["negative_prompt_embeds"]
        state = self.regression_actor(self.noised_state(prior))
        return self.eps_mse(state)

    def add_prior(self, loss_actor: Tensor, batch: TensorDictBase, out: dict[str, Tensor], weight: float) -> Tensor:
        """``loss_actor + weight * prior_mse`` when the batch has a prior batch (logging ``out["prior_mse"]``),
        else ``loss_actor`` unchanged."""
        prior_mse = self.prior_mse(batch)
        if prior_mse is None:
            return loss_actor
        out["prior_mse"] = metric(prior_mse)
        return loss_actor + weight * prior_mse

    def _reference_env(self) -> DenoisingEnv:
        if self.reference_env is None:
            raise ValueError(f"{type(self).__name__} needs a reference-mode env to noise x0: pass `reference_env`.")
        return self.reference_env


def check_weight(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number >= 0."""
    if not (value >= 0 and value != float("inf")):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}.")


def check_reference_env(env: DenoisingEnv, method: str) -> None:
    if env.config.mode != "reference":
        raise ValueError(
            f"{method} trains on noised reference latents: build its env with DenoisingConfig(mode='reference'), "
            f"got mode={env.config.mode!r}."
        )


def check_actor(actor: UNetActor) -> None:
    if not isinstance(actor, UNetActor):
        raise TypeError(f"actor must be a diffrl.agents.UNetActor, got {type(actor).__name__}.")


def check_unguided(actor: UNetActor, method: str) -> None:
    check_actor(actor)
    if actor.guidance_scale > 1:
        raise ValueError(
            f"{method} regresses the conditional noise prediction: use UNetActor(unet, guidance_scale=1.0), "
            f"got guidance_scale={actor.guidance_scale}."
        )


def metric(value: Tensor) -> Tensor:
    """A detached scalar (mean) for logging."""
    return value.detach().float().mean()
