"""Smoke run of benchmarks.accuracy_seeds on digits: 2 seeds, 2 configurations, 2 epochs.

Values, not timings: task parallelism runs sequential's training code with the same seeds, so
its gap is exactly 0 on every seed; a seed changes the split, so sequential's accuracies differ
between the seeds; each system's curves have one value per epoch and configuration."""

from __future__ import annotations

import json

from benchmarks import accuracy_seeds as acs


def test_accuracy_seeds_pairs_the_systems_by_seed(tmp_path):
    report = acs.run_seeds(2, epochs=2, short=1, workers=2, systems=["sequential", "task-parallel", "mop"],
                           out_dir=tmp_path, max_configs=2, timeout=600)
    assert not report["errors"] and not report["unavailable"], report
    assert report["seeds"] == [2020, 2021]
    for system in ("sequential", "task-parallel", "mop"):
        curves = report["curves"][system]
        assert set(curves) == {"2020", "2021"}
        assert all(len(c) == 2 and len(c["lr=0.001 w=128 b=32"]) == 2
                   for c in curves.values())
    seq = report["curves"]["sequential"]
    assert seq["2020"] != seq["2021"]  # another split, another initialisation
    for budget in ("1", "2"):
        tp = report["budgets"][budget]["contrasts"]["task-parallel"]
        assert tp["best"]["mean"] == 0 and tp["mean"]["high"] == 0, tp
        mop = report["budgets"][budget]["contrasts"]["mop"]
        assert mop["best"]["n"] == 2 and mop["best"]["low"] <= mop["best"]["mean"] <= mop["best"]["high"]
        assert -20 < mop["mean"]["mean"] < 20
    saved = json.loads((tmp_path / "accuracy_seeds.json").read_text())
    assert saved["budgets"]["2"]["contrasts"]["mop"]["per_seed"].keys() == {"2020", "2021"}
    assert (tmp_path / "accuracy_seeds.png").stat().st_size > 10_000
    assert "| mop |" in acs.markdown(report)
