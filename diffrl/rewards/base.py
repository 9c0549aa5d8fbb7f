"""The reward interface: a module mapping a batch of denoising states and actions to a reward per sample."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from diffrl.forward_process import look_forward

REQUIREMENTS = frozenset({"x0_hat", "x0", "images", "prompts"})


@dataclass
class RewardInputs:
    """What a reward may read, for a batch of B states s_t = (x_t, t, tau(y)) and actions eps_hat.

    ``x0_hat`` and ``images`` are computed on first access and cached, so several rewards share one VAE decode.
    Pass ``x0_hat`` explicitly to score a final sample instead of a look-forward prediction.
    """

    latents: Tensor  # x_t [B, C, h, w]
    timesteps: Tensor  # t [B], int64
    action: Tensor  # eps_hat [B, C, h, w]
    alphas_cumprod: Tensor  # abar_t [B]
    x0: Tensor | None = None  # reference clean latents [B, C, h, w]
    prompts: Sequence[str] | None = None  # B prompts
    decode: Callable[[Tensor], Tensor] | None = None  # latents -> images [B, 3, H, W] in [0, 1]
    x0_hat: Tensor | None = None
    _images: Tensor | None = field(default=None, repr=False)
    _detached: RewardInputs | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.x0_hat is None:
            self.x0_hat = look_forward(self.latents, self.action, self.alphas_cumprod)

    @property
    def batch_size(self) -> int:
        return self.latents.shape[0]

    @property
    def images(self) -> Tensor:
        """decode(x0_hat): ``[B, 3, H, W]`` in ``[0, 1]``."""
        if self._images is None:
            if self.decode is None:
                raise ValueError("This reward needs decoded images, but RewardInputs has no `decode` function.")
            self._images = self.decode(self.x0_hat)
        return self._images

    def detached(self) -> RewardInputs:
        """The same inputs without autograd history (for non-differentiable rewards).

        The view is made once and shared, so several non-differentiable rewards share one decode; inputs with no
        autograd history are their own detached view.
        """
        tensors = (self.latents, self.action, self.x0, self.x0_hat, self._images)
        if not any(t is not None and t.requires_grad for t in tensors):
            return self
        if self._detached is None:
            self._detached = RewardInputs(
                latents=self.latents.detach(),
                timesteps=self.timesteps,
                action=self.action.detach(),
                alphas_cumprod=self.alphas_cumprod,
                x0=None if self.x0 is None else self.x0.detach(),
                prompts=self.prompts,
                decode=self.decode,
                x0_hat=self.x0_hat.detach(),
            )
        if self._detached._images is None and self._images is not None:
            self._detached._images = self._images.detach()
        return self._detached


class Reward(nn.Module):
    """Base class: ``forward(inputs) -> Tensor[B]`` (higher is better).

    Subclasses set ``differentiable`` (``False``: the reward is evaluated without gradients and a critic must supply
    them) and ``requires`` (a subset of ``{"x0_hat", "x0", "images", "prompts"}``).
    Call the module, not ``forward``: ``__call__`` checks requirements and the output.
    """

    differentiable: ClassVar[bool] = True
    requires: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str | None = None) -> None:
        super().__init__()
        self.name = name or type(self).__name__

    def forward(self, inputs: RewardInputs) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # Composition: ``0.5 * dino + lookforward`` is a `WeightedSum`.
    def __mul__(self, weight: float) -> WeightedSum:
        if not _is_weight(weight):
            return NotImplemented
        return WeightedSum([(self, float(weight))])

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> WeightedSum:
        if not _is_weight(divisor):
            return NotImplemented
        return WeightedSum([(self, 1.0 / float(divisor))])

    def __neg__(self) -> WeightedSum:
        return WeightedSum([(self, -1.0)])

    def __add__(self, other: Reward) -> WeightedSum:
        if not isinstance(other, Reward):
            return NotImplemented
        return WeightedSum([(self, 1.0), (other, 1.0)])

    def __radd__(self, other: Reward | int) -> WeightedSum:
        if isinstance(other, int) and not isinstance(other, bool) and other == 0:  # lets `sum(rewards)` work
            return WeightedSum([(self, 1.0)])
        if not isinstance(other, Reward):
            return NotImplemented
        return WeightedSum([(other, 1.0), (self, 1.0)])

    def __sub__(self, other: Reward) -> WeightedSum:
        if not isinstance(other, Reward):
            return NotImplemented
        return WeightedSum([(self, 1.0), (other, -1.0)])

    def __call__(self, inputs: RewardInputs) -> Tensor:
        missing = [need for need in ("x0", "prompts") if need in self.requires and getattr(inputs, need) is None]
        if "images" in self.requires and inputs.decode is None and inputs._images is None:
            missing.append("images (a decode function)")
        if missing:
            raise ValueError(f"Reward '{self.name}' requires {', '.join(missing)}, which the caller did not provide.")
        if self.differentiable:
            reward = super().__call__(inputs)
        else:
            with torch.no_grad():
                reward = super().__call__(inputs.detached())
        return check_reward(reward, inputs.batch_size, self.name)


def check_reward(reward: Tensor, batch_size: int, name: str) -> Tensor:
    """Validate a reward tensor: shape ``[B]``, floating dtype, finite. Raises ``ValueError`` naming the reward."""
    if not isinstance(reward, Tensor):
        raise ValueError(f"Reward '{name}' returned {type(reward).__name__}, expected a torch.Tensor of shape [{batch_size}].")
    if reward.shape != (batch_size,):
        raise ValueError(f"Reward '{name}' returned shape {tuple(reward.shape)}, expected ({batch_size},).")
    if not reward.is_floating_point():
        raise ValueError(f"Reward '{name}' returned dtype {reward.dtype}, expected a floating dtype.")
    if not torch.isfinite(reward).all():
        bad = (~torch.isfinite(reward)).nonzero().flatten().tolist()
        raise ValueError(f"Reward '{name}' returned non-finite values (NaN or inf) at batch indices {bad}.")
    return reward


def _is_weight(value: object) -> bool:
    """A finite real number (not a bool, not a tensor: weights are constants)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


