"""Look-forward reward: how close the one-step prediction x0_hat is to the reference latent x0."""

from __future__ import annotations

from torch import Tensor

from diffrl.rewards.base import Reward, RewardInputs


class LookForwardReward(Reward):
    """``-mean((x0_hat - x0)^2)`` per sample, the mean taken over the ``C*h*w`` latent elements.

    Exact and differentiable. Equivalently ``-(1 - abar_t) / abar_t * mean((eps_hat - eps)^2)`` with
    ``eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)``, so its gradient w.r.t. the action eps_hat is
    ``2 (1 - abar_t) / abar_t * (eps - eps_hat) / (C*h*w)``. Needs ``x0`` (reference mode).
    """

    requires = frozenset({"x0"})

    def forward(self, inputs: RewardInputs) -> Tensor:
        return -(inputs.x0_hat - inputs.x0.to(inputs.x0_hat)).square().flatten(1).mean(1)
