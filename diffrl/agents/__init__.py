"""Policies (actors) and critics."""

from diffrl.agents.actor import GuidedUNet, UNetActor
from diffrl.agents.critic import QCritic
from diffrl.agents.lora import add_lora, full_finetune, trainable_parameters

__all__ = ["GuidedUNet", "QCritic", "UNetActor", "add_lora", "full_finetune", "trainable_parameters"]
