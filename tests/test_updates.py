"""`LossUpdater`: the optimizer update both trainers share (per-role clipping, non-finite policy, critic-only updates)."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from tensordict import TensorDict
from torch import nn

from diffrl.training.updates import LossUpdater, NonFiniteLossError


class ToyLoss(nn.Module):
    """loss_actor = scale * sum(actor * x), loss_critic = sum(critic^2); ``auxiliary_updates`` critic-only updates on
    the batches of a fake transition collector, counting the target updates."""

    def __init__(self, auxiliary_updates: int = 0) -> None:
        super().__init__()
        self.actor = nn.Parameter(torch.ones(4))
        self.critic = nn.Parameter(torch.ones(3))
        self.auxiliary_updates = auxiliary_updates
        self.target_steps = 0
        self.__dict__["target_updater"] = self  # `step()` below (not a submodule)
        self.samples = 0
        self.__dict__["transitions"] = self if auxiliary_updates else None

    def step(self) -> None:
        self.target_steps += 1

    def sample(self) -> TensorDict:
        self.samples += 1
        return TensorDict(weight=torch.tensor(2.0), batch_size=[])

    def loss_input(self, batch: TensorDict) -> TensorDict:
        return batch

    def actor_parameters(self) -> list[nn.Parameter]:
        return [self.actor]

    def critic_parameters(self) -> list[nn.Parameter]:
        return [self.critic]

    def forward(self, td: TensorDict) -> TensorDict:
        return TensorDict(loss_actor=td["scale"] * (self.actor * td["x"]).sum(), loss_critic=self.critic.pow(2).sum(),
                          batch_size=[])

    def auxiliary_loss(self, replay: TensorDict) -> TensorDict:
        return TensorDict(loss_critic=replay["weight"] * self.critic.pow(2).sum(), batch_size=[])


def batch(scale: float = 1.0) -> TensorDict:
    return TensorDict(x=torch.full((4,), 3.0), scale=torch.tensor(scale), batch_size=[])


def test_update_clips_each_role_to_its_own_norm_and_moves_both():
    loss = ToyLoss()
    updater = LossUpdater(Accelerator(cpu=True), loss, {"actor": 0.1, "critic": 0.1}, {"actor": 1.0, "critic": None})
    logs = updater.update([batch()], "step 1")
    assert logs["grad_norm_actor"] == pytest.approx(6.0)  # |d sum(3 a) / d a| = 3 x sqrt(4), before clipping
    assert "grad_norm_critic" not in logs and "skipped" not in logs
    assert logs["loss_actor"] == pytest.approx(12.0)
    assert (loss.actor < 1).all() and (loss.critic < 1).all()
    assert loss.target_steps == 1 and updater.scheduler.last_epoch == 1


def test_a_nonfinite_loss_raises_with_the_label_or_skips_the_whole_update():
    loss = ToyLoss()
    updater = LossUpdater(Accelerator(cpu=True), loss, {"actor": 0.1, "critic": 0.1}, {}, fix_hint="Do X.")
    with pytest.raises(NonFiniteLossError, match=r"at step 7: loss_actor=nan, loss_critic=3.0. Do X."):
        updater.update([batch(float("nan"))], "step 7")
    skipping = LossUpdater(Accelerator(cpu=True), loss, {"actor": 0.1, "critic": 0.1}, {}, nonfinite="skip")
    before = [p.detach().clone() for p in loss.parameters()]
    with pytest.warns(RuntimeWarning, match="Non-finite loss at step 2"):
        logs = skipping.update([batch(), batch(float("inf"))], "step 2")  # one bad micro-batch drops the update
    assert logs["skipped"] == 1.0 and loss.target_steps == 0
    assert all(torch.equal(p, q) for p, q in zip(loss.parameters(), before, strict=True))
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        LossUpdater(Accelerator(cpu=True), loss, {"actor": 0.1, "critic": 0.1}, {}, nonfinite="ignore")


def test_critic_only_updates_read_replay_samples_and_leave_the_actor():
    loss = ToyLoss(auxiliary_updates=3)
    updater = LossUpdater(Accelerator(cpu=True), loss, {"actor": 0.1, "critic": 0.1}, {"critic": 10.0})
    updater.update([batch()], "step 1")
    actor_after_update = loss.actor.detach().clone()
    assert loss.samples == 3 and loss.target_steps == 4  # the update's target step and one per critic-only update
    critic = loss.critic.detach().clone()
    updater._critic_only_update("step 1")
    assert torch.equal(loss.actor, actor_after_update) and (loss.critic < critic).all()
