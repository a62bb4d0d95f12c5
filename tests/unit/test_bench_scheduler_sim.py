"""The scheduler simulation (benchmarks/scheduler_sim.py): pure, milliseconds to seconds."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import scheduler_sim as sim


def _workload(costs, speeds):
    return sim.Workload(cost=np.asarray(costs, float), speed=np.asarray(speeds, float))


def test_draw_workload_spans_exactly_the_requested_spreads():
    w = sim.draw_workload(16, 8, np.random.default_rng(0), spread=60, speed_ratio=3)
    assert w.cost.max() / w.cost.min() == pytest.approx(60)
    assert w.speed.max() / w.speed.min() == pytest.approx(3)
    same = sim.draw_workload(16, 8, np.random.default_rng(0), speed_ratio=1)
    assert np.all(same.speed == 1.0)


def test_lower_bound_terms_by_hand():
    # 2 workers (speeds 1 and 2), models of cost 4 and 2: t = cost / (p * speed)
    w = _workload([4, 2], [1, 2])
    np.testing.assert_allclose(w.matrix(), [[2, 1], [1, 0.5]])
    lb = sim.lower_bound(w)
    assert lb["total_work_over_p"] == pytest.approx(4.5 / 2)
    assert lb["longest_model"] == pytest.approx(3)
    assert lb["busiest_partition"] == pytest.approx(3)
    assert lb["bound"] == pytest.approx(3)
    assert sim.lower_bound(w, epochs=3)["bound"] == pytest.approx(9)


def test_one_model_runs_its_partitions_back_to_back():
    w = _workload([6], [1, 1, 1])
    res = sim.simulate_dynamic(w, validate=True)
    assert res["completed"] and res["makespan"] == pytest.approx(6)  # 3 sub-epochs of 2, never in parallel
    assert sim.simulate_randomized(w)["makespan"] == pytest.approx(6)


def test_identical_models_and_workers_reach_the_bound():
    w = _workload([4] * 4, [1] * 4)
    assert sim.simulate_dynamic(w, validate=True)["makespan"] == pytest.approx(sim.lower_bound(w)["bound"])


@pytest.mark.parametrize("epochs", [1, 3])
@pytest.mark.parametrize("ratio", [1.0, 3.0])
def test_simulated_schedules_never_beat_the_bound(epochs, ratio):
    for seed in range(3):
        w = sim.draw_workload(12, 4, np.random.default_rng(seed), speed_ratio=ratio)
        lb = sim.lower_bound(w, epochs)["bound"]
        dyn = sim.simulate_dynamic(w, epochs, validate=seed == 0)
        rnd = sim.simulate_randomized(w, epochs, seed=seed)
        assert dyn["completed"]
        assert dyn["makespan"] >= lb * (1 - 1e-9)
        assert rnd["makespan"] >= lb * (1 - 1e-9)
        # every training sub-epoch was assigned once per epoch (train + zero-time eval visits)
        assert dyn["assignments"] == 2 * 12 * 4 * epochs
        assert rnd["decisions"] == 12 * 4 * epochs
        assert 0 < dyn["busy_fraction"] <= 1 + 1e-9


def test_deterministic_mode_is_driven_too():
    w = sim.draw_workload(6, 3, np.random.default_rng(1))
    res = sim.simulate_dynamic(w, 2, mode="deterministic", validate=True)
    assert res["completed"] and res["makespan"] >= sim.lower_bound(w, 2)["bound"] * (1 - 1e-9)


def test_summary_takes_the_worst_workload_and_counts_losses():
    rows = [
        {"dynamic_over_lb": 1.02, "randomized_over_lb_mean": 1.05, "randomized_over_lb_worst": 1.10},
        {"dynamic_over_lb": 1.04, "randomized_over_lb_mean": 1.03, "randomized_over_lb_worst": 1.07},
    ]
    decision = {"dynamic_cpu_ms_per_decision": 0.05, "dynamic_ms_per_decision": 0.07}
    s = sim.summarise(rows, decision)
    assert s["scheduler_makespan_over_lower_bound"] == 1.04
    assert s["randomized_makespan_over_lower_bound"] == 1.10
    assert s["scheduler_never_worse_than_randomized"] is False
    assert s["scheduler_worse_than_randomized_draws"] == 1
    assert s["scheduler_decision_ms"] == 0.05


def test_small_end_to_end_run_and_decision_time():
    rows = sim.run_workloads(seeds=1, randomized_seeds=1, shapes=((8, 4),), speed_ratios=(1.0, 3.0))
    assert len(rows) == 2 and all(r["dynamic_over_lb"] >= 1 - 1e-9 for r in rows)
    d = sim.decision_time(50, 8, max_completions=200, randomized_decisions=50)
    assert d["dynamic_assignments"] >= 200 and d["dynamic_cpu_ms_per_decision"] > 0
    assert "| 8 x 4 |" in sim.markdown(rows, d)
