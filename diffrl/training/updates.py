"""One optimizer update of a loss module: the engine that `Trainer` (personalisation) and `PolicyGradientTrainer`
(a reward over prompts) share, so that both step their losses the same way.

`LossUpdater.update` takes the micro-batches of one optimizer step (TensorDicts from a collector) and

1. runs forward and backward of each under `Accelerator.accumulate` (DDP averages the gradients over processes on
   the last micro-batch; ``backward`` divides every loss by the accumulation steps);
2. checks every ``loss_*`` term: a non-finite one raises `NonFiniteLossError` (``nonfinite="raise"``) or drops the
   whole step with a warning (``"skip"``);
3. clips the gradients of each role (``"actor"``, ``"critic"``) to its own max norm, after one fp16 unscale;
4. steps the optimizer (one AdamW, one parameter group per role, each with its own learning rate), the
   learning-rate warm-up and the moving average of the actor (EMA, optional); an fp16 overflow skips all three;
5. updates the loss's target critic (``target_updater``) and runs its critic-only updates (``auxiliary_updates`` x
   ``auxiliary_loss`` on a replay sample of the loss's transition collector, ``loss.transitions.sample()``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping

import torch
from accelerate import Accelerator
from tensordict import TensorDict
from torch import Tensor, nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR

from diffrl.training.acceleration import mean_over_processes

ROLES = ("actor", "critic")
"""The parameter roles of a loss module: ``loss.actor_parameters()`` and ``loss.critic_parameters()``."""

NONFINITE = ("raise", "skip")


def average_logs(logs: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each key over the records that have it (keys in order of first appearance)."""
    return {key: sum(record[key] for record in logs if key in record) / sum(key in record for record in logs)
            for key in dict.fromkeys(key for record in logs for key in record)}


class NonFiniteLossError(FloatingPointError):
    """A loss term was NaN or inf (``nonfinite="raise"``); the message names the step and the terms."""