class WeightedSum(Reward):
    """``sum_i w_i * r_i``, built by ``w * reward`` and ``reward + reward``; nested sums are flattened.

    Differentiable iff every term is; requires the union of the terms' requirements. After each call,
    ``last_terms`` maps each term's (unique) name to its unweighted value ``[B]`` (detached), for logging.
    """

    def __init__(self, terms: Sequence[tuple[Reward, float]], name: str = "WeightedSum") -> None:
        super().__init__(name)
        rewards: list[Reward] = []
        self.weights: list[float] = []
        for reward, weight in terms:
            if not isinstance(reward, Reward):
                raise TypeError(f"WeightedSum terms must be Reward modules, got {type(reward).__name__}.")
            if not _is_weight(weight):
                raise TypeError(f"Weight of reward '{reward.name}' must be a finite real number, got {weight!r}.")
            inner = reward.terms() if isinstance(reward, WeightedSum) else [(reward, 1.0)]
            for term, inner_weight in inner:
                rewards.append(term)
                self.weights.append(float(weight) * inner_weight)
        if not rewards:
            raise ValueError("WeightedSum needs at least one term.")
        self.rewards = nn.ModuleList(rewards)
        self.term_names: list[str] = _unique_names([r.name for r in rewards])
        self.last_terms: dict[str, Tensor] = {}

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        return all(r.differentiable for r in self.rewards)

    @property
    def requires(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset().union(*(r.requires for r in self.rewards))

    def terms(self) -> list[tuple[Reward, float]]:
        """The flat list of ``(reward, weight)``."""
        return list(zip(self.rewards, self.weights, strict=True))

    def forward(self, inputs: RewardInputs) -> Tensor:
        values = [reward(inputs) for reward in self.rewards]
        self.last_terms = {name: value.detach() for name, value in zip(self.term_names, values, strict=True)}
        return sum(weight * value for weight, value in zip(self.weights, values, strict=True))

    def extra_repr(self) -> str:
        return " + ".join(f"{w:g} * {n}" for w, n in zip(self.weights, self.term_names, strict=True))


def _unique_names(names: list[str]) -> list[str]:
    """Disambiguate repeated names: ``["a", "a", "b"] -> ["a", "a_2", "b"]``."""
    seen: set[str] = set()
    unique = []
    for name in names:
        candidate, k = name, 1
        while candidate in seen:
            k += 1
            candidate = f"{name}_{k}"
        seen.add(candidate)
        unique.append(candidate)
    return unique
