"""Smoke test of benchmarks/paper_table.py on tiny random models: table files, resume, identical reruns."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from script_loading import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_table.py"


@pytest.fixture(scope="module")
def paper_table():
    return load_script(SCRIPT)


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


def test_paired_differences_match_a_hand_computation(paper_table, tmp_path: Path) -> None:
    """Per seed: the method's subject mean minus the reference's on the same seed and subjects; mean, SE, 2-SE test."""
    def scores(value: float) -> dict[str, float]:
        return {m: value for m in paper_table.METRICS} | {"CLIP-T": -value}

    results = {
        "base": {0: {"a": scores(0.4), "b": scores(0.4)}},
        "dreambooth": {0: {"a": scores(0.50), "b": scores(0.70)}, 1: {"a": scores(0.60), "b": scores(0.80)},
                       2: {"a": scores(0.55), "b": scores(0.65)}},
        "dpg_lambda0": {0: {"a": scores(0.52), "b": scores(0.70)}, 1: {"a": scores(0.60), "b": scores(0.84)},
                        2: {"a": scores(0.55), "b": scores(0.65)}},
        # seed 2 lacks subject b (paired on a only), seed 3 has no partner in either reference
        "oracle_dino": {0: {"a": scores(0.56), "b": scores(0.74)}, 1: {"a": scores(0.66), "b": scores(0.86)},
                        2: {"a": scores(0.60)}, 3: {"a": scores(0.9), "b": scores(0.9)}},
    }
    rows = paper_table.summarise(results)
    # oracle - dreambooth per seed: 0.65 - 0.60, 0.76 - 0.70, 0.60 - 0.55
    oracle = rows["oracle_dino"]["paired"]["dreambooth"]["DINO"]
    assert oracle["per_seed"] == pytest.approx({0: 0.05, 1: 0.06, 2: 0.05})
    assert oracle["n"] == 3 and oracle["mean"] == pytest.approx(0.16 / 3)
    assert oracle["se"] == pytest.approx(np.std([0.05, 0.06, 0.05], ddof=1) / np.sqrt(3)) and oracle["beyond_2se"]
    assert rows["oracle_dino"]["paired"]["dreambooth"]["CLIP-T"]["mean"] == pytest.approx(-0.16 / 3)
    # oracle - dpg_lambda0: 0.65 - 0.61, 0.76 - 0.72, 0.60 - 0.55
    vs_control = rows["oracle_dino"]["paired"]["dpg_lambda0"]["DINO"]
    assert vs_control["per_seed"] == pytest.approx({0: 0.04, 1: 0.04, 2: 0.05})
    assert vs_control["se"] == pytest.approx(0.01 / np.sqrt(3) / np.sqrt(3)) and vs_control["beyond_2se"]
    # dpg_lambda0 - dreambooth: 0.01, 0.02, 0.00: mean 0.01 < 2 SE = 2 * 0.01 / sqrt(3)
    control = rows["dpg_lambda0"]["paired"]["dreambooth"]["DINO"]
    assert control["mean"] == pytest.approx(0.01) and control["se"] == pytest.approx(0.01 / np.sqrt(3))
    assert not control["beyond_2se"]
    assert set(rows["dreambooth"]["paired"]) == {"dpg_lambda0"} and "paired" not in rows["base"]
    assert paper_table.paired_stats({0: 0.3})["se"] is None  # one seed: no standard error, never significant

    config = paper_table.PaperTableConfig(out=tmp_path)
    text = paper_table.to_markdown(config, rows, [SimpleNamespace(name="a"), SimpleNamespace(name="b")])
    assert "## Paired differences (mean ± SE over seeds)" in text
    oracle_line = next(line for line in text.splitlines() if line.startswith("| oracle_dino | 3 / 3 |"))
    assert f"+0.0533 ± {oracle['se']:.4f} *" in oracle_line


def trained_config(run: Path) -> dict:
    """The `TrainConfig` a benchmark run trained with, read from its last checkpoint."""
    (meta,) = sorted(run.glob("checkpoints/ckpt-*/meta.json"))[-1:]
    return json.loads(meta.read_text())["config"]


def test_tiny_run_writes_table_and_reruns_identically(paper_table, tmp_path: Path, restore_torch) -> None:
    argv = ["--tiny", "--out", str(tmp_path), "--subjects", "1", "--seeds", "2", "--steps", "1", "--prompts-per-subject",
            "1", "--images-per-prompt", "1", "--eval-steps", "2", "--lam", "0.5", "--actor-weighting", "snr",
            "--methods", "dreambooth", "dpg_lambda0", "oracle_dino", "lookforward_direct"]
    rows = paper_table.run(paper_table.parse_args(argv))
    assert list(rows) == ["base", "dreambooth", "dpg_lambda0", "oracle_dino", "lookforward_direct"]
    assert rows["dreambooth"]["vs_dreambooth"]["DINO"] == 0.0
    first = (tmp_path / "table.json").read_text()
    for method in ("oracle_dino", "lookforward_direct"):
        run = tmp_path / "runs" / method / "guide_dog" / "seed1"
        assert (run / "model" / "model_index.json").is_file()
        assert rows[method]["paired"]["dreambooth"]["DINO"]["n"] == 2 and "dpg_lambda0" in rows[method]["paired"]
    trained = trained_config(tmp_path / "runs" / "oracle_dino" / "guide_dog" / "seed0")
    assert (trained["method"], trained["lam"], trained["actor_weighting"]) == ("direct_reward", 0.5, "snr")
    assert trained_config(tmp_path / "runs" / "dpg_lambda0" / "guide_dog" / "seed0")["lam"] == 0.0
    text = (tmp_path / "table.md").read_text()
    assert "MEANINGLESS" in text and "Paired differences" in text and (tmp_path / "table.png").stat().st_size > 0
    paper_table.run(paper_table.parse_args(argv))  # resumes: every run is read back
    assert (tmp_path / "table.json").read_text() == first
    # the finished runs of parallel processes: the table of the complete seeds, nothing trained or evaluated
    assert paper_table.run(paper_table.parse_args([*argv, "--finished-only"])) == rows
    report = tmp_path / "runs" / "oracle_dino" / "guide_dog" / "seed1" / "eval" / "report.json"
    report.unlink()  # seed 1 unfinished: left out for every method
    partial = paper_table.run(paper_table.parse_args([*argv, "--finished-only"]))
    assert not report.exists() and partial["dpg_lambda0"]["paired"]["dreambooth"]["DINO"]["n"] == 1
    budget = json.loads(first)["budget"]
    assert (budget["steps"], budget["lam"], budget["actor_weighting"]) == (1, 0.5, "snr")
