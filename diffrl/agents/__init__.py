"""Policies (actors) and critics."""

from diffrl.agents.actor import GuidedUNet, UNetActor

__all__ = ["GuidedUNet", "UNetActor"]
