"""Does the critic of `DPGLoss` carry signal? Held-out R^2 per timestep band, action-gradient alignment with a
differentiable reward, and the size of the critic's pull on the U-Net against the eps-MSE's.

Every function draws its states from a generator passed in, never from the loss's or the envs' own streams: running
a diagnosis does not change the training run it observes.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import Tensor

from diffrl.objectives.dpg import DPGLoss, r_squared
from diffrl.objectives.weighting import actor_weight
from diffrl.rewards import RewardInputs


def band_r2(loss: DPGLoss, group: TensorDictBase) -> dict[int, float]:
    """R^2 of Q against the TD targets of the current target networks on collected transitions ``group`` (from
    `CriticTransitionCollector.collect`, not trained on), within each timestep band of the critic (`QCritic.band`): the ``"r2"`` of
    `band_fit`."""
    return {band: fit["r2"] for band, fit in band_fit(loss, group).items()}


def band_fit(loss: DPGLoss, group: TensorDictBase) -> dict[int, dict[str, float]]:
    """Per timestep band of the critic, on collected transitions ``group`` ``[N]`` with K + 1 actions each (not
    trained on): ``"r2"`` (see `band_r2`; a band's R^2 is the same in reward and in band-normalised units) and, for
    bands with at least 2 states, in reward units, ``"target_std"`` (spread of the TD targets y), ``"rmse"`` (of
    Q - y), ``"pair_std"`` (spread of y_k - y_0, what the action changes) and ``"pair_r2"`` (R^2 of Q(s, b_k) -
    Q(s, b_0) against y_k - y_0: how well the critic ranks the actions of one state, the part the actor reads);
    ``"regression_r2"``: R^2 of the critic network against its own regression target (the TD target for
    ``critic_form="q"``, the reward for ``"reward_value"``, whose Q adds the value of the next state)."""
    n, k1 = group["action"].shape[:2]
    rows = loss.rows(group)
    with torch.no_grad():  # one critic forward and one TD target for all four
        prediction, regressed, fitted = loss.critic_fit(rows, update_statistics=False)
        q, target = loss.q_from_prediction(rows, prediction), loss.q_target(rows, fitted)
    q, target, prediction, regressed = (value.view(n, k1) for value in (q, target, prediction, regressed))
    bands = loss.critic.band(group["timestep"])
    out = {}
    for band in bands.unique().tolist():
        chosen = bands == band  # every state has K + 1 >= 2 transitions: R^2 is defined for one state already
        y, value = target[chosen], q[chosen]
        out[int(band)] = {"r2": float(r_squared(value.flatten(), y.flatten())),
                          "regression_r2": float(r_squared(prediction[chosen].flatten(), regressed[chosen].flatten()))}
        if chosen.sum() < 2:
            continue
        dy, dq = (y[:, 1:] - y[:, :1]).flatten(), (value[:, 1:] - value[:, :1]).flatten()
        out[int(band)].update(target_std=float(y.std()), rmse=float((value - y).pow(2).mean().sqrt()),
                              pair_std=float(dy.std()), pair_r2=float(r_squared(dq, dy)))
    return out


def action_gradients(loss: DPGLoss, state: TensorDictBase) -> tuple[Tensor, Tensor]:
    """d Q(s, a) / d a and d r(s, a) / d a at the policy's action a = mu(s), each ``[M, C, h, w]``.

    ``state`` holds noised states with ``"action"`` (e.g. `CriticTransitionCollector.noised_states`); the env's reward must be
    differentiable."""
    reward = loss.env.reward_fn
    if not getattr(reward, "differentiable", False):
        raise ValueError(f"The reward {type(reward).__name__} is not differentiable: there is no d r / d a to compare.")
    state = state.detach()
    action = state["action"].clone().requires_grad_(True)
    q = loss.q_value(state, action)
    (grad_q,) = torch.autograd.grad(q.sum(), action)
    action = state["action"].clone().requires_grad_(True)
    timestep = state["timestep"]
    inputs = RewardInputs(
        latents=state["latents"], timesteps=timestep, action=action, alphas_cumprod=loss.env.schedule.abar(timestep),
        x0=state["x0"], prompts=loss.env.prompts, decode=loss.env.decode,
    )
    (grad_r,) = torch.autograd.grad(reward(inputs).sum(), action)
    return grad_q, grad_r


def reward_model_gradient(loss: DPGLoss, state: TensorDictBase) -> Tensor:
    """d R(s, a) / d a at a = mu(s) ``[M, C, h, w]``: the critic network alone, without the value of the next state
    that ``critic_form="reward_value"`` adds to Q (for the default form, how much of Q's action gradient is R's)."""
    action = state["action"].detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss._network("critic", loss.critic_params.detach(), state.detach(), action).sum(), action)
    return grad


def gradient_cosine(loss: DPGLoss, state: TensorDictBase) -> Tensor:
    """cos(d Q / d a, d r / d a) per state ``[M]`` at a = mu(s) (see `action_gradients`)."""
    grad_q, grad_r = action_gradients(loss, state)
    return torch.nn.functional.cosine_similarity(grad_q.flatten(1), grad_r.flatten(1), dim=1)


def actor_gradient_ratio(loss: DPGLoss, state: TensorDictBase) -> float:
    """||d (lam * mean w(t) Q(s, mu(s))) / d theta|| / ||d eps-MSE / d theta|| over the actor's parameters theta,
    with the configured lambda (not the warm-up's): how hard the critic pulls on the U-Net against DreamBooth's term.
    ``state``: noised states with ``"x0"`` (their ``"action"`` is recomputed with gradients)."""
    params = loss.actor_parameters()
    state = loss.actor(state.exclude("action").detach())
    action, timestep = state["action"], state["timestep"]
    weight = actor_weight(loss.config.actor_weighting, timestep, loss.env.schedule.abar(timestep).to(action),
                          loss.config.gamma)
    q_term = loss.config.lam * (weight * loss.actor_q(state, action)).mean()
    grads_q = torch.autograd.grad(q_term, params, retain_graph=True, allow_unused=True)
    grads_mse = torch.autograd.grad(loss.eps_mse(state), params, allow_unused=True)

    def norm(grads: tuple[Tensor | None, ...]) -> Tensor:
        return torch.sqrt(sum(g.pow(2).sum() for g in grads if g is not None))

    return float(norm(grads_q) / norm(grads_mse))


def diagnose(loss: DPGLoss, batch: TensorDictBase, generator: torch.Generator) -> dict[str, float]:
    """The diagnostics of one batch, for logging: ``"critic_r2_heldout"`` (mean over bands of `band_r2` on freshly
    collected transitions), ``"grad_cosine"`` (mean of `gradient_cosine`, differentiable rewards only) and
    ``"actor_grad_ratio"`` (`actor_gradient_ratio`). States and exploration noise come from ``generator``."""
    state = loss.transitions.noised_states(batch, generator)
    scores = band_r2(loss, loss.transitions.collect(state, generator))
    out = {"critic_r2_heldout": sum(scores.values()) / max(len(scores), 1)}
    if getattr(loss.env.reward_fn, "differentiable", False):
        out["grad_cosine"] = float(gradient_cosine(loss, state).mean())
    out["actor_grad_ratio"] = actor_gradient_ratio(loss, state)
    return out
