"""DreamBooth: noise-prediction regression on the instance images plus prior preservation (no critic)."""

from __future__ import annotations

from dataclasses import dataclass

from tensordict import TensorDict, TensorDictBase
from torch import nn

from diffrl.agents.actor import UNetActor
from diffrl.envs.denoising import DenoisingEnv
from diffrl.objectives.base import DiffusionLoss, check_reference_env, check_unguided, check_weight, metric


@dataclass
class DreamBoothConfig:
    """Attributes:
    prior_weight: weight of the prior-preservation eps-MSE (used when the batch has ``"prior"``).
    """

    prior_weight: float = 1.0

    def __post_init__(self) -> None:
        check_weight("prior_weight", self.prior_weight)


class DreamBoothLoss(DiffusionLoss):
    """``loss_actor = mse(eps_hat, eps) + prior_weight * mse_prior(eps_hat, eps)``, x_t from the reference env.

    Output keys: ``"loss_actor"``; logged ``"eps_mse"`` and, with a prior batch, ``"prior_mse"``.
    """

    def __init__(
        self,
        env: DenoisingEnv,
        actor: UNetActor,
        config: DreamBoothConfig | None = None,
        *,
        text_encoder: nn.Module | None = None,
    ) -> None:
        check_reference_env(env, "DreamBoothLoss")
        check_unguided(actor, "DreamBoothLoss")
        super().__init__(env, actor, text_encoder=text_encoder)
        self.config = config or DreamBoothConfig()

    def forward(self, batch: TensorDictBase) -> TensorDict:
        self.check_batch(batch)
        state = self.actor(self.noised_state(batch))
        eps_mse = self.eps_mse(state)
        out = {"eps_mse": metric(eps_mse)}
        out["loss_actor"] = self.add_prior(eps_mse, batch, out, self.config.prior_weight)
        return TensorDict(out, batch_size=[])
