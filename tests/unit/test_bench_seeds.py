"""The statistics of benchmarks/accuracy_seeds.py (the accuracy gap over seeds): pure."""

from __future__ import annotations

import math

import pytest

from benchmarks import accuracy_seeds as acs
from benchmarks import run


def test_interval_is_the_student_t_interval_of_the_mean():
    s = acs.interval([1, 2, 3, 4, 5])
    assert s["n"] == 5 and s["mean"] == 3
    assert s["sd"] == pytest.approx(math.sqrt(2.5))
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, 4)
    assert (s["low"], s["high"]) == (pytest.approx(3 - half), pytest.approx(3 + half))


def test_interval_of_one_or_no_value_has_no_bounds_and_nones_are_dropped():
    assert acs.interval([None, 2.0]) == {"n": 1, "mean": 2.0, "sd": None, "low": None, "high": None}
    assert acs.interval([])["mean"] is None
    same = acs.interval([0.5, 0.5, 0.5])
    assert same["low"] == same["high"] == 0.5


def test_gaps_best_over_best_and_paired_per_configuration():
    a = {"c1": 0.90, "c2": 0.80}
    b = {"c1": 0.85, "c2": 0.95}
    g = acs.gaps(a, b)
    assert g["best"] == pytest.approx(100 * (0.90 - 0.95))
    assert g["mean"] == pytest.approx(100 * ((0.90 - 0.85) + (0.80 - 0.95)) / 2)
    assert acs.gaps({}, b) == {"best": None, "mean": None}


def test_accuracy_at_reads_the_epoch_and_leaves_out_short_curves():
    assert acs.accuracy_at({"a": [0.1, 0.2, 0.3], "b": [0.5]}, 2) == {"a": 0.2}


def _curves(offset):
    # 3 seeds x 2 configurations x 4 epochs; ``offset`` added at every epoch.
    return {seed: {f"c{k}": [0.5 + 0.1 * e + 0.01 * k + 0.001 * seed + offset for e in range(4)] for k in range(2)}
            for seed in (1, 2, 3)}


def test_summarise_pairs_by_seed_and_reads_both_budgets():
    curves = {"sequential": _curves(0.0), "mop": _curves(-0.01), "sequential-lean": _curves(0.0),
              "mop-1-partition": _curves(-0.004)}
    out = acs.summarise(curves, [2, 4])
    assert set(out["budgets"]) == {"2", "4"}
    for budget in ("2", "4"):
        c = out["budgets"][budget]["contrasts"]
        assert c["mop"]["best"]["mean"] == pytest.approx(-1.0)
        assert c["mop"]["mean"]["low"] == pytest.approx(-1.0)  # the same gap on every seed: no spread
        assert c["mop"]["seeds"] == [1, 2, 3]
        assert c["engine (mop-1-partition - sequential-lean)"]["best"]["mean"] == pytest.approx(-0.4)
        assert c["partitioning (mop - mop-1-partition)"]["best"]["mean"] == pytest.approx(-0.6)
        assert "task-parallel" not in c  # not run: not made up
    seq = out["budgets"]["2"]["systems"]["sequential"]["best"]["mean"]
    assert seq == pytest.approx(100 * (0.5 + 0.1 + 0.01 + 0.002))


def test_headline_and_markdown_name_every_contrast_that_ran():
    curves = {"sequential": _curves(0.0), "mop": _curves(0.02)}
    rep = {"seeds": [1, 2, 3], "workers": 2, "systems": {"sequential": {}, "mop": {}}, "errors": {},
           "unavailable": {"model-averaging": "torch is not installed"}, **acs.summarise(curves, [2, 4])}
    head = acs.headline(rep)
    assert head["mop_gap_4ep"]["mean"] == pytest.approx(2.0) and head["mop_gap_2ep_per_config"]["n"] == 3
    assert not any(k.startswith("task_parallel") for k in head)
    table = acs.markdown(rep)
    assert "| mop | +2.00 [+2.00, +2.00]" in table
    assert "| task-parallel | not run | not run |" in table
    assert "| model-averaging | torch is not installed |" in table


def test_run_seeds_refuses_bad_arguments_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="systems: unknown"):
        acs.run_seeds(2, 4, 2, systems=["mop", "horovod"], out_dir=tmp_path)
    with pytest.raises(ValueError, match="short"):
        acs.run_seeds(2, 4, 5, systems=["mop"], out_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_the_runner_says_why_the_seeds_did_not_run_and_refuses_one_seed(capsys):
    assert "not_run" in run.seeds_all({"seeds": 0}, 2, None)["summary"]
    with pytest.raises(SystemExit):
        run.main(["--quick", "--seeds", "1"])
    assert "--seeds" in capsys.readouterr().err
