"""The critic probe benchmark at tiny size: it trains, scores both critics on held-out states and leaves them as
they were."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from script_loading import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "critic_probe.py"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def probe_module():
    module = load_script(SCRIPT)
    yield module
    sys.modules.pop(module.__name__, None)


def test_tiny_probe_scores_the_trained_and_the_target_critic(probe_module, tmp_path: Path) -> None:
    config = probe_module.parse_args(["--tiny", "--steps", "2", "--heldout-states", "8", "--subject", "fancy_boot",
                                      "--threads", "1", "--json", str(tmp_path / "probe.json"),
                                      "--set", "critic_states=4", "--set", "critic_batch_size=4"])
    result = probe_module.run(config)
    assert {"grad_cosine", "r2", "pair_r2", "bands", "target", "passed"} <= set(result)
    assert any({"target_std", "rmse", "pair_std", "pair_r2"} <= set(band) for band in result["bands"].values())
    assert {"grad_cosine", "r2", "bands"} <= set(result["target"])
    assert (tmp_path / "probe.json").is_file()


def test_swapped_restores_the_parameters(probe_module) -> None:
    from tensordict import TensorDict

    params = TensorDict({"w": torch.zeros(3)}, batch_size=[])
    other = TensorDict({"w": torch.ones(3)}, batch_size=[])
    with probe_module.swapped(params, other):
        assert torch.equal(params["w"], torch.ones(3))
    assert torch.equal(params["w"], torch.zeros(3))