class CriticUpdate(nn.Module):
    """A loss's critic-only update (``auxiliary_loss``) as a module whose parameters are the critic's alone, so that
    `Accelerator.prepare` can wrap it in DDP: its backward averages the critic's gradients and no others."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.critic = nn.ParameterList(loss.critic_parameters())
        self.__dict__["loss"] = loss  # not a submodule: DDP must see the critic's parameters only

    def forward(self, replay: TensorDict) -> TensorDict:
        return self.loss.auxiliary_loss(replay)


class LossUpdater:
    """The optimizer, schedule, EMA and update step of one loss module (see the module docstring).

    Args:
        accelerator: the run's `Accelerator` (its ``gradient_accumulation_steps`` is the number of micro-batches an
            update expects).
        loss: a loss module with ``actor_parameters()`` and ``critic_parameters()``; its ``forward(td)`` returns
            ``loss_*`` terms (and any other 0-d scalars, which are logged).
        lrs: AdamW learning rate of each role in `ROLES`.
        clips: max gradient norm of each role (None: no clipping, and no ``grad_norm_<role>`` log).
        warmup_steps: the learning rates ramp linearly over this many updates (1: constant).
        nonfinite: ``"raise"`` or ``"skip"`` (step 2 above).
        ema_decay: keep a moving average of the actor's parameters with this decay (None: no EMA).
        fix_hint: the end of a non-finite error's message: what the user should change.
    """

    def __init__(self, accelerator: Accelerator, loss: nn.Module, lrs: Mapping[str, float],
                 clips: Mapping[str, float | None], *, warmup_steps: int = 1, nonfinite: str = "raise",
                 ema_decay: float | None = None, fix_hint: str = "Lower the learning rate or enable grad_clip.") -> None:
        if nonfinite not in NONFINITE:
            raise ValueError(f"nonfinite must be one of {NONFINITE}, got {nonfinite!r}.")
        self.accelerator, self.loss, self.nonfinite, self.fix_hint = accelerator, loss, nonfinite, fix_hint
        self.clips = {role: clips.get(role) for role in ROLES}
        self.params = {"actor": list(loss.actor_parameters()), "critic": list(loss.critic_parameters())}
        groups = [{"params": params, "lr": lrs[role], "name": role} for role, params in self.params.items() if params]
        optimizer = AdamW(groups)
        warmup = max(warmup_steps, 1)
        self.scheduler = LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
        self.model, self.optimizer = accelerator.prepare(loss, optimizer)  # DDP when distributed
        self.critic_update = accelerator.prepare(CriticUpdate(loss)) if self.params["critic"] else None
        self.transitions = getattr(loss, "transitions", None)  # DPG's critic transitions and replay buffer
        self.ema = None
        if ema_decay is not None:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.params["actor"], decay=ema_decay)

    def loss_input(self, batch: TensorDict) -> TensorDict:
        """What the loss reads for a collected ``batch``: the batch itself, or for a loss with a transition
        collector (DPG) the batch with the critic's freshly collected transitions and a replay sample."""
        return batch if self.transitions is None else self.transitions.loss_input(batch)

    def update(self, micro_batches: Iterable[TensorDict], label: str) -> dict[str, float]:
        """One optimizer update on ``micro_batches`` (collected batches, drawn lazily, one per accumulation step; each
        goes through `loss_input`); ``label`` names the update in errors (e.g. ``"step 3"``). Returns the logs,
        averaged over micro-batches and processes, with ``grad_norm_<role>`` and ``skipped`` = 1.0 when the update was
        dropped."""
        micro_logs, skip = [], False
        for batch in micro_batches:
            with self.accelerator.accumulate(self.model):
                logs, skipped = self._forward_backward(self.loss_input(batch), label)
            micro_logs.append(logs)
            skip = skip or skipped
        logs = average_logs(micro_logs)
        if skip:  # a non-finite micro-batch (nonfinite="skip") drops the whole update
            self.optimizer.zero_grad(set_to_none=True)
            logs["skipped"] = 1.0
            return logs
        logs.update(self._clip(("actor", "critic")))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.accelerator.optimizer_step_was_skipped:  # fp16 overflow: no update, so no schedule or target step
            logs["skipped"] = 1.0
            return logs
        self.scheduler.step()
        if self.ema is not None:
            self.ema.step(self.params["actor"])
        if getattr(self.loss, "target_updater", None) is not None:
            self.loss.target_updater.step()
        for _ in range(getattr(self.loss, "auxiliary_updates", 0)):
            self._critic_only_update(label)
        return logs

    def _forward_backward(self, batch: TensorDict, label: str) -> tuple[dict[str, float], bool]:
        """Forward and backward of one micro-batch; returns its logs and whether it was non-finite and skipped."""
        with self.accelerator.autocast():
            out = self.model(batch)
        terms = {key: value for key, value in out.items() if key.startswith("loss_")}
        if not terms:
            raise RuntimeError(f"The loss module returned no 'loss_*' keys (got {list(out.keys())}).")
        logs = mean_over_processes(self.accelerator, {key: value.detach().float().mean() for key, value in out.items()})
        if not all(math.isfinite(logs[key]) for key in terms) and self._nonfinite(terms, logs, label):
            return logs, True
        self.accelerator.backward(sum(terms.values()))
        return logs, False

    def _clip(self, roles: tuple[str, ...]) -> dict[str, float]:
        """Clip each of ``roles``' gradients to its max norm (after one fp16 unscale); returns the norms before."""
        clipped = [role for role in roles if self.params[role] and self.clips[role] is not None]
        if clipped:
            self.accelerator.unscale_gradients(self.optimizer)
        return {f"grad_norm_{role}": float(torch.nn.utils.clip_grad_norm_(self.params[role], self.clips[role]))
                for role in clipped}

    def _critic_only_update(self, label: str) -> None:
        """One critic-only update (`DPGLoss.auxiliary_loss`): the actor's gradients stay None, so AdamW leaves the
        actor (and its moments) untouched; the learning-rate schedule counts full updates and does not advance."""
        with self.accelerator.autocast():
            loss_critic = self.critic_update(self.transitions.sample())["loss_critic"]
        logs = mean_over_processes(self.accelerator, {"loss_critic": loss_critic.detach().float()})
        if not math.isfinite(logs["loss_critic"]) and self._nonfinite({"loss_critic": loss_critic}, logs, label):
            return
        # one whole update: undo the division by the accumulation steps that `backward` applies to every loss
        self.accelerator.backward(loss_critic * self.accelerator.gradient_accumulation_steps)
        self._clip(("critic",))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not self.accelerator.optimizer_step_was_skipped:  # fp16 overflow: the critic did not move
            self.loss.target_updater.step()

    def _nonfinite(self, terms: dict[str, Tensor], logs: dict[str, float], label: str) -> bool:
        """Raise `NonFiniteLossError`, or warn and report that the update is skipped (True)."""
        listing = ", ".join(f"{key}={logs[key]}" for key in terms)
        message = f"Non-finite loss at {label}: {listing}."
        if self.nonfinite == "raise":
            raise NonFiniteLossError(f"{message} {self.fix_hint}")
        warnings.warn(f"{message} Skipping this optimizer step (nonfinite='skip').", RuntimeWarning, stacklevel=4)
        self.optimizer.zero_grad(set_to_none=True)
        logs["skipped"] = 1.0
        return True
