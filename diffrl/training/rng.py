"""Capture and restore every random-number generator a training run draws from."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn


def find_generators(root: nn.Module) -> dict[str, torch.Generator]:
    """``torch.Generator`` attributes reachable from `root` by path, through submodules and through modules held as
    plain attributes (a loss's `DenoisingEnv`, used but not owned, and its ``rng``)."""
    found: dict[str, torch.Generator] = {}
    seen: set[int] = set()

    def visit(module: nn.Module, path: str) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        for name, value in [*vars(module).items(), *module._modules.items()]:
            where = f"{path}.{name}" if path else name
            if isinstance(value, torch.Generator):
                found[where] = value
            elif isinstance(value, nn.Module):
                visit(value, where)

    visit(root, "")
    return found


def capture_rng(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Python, NumPy, torch (CPU and CUDA) and the named generators' states, loadable with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "generators": {name: gen.get_state() for name, gen in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Inverse of `capture_rng`; the generator names must match (same configuration)."""
    missing = sorted(set(generators) ^ set(state["generators"]))
    if missing:
        raise ValueError(f"The checkpoint's random generators do not match this run's (differing: {missing}); was the configuration changed?")
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in generators.items():
        gen.set_state(state["generators"][name])
