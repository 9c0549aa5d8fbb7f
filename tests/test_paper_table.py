"""Smoke test of benchmarks/paper_table.py on tiny random models: table files, resume, identical reruns."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_table.py"


@pytest.fixture(scope="module")
def paper_table():
    spec = importlib.util.spec_from_file_location("paper_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["paper_table"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def restore_torch():
    """`run` sets torch's thread count and deterministic mode for the whole process; undo it for other tests."""
    state = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.set_num_threads(state[0])
    torch.use_deterministic_algorithms(state[1], warn_only=state[2])


def test_summarise_means_over_seeds_and_change_vs_dreambooth(paper_table) -> None:
    def scores(value: float) -> dict[str, float]:
        return {m: value for m in paper_table.METRICS}

    results = {
        "dreambooth": {0: {"a": scores(0.5), "b": scores(0.7)}, 1: {"a": scores(0.6), "b": scores(0.8)}},
        "dpg_dino": {0: {"a": scores(0.66)}},
    }
    rows = paper_table.summarise(results)
    assert rows["dreambooth"]["DINO"] == pytest.approx({"mean": 0.65, "std": 0.0707107}, rel=1e-5)
    assert rows["dreambooth"]["runs"] == 4
    assert rows["dpg_dino"]["vs_dreambooth"]["DINO"] == pytest.approx(100 * 0.01 / 0.65)
    assert rows["dpg_dino"]["vs_dreambooth"]["CLIP-T"] == pytest.approx(0.01)


def test_tiny_run_writes_table_and_reruns_identically(paper_table, tmp_path: Path, restore_torch) -> None:
    argv = ["--tiny", "--out", str(tmp_path), "--subjects", "1", "--seeds", "1", "--steps", "1", "--prompts-per-subject",
            "1", "--images-per-prompt", "1", "--eval-steps", "2", "--methods", "dreambooth", "one_step"]
    rows = paper_table.run(paper_table.parse_args(argv))
    assert list(rows) == ["base", "dreambooth", "one_step"]
    assert rows["dreambooth"]["vs_dreambooth"]["DINO"] == 0.0
    first = (tmp_path / "table.json").read_text()
    assert (tmp_path / "runs" / "one_step" / "poodle" / "seed0" / "model" / "model_index.json").is_file()
    assert "MEANINGLESS" in (tmp_path / "table.md").read_text() and (tmp_path / "table.png").stat().st_size > 0
    paper_table.run(paper_table.parse_args(argv))  # resumes: every run is read back
    assert (tmp_path / "table.json").read_text() == first
    assert json.loads(first)["budget"]["steps"] == 1
