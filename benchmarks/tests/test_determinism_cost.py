"""benchmarks.determinism_cost: busy fraction under the dynamic and the deterministic scheduler.

No timing assertions (speed targets never go in tests): the run order and the per-search
figures are checked on hand-made runs; the command runs once on a tiny budget (two searches,
one repeat, the 1-model warm-up) and must write a JSON report with every key and busy
fractions in (0, 1].
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import determinism_cost

ROOT = Path(__file__).resolve().parents[2]


def test_runs_are_interleaved_and_the_first_scheduler_alternates():
    order = determinism_cost.run_order(["tpe", "asha"], 2)
    assert order == [(1, "tpe", "dynamic"), (1, "tpe", "deterministic"), (1, "asha", "dynamic"),
                     (1, "asha", "deterministic"), (2, "tpe", "deterministic"), (2, "tpe", "dynamic"),
                     (2, "asha", "deterministic"), (2, "asha", "dynamic")]


def _run(sched, repeat, busy, wall, digest):
    return {"search": "asha", "scheduler": sched, "repeat": repeat, "busy_fraction": busy, "wall_s": wall,
            "span_s": wall, "models": 6, "model_epochs": 17, "best_val_accuracy": 0.9, "history_sha256": digest}


def test_aggregate_takes_medians_and_checks_that_deterministic_repeats_agree():
    runs = [_run("dynamic", 1, 0.80, 10.0, "a"), _run("deterministic", 1, 0.70, 12.0, "d"),
            _run("dynamic", 2, 0.90, 11.0, "b"), _run("deterministic", 2, 0.74, 13.0, "d"),
            _run("dynamic", 3, 0.85, 12.0, "c"), _run("deterministic", 3, 0.72, 14.0, "d")]
    row = determinism_cost.aggregate("asha", "6 configs", runs)
    assert row["dynamic"]["busy_fraction"] == pytest.approx(0.85)
    assert row["deterministic"]["busy_fraction"] == pytest.approx(0.72)
    assert row["deterministic"]["busy_fraction_spread"] == [0.70, 0.74]
    assert row["busy_difference_points"] == pytest.approx(-13.0)
    assert row["within_goal"] is False
    assert row["busy_difference_points_paired"] == pytest.approx([-10.0, -16.0, -13.0])
    assert row["wall_ratio_det_dyn"] == pytest.approx(13.0 / 11.0, abs=1e-3)
    assert row["deterministic_identical"] is True and row["dynamic_identical"] is False
    runs[-1]["history_sha256"] = "e"
    assert determinism_cost.aggregate("asha", "", runs)["deterministic_identical"] is False
    assert determinism_cost.aggregate("asha", "", runs[:2])["deterministic_identical"] is None


@pytest.mark.slow
def test_determinism_cost_command_reports_busy_fractions(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.determinism_cost", "--only", "tpe,asha", "--budget", "4",
                           "--repeats", "1", "--warmup", "one", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    report = json.loads((tmp_path / "determinism_cost.json").read_text())
    assert (tmp_path / "determinism_cost.md").read_text().count("\n| ") == 3   # header + 2 searches
    for key in ("command", "seed", "repeats", "budget_model_epochs", "workers", "order", "results", "runs"):
        assert key in report, key
    assert report["repeats"] == 1 and report["seed"] == 2020
    assert [r["search"] for r in report["results"]] == ["tpe", "asha"]
    assert len(report["runs"]) == 4 and not any("error" in r for r in report["runs"])
    for run in report["runs"]:
        assert 0 < run["busy_fraction"] <= 1, run
        assert run["model_epochs"] >= 1 and run["models"] >= 1 and run["wall_s"] > 0
    for row in report["results"]:
        for sched in ("dynamic", "deterministic"):
            assert 0 < row[sched]["busy_fraction"] <= 1, row
            lo, hi = row[sched]["busy_fraction_spread"]
            assert lo <= row[sched]["busy_fraction"] <= hi
        for key in ("busy_difference_points", "wall_ratio_det_dyn", "deterministic_identical", "within_goal"):
            assert key in row, key
        assert row["deterministic_identical"] is None   # one repeat: nothing to compare
