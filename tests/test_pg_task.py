"""Smoke test of benchmarks/pg_task.py on the zoo: one quick method, its table, curve, the gain arithmetic and the
resume at unfinished methods."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loading import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pg_task.py"

pytestmark = pytest.mark.usefixtures("one_thread")  # run() sets the torch threads; the fixture restores them


@pytest.fixture(scope="module")
def pg_task():
    return load_script(SCRIPT)


def test_quick_run_writes_a_consistent_table_and_resumes_at_unfinished_methods(pg_task, tmp_path, monkeypatch):
    result = pg_task.run(pg_task.PGTaskConfig(out=tmp_path, methods=["ddpo"], quick=True, threads=1))
    stored = json.loads((tmp_path / "table.json").read_text())
    row, curve = stored["rows"]["ddpo"], stored["runs"]["ddpo"]["curve"]
    assert [point["iteration"] for point in curve] == [0, 1, 2] and row["samples"] == 8
    assert row["relative_gain"] == pytest.approx((curve[-1]["heldout_reward"] - curve[0]["heldout_reward"])
                                                 / abs(curve[0]["heldout_reward"]))
    assert row["passed"] == (row["relative_gain"] >= 0.2 and row["class_accuracy"] >= 0.7)
    assert (tmp_path / "curve.png").stat().st_size > 0 and "| ddpo |" in (tmp_path / "table.md").read_text()
    assert result["rows"] == stored["rows"]
    from PIL import Image

    grid = Image.open(tmp_path / "samples" / "ddpo.png")  # quick: 4 held-out images, base then trained, one row
    assert grid.size == (8 * 65 + 1, 65 + 1)
    with pytest.raises(SystemExit, match="Unknown method"):
        pg_task.run(pg_task.PGTaskConfig(out=tmp_path, methods=["ppo"], quick=True, threads=1))
    with pytest.raises(SystemExit, match="draft: method='draft' backpropagates through the reward, and 'jpeg'"):
        pg_task.run(pg_task.PGTaskConfig(out=tmp_path, quick=True, threads=1), pg_task.trainer_template(reward="jpeg"))

    def untrainable(*args, **kwargs):
        raise AssertionError("a finished method was trained again")

    monkeypatch.setattr(pg_task, "run_method", untrainable)
    assert pg_task.run(pg_task.PGTaskConfig(out=tmp_path, methods=["ddpo"], quick=True, threads=1))["rows"] == result["rows"]
    assert pg_task.run(pg_task.PGTaskConfig(out=tmp_path, finished_only=True, quick=True, threads=1))["rows"] == result["rows"]
    with pytest.raises(SystemExit, match=r"other settings \(trainer.lr\).*another --out"):
        pg_task.run(pg_task.PGTaskConfig(out=tmp_path, quick=True, threads=1),
                    pg_task.trainer_template(lr=1e-4))
    stored_path = tmp_path / "runs" / "ddpo.json"  # written before lora_rank existed: it was made at its default, 0
    old = json.loads(stored_path.read_text())
    del old["setup"]["trainer"]["lora_rank"]
    stored_path.write_text(json.dumps(old))
    assert pg_task.run(pg_task.PGTaskConfig(out=tmp_path, finished_only=True, quick=True, threads=1))["rows"] == result["rows"]
    with pytest.raises(SystemExit, match=r"other settings \(trainer.lora_rank\)"):
        pg_task.run(pg_task.PGTaskConfig(out=tmp_path, finished_only=True, quick=True, threads=1),
                    pg_task.trainer_template(lora_rank=2))
    with pytest.raises(SystemExit, match="no finished method yet"):
        pg_task.run(pg_task.PGTaskConfig(out=tmp_path / "empty", finished_only=True, quick=True, threads=1))


def test_a_row_may_override_a_shared_setting(pg_task, tmp_path):
    """``ddpo_lr7e-6`` sets its own lr; ``--lr`` stays a flag for the other rows and both share one folder."""
    assert "lr" not in pg_task.PER_RUN and "method" in pg_task.PER_RUN
    _, trainer = pg_task.parse_args(["--lr", "2e-5", "--out", str(tmp_path)])
    assert trainer.lr == 2e-5
    result = pg_task.run(pg_task.PGTaskConfig(out=tmp_path, methods=["ddpo", "ddpo_lr7e-6"], quick=True, threads=1))
    rows, runs = result["rows"], result["runs"]
    assert rows["ddpo"]["lr"] == pg_task.TRAINER_DEFAULTS["lr"] and rows["ddpo_lr7e-6"]["lr"] == 7e-6
    fixed, tuned = runs["ddpo"]["curve"], runs["ddpo_lr7e-6"]["curve"]
    assert fixed[0] == tuned[0] and fixed[-1]["heldout_reward"] != tuned[-1]["heldout_reward"]  # same start, lr used
    assert "| ddpo_lr7e-6 | 7e-06 |" in (tmp_path / "table.md").read_text()
