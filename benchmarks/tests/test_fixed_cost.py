"""benchmarks.fixed_cost: the fixed cost of a one-batch visit, measured in real workers.

No timing thresholds (speed targets never go in tests): the figures must be positive floats,
every visit must have seen at most one batch of rows, and the first epoch (tracing) must be
left out.  The arithmetic is checked on hand-made visits; the command runs once per framework
on its tiny generated data (2 workers x 32 training + 32 validation rows, 3 epochs).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import fixed_cost

ROOT = Path(__file__).resolve().parents[2]


def _frames(rows=32, epochs=3):
    """One model on 2 workers, as the dynamic scheduler runs it: per epoch, train on worker 1
    (where it was evaluated last: cached), train on worker 0 (a hop), evaluate on worker 0
    (cached), evaluate on worker 1 (a hop).  Compute 6 ms train / 4 ms eval (100x in the first
    epoch: tracing), save 8 ms, load 1 ms from the cache and 9 ms after a hop."""
    train, evals, t = [], [], 0.0
    for epoch in range(1, epochs + 1):
        slow = 100.0 if epoch == 1 else 1.0
        for kind, w, hop in (("train", 1, False), ("train", 0, True), ("eval", 0, False), ("eval", 1, True)):
            hop = hop and not (epoch == 1 and kind == "train" and w == 1)
            (train if kind == "train" else evals).append({
                "model_id": "m", "epoch": epoch, "partition": w, "worker": w, "rows": rows, "status": "ok",
                "start": t, "end": t + 0.02, "load_s": 0.009 if hop else 0.001,
                "compute_s": slow * (0.006 if kind == "train" else 0.004), "save_s": 0.008 if kind == "train" else 0.0})
            t += 0.03
    return pd.DataFrame(train), pd.DataFrame(evals)


def test_figures_leave_out_the_first_epoch_and_split_the_hop():
    visits, evaluations = _frames()
    fig = fixed_cost.figures_from_visits(visits, evaluations, batch_size=32)
    assert fig["epochs_used"] == [2, 3]
    assert fig["train"]["visits"] == 4 and fig["eval"]["visits"] == 4
    assert fig["sub_epoch_fixed_cost_ms"] == pytest.approx(6.0 + 4.0)     # not the 100x of epoch 1
    assert fig["train"]["save_ms"] == pytest.approx(8.0) and fig["eval"]["save_ms"] is None
    assert fig["load_moved_ms"] == pytest.approx(9.0) and fig["load_cached_ms"] == pytest.approx(1.0)
    assert fig["hops"] == 4
    assert fig["visit_fixed_cost_ms"] == pytest.approx((6 + 8 + 5) + (4 + 5))  # medians of 15,23 and 5,13
    assert fig["first_epoch"]["train_compute_ms"] == pytest.approx(600.0)
    assert fig["train"]["max_rows"] == 32 == fig["eval"]["max_rows"]


def test_a_visit_of_more_than_one_batch_is_refused():
    visits, evaluations = _frames(rows=33)
    with pytest.raises(ValueError, match="more than one batch"):
        fixed_cost.figures_from_visits(visits, evaluations, batch_size=32)
    visits, evaluations = _frames(epochs=1)
    with pytest.raises(ValueError, match=">= 2 epochs"):
        fixed_cost.figures_from_visits(visits, evaluations, batch_size=32)


@pytest.mark.slow
@pytest.mark.parametrize("framework", fixed_cost.FRAMEWORKS)
def test_fixed_cost_command_reports_positive_figures_of_one_batch_visits(framework, tmp_path):
    if framework == "torch" and importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (python -m benchmarks.setup_baselines)")
    out = tmp_path / "fixed.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.fixed_cost", "--framework", framework, "--epochs", "3",
                           "--workers", "2", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "sub_epoch_fixed_cost_ms" in proc.stdout
    fig = json.loads(out.read_text())
    assert fig["framework"] == framework and fig["workers"] == 2 and fig["epochs"] == 3
    for key in ("sub_epoch_fixed_cost_ms", "visit_fixed_cost_ms", "visit_wall_ms", "load_moved_ms"):
        assert isinstance(fig[key], float) and math.isfinite(fig[key]) and fig[key] > 0, (key, fig[key])
    for kind in ("train", "eval"):
        part = fig[kind]
        assert part["visits"] == 2 * 2                                  # 2 partitions x epochs 2 and 3
        assert all(isinstance(part[k], float) and part[k] > 0 for k in ("compute_ms", "visit_ms", "wall_ms"))
        assert 0 < part["max_rows"] <= fig["batch_size"]                 # every visit saw <= one batch
    assert fig["epochs_used"] == [2, 3]
    assert fig["visit_fixed_cost_ms"] >= fig["sub_epoch_fixed_cost_ms"]
