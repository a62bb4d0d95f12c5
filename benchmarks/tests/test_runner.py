"""The runner's order and its paired-ratio arithmetic (benchmarks/run.py): pure, no engine runs.

- Repeats are interleaved (every system once per repeat) and the order alternates (A B, B A,
  A B, ...), so a linear drift of the machine's speed cancels over each pair of repeats.
- A time ratio of summary.json is the median of the per-repeat ratios (repeat r of one system
  over repeat r of the other), and the ratio of medians when the repeats differ.
"""

from __future__ import annotations

import pytest

from benchmarks import run


def _time_job(span, rows=1000):
    return {"tag": "time", "span_s": span, "epochs": 1, "train_rows": rows, "cpu_s": span, "bytes_stored": 1,
            "bytes_moved": 0, "bytes_moved_how": "computed: x", "configs": []}


def _runs(*spans, repeats=None):
    repeats = range(len(spans)) if repeats is None else repeats
    return [{"repeat": r, "jobs": [_time_job(s)]} for r, s in zip(repeats, spans)]


# ---------------------------------------------------------------------------- paired ratios

def test_paired_ratio_is_the_median_of_the_per_repeat_ratios():
    a = run.system_figures("mop", _runs(10.0, 20.0, 12.0), workers=2)
    b = run.system_figures("task-parallel", _runs(9.0, 25.0, 10.0), workers=2)
    value, per, how = run.paired_ratio(a, b, "epoch_s")
    assert per == pytest.approx([10 / 9, 20 / 25, 12 / 10])
    assert value == pytest.approx(10 / 9)            # median of 1.111, 0.8, 1.2
    assert value != pytest.approx(12.0 / 10.0)       # not the ratio of the medians (12 / 10)
    assert "paired" in how


def test_paired_ratio_falls_back_to_the_ratio_of_medians_when_the_repeats_differ():
    a = run.system_figures("mop", _runs(10.0, 20.0, 12.0), workers=2)
    b = run.system_figures("task-parallel", _runs(9.0, 10.0, repeats=[0, 2]), workers=2)  # repeat 2 failed
    value, per, how = run.paired_ratio(a, b, "epoch_s")
    assert per is None and value == pytest.approx(12.0 / 9.5) and "ratio of medians" in how
    # Figures without per-repeat values (older results, hand-made figures): the ratio of medians.
    value, per, how = run.paired_ratio({"epoch_s": 6.0}, {"epoch_s": 3.0}, "epoch_s")
    assert (value, per) == (2.0, None) and "ratio of medians" in how
    assert run.paired_ratio({"epoch_s": 6.0}, None, "epoch_s")[:2] == (None, None)


def test_summary_ratios_are_paired_per_repeat_and_listed():
    figs = {
        "mop": run.system_figures("mop", _runs(10.0, 20.0, 12.0), workers=2),
        "task-parallel": run.system_figures("task-parallel", _runs(9.0, 25.0, 10.0), workers=2),
        "sequential": run.system_figures("sequential", _runs(20.0, 30.0, 30.0), workers=2),
        "sequential-lean": run.system_figures("sequential-lean", _runs(16.0, 24.0, 30.0), workers=2),
        "ddp": run.system_figures("ddp", _runs(25.0, 40.0, 30.0), workers=2),
        "ps": run.system_figures("ps", _runs(100.0, 150.0), workers=2),  # its third repeat failed
    }
    s = run.summarise(figs, None, workers=2)
    assert s["mop_over_task_parallel"] == pytest.approx(10 / 9)
    assert s["ratios_per_repeat"]["mop_over_task_parallel"] == pytest.approx([10 / 9, 0.8, 1.2])
    assert s["ddp_over_mop"] == pytest.approx(2.5)                      # median of 2.5, 2.0, 2.5
    assert s["allreduce_over_mop"] == s["ddp_over_mop"]                 # no Horovod: DDP stands in
    assert s["ratios_per_repeat"]["allreduce_over_mop"] == pytest.approx([2.5, 2.0, 2.5])
    # rows/s = 1000 / span: MOP over 2 x sequential per repeat: 2/2, 1.5/2, 2.5/2 -> median 1.0
    assert s["ratios_per_repeat"]["throughput_over_p_sequential_fit"] == pytest.approx([1.0, 0.75, 1.25])
    assert s["throughput_over_p_sequential_fit"] == pytest.approx(1.0)
    # The physical limit is the lean sequential process: 1.6/2, 1.2/2, 2.5/2 -> median 0.8
    assert s["ratios_per_repeat"]["throughput_over_physical_limit"] == pytest.approx([0.8, 0.6, 1.25])
    assert s["throughput_over_physical_limit"] == pytest.approx(0.8)
    # ps has repeats 1, 2 against MOP's 1, 2, 3: the ratio of medians (125 / 12), no per-repeat list.
    assert s["ps_over_mop"] == pytest.approx(125.0 / 12.0)
    assert "ps_over_mop" not in s["ratios_per_repeat"] and "ratio of medians" in s["ratios_how"]["ps_over_mop"]
    assert "paired" in s["ratios_how"]["mop_over_task_parallel"]
    assert s["horovod_over_mop"] is None and "horovod_over_mop" not in s["ratios_how"]


def test_summary_takes_the_fixed_cost_figures():
    fixed = {"keras": {"sub_epoch_fixed_cost_ms": 11.5, "visit_fixed_cost_ms": 30.0},
             "torch": {"sub_epoch_fixed_cost_ms": 5.5, "visit_fixed_cost_ms": 20.0}}
    s = run.summarise({}, None, workers=2, fixed_cost=fixed)
    assert s["sub_epoch_fixed_cost_ms"] == 11.5 and s["sub_epoch_fixed_cost_ms_torch"] == 5.5
    assert s["visit_fixed_cost_ms"] == 30.0 and s["visit_fixed_cost_ms_torch"] == 20.0
    assert run.GOALS["sub_epoch_fixed_cost_ms"] == ("<=", 10.0)
    assert run.goal_status("sub_epoch_fixed_cost_ms", 11.5).startswith("MISSED")
    assert run.goal_status("sub_epoch_fixed_cost_ms_torch", 5.5).startswith("met")
    assert run.summarise({}, None, workers=2)["sub_epoch_fixed_cost_ms"] is None   # not run: n/a
    report = {"figures": {}, "summary": s, "configs": 8, "workers": 2, "fixed_cost": fixed,
              "profile": {"rows": 1000, "epochs": 1, "accuracy_epochs": 1, "repeats": 1},
              "systems": [], "unavailable": {}, "errors": {"fixed-cost (torch)": "exit 1: boom"}}
    table = run.markdown(report)
    assert "| sub_epoch_fixed_cost_ms | 11.5000 | MISSED (<= 10) |" in table
    assert "| torch | 5.50 |" in table and "- fixed-cost (torch): exit 1: boom" in table


# ---------------------------------------------------------------------------- the runner's order

def test_run_order_is_interleaved_and_alternates():
    order = run.run_order(["a", "b", "c"], 4)
    assert order == [(0, "a"), (0, "b"), (0, "c"), (1, "c"), (1, "b"), (1, "a"),
                     (2, "a"), (2, "b"), (2, "c"), (3, "c"), (3, "b"), (3, "a")]
    assert run.run_order(["a"], 3) == [(0, "a"), (1, "a"), (2, "a")]
    assert run.run_order(["a", "b"], 0) == []


def _fake_runner(monkeypatch, *, unavailable=(), drift=0.0, fail=()):
    """run_all with fake engines: each call's span is 10 s x (1 + drift x call number)."""
    calls = []
    monkeypatch.setattr(run, "availability", lambda workers: {s: ("not here" if s in unavailable else None)
                                                              for s in run.SYSTEMS})
    monkeypatch.setattr(run, "prepare_data", lambda root, rows, workers: {"time": "t", "accuracy": "a"})

    def engine(system, jobs, workers, tmp, timeout, log_dir):
        calls.append((system, [j["tag"] for j in jobs]))
        if (system, len([c for c in calls if c[0] == system]) - 1) in fail:
            return {"error": "exit 1: boom"}
        return {"jobs": [_time_job(10.0 * (1 + drift * (len(calls) - 1)))], "wall_s": 1.0}

    monkeypatch.setattr(run, "run_engine", engine)
    return calls


def test_run_all_runs_in_the_interleaved_alternating_order(monkeypatch, tmp_path):
    calls = _fake_runner(monkeypatch, unavailable=("ddp",), fail={("mop", 1)})
    profile = {"rows": 1000, "epochs": 1, "accuracy_epochs": 1, "repeats": 3, "timeout": 10}
    raw = run.run_all(profile, 2, ["sequential", "mop", "ddp", "task-parallel"], tmp_path, log=lambda m: None)
    assert [c[0] for c in calls] == ["sequential", "mop", "task-parallel", "task-parallel", "mop", "sequential",
                                     "sequential", "mop", "task-parallel"]
    assert [c[1] for c in calls][:3] == [["time", "accuracy"]] * 3      # the accuracy job: repeat 1 only
    assert all(tags == ["time"] for _, tags in calls[3:])
    assert [r["repeat"] for r in raw["runs"]["task-parallel"]] == [0, 1, 2]
    assert [r["repeat"] for r in raw["runs"]["mop"]] == [0, 2]           # repeat 2 failed ...
    assert raw["errors"] == {"mop (repeat 2)": "exit 1: boom"}           # ... and says so
    assert raw["unavailable"] == {"ddp": "not here"}
    figs = {s: run.system_figures(s, runs, 2) for s, runs in raw["runs"].items() if runs}
    assert "ratio of medians" in run.summarise(figs, None, 2)["ratios_how"]["mop_over_task_parallel"]


def test_alternating_order_cancels_a_linear_drift(monkeypatch, tmp_path):
    """Two equally fast systems on a machine that slows 1% per engine run: the paired ratio
    over A B B A stays at 1 (to first order), where A B A B would report A 1% faster."""
    _fake_runner(monkeypatch, drift=0.01)
    profile = {"rows": 1000, "epochs": 1, "accuracy_epochs": 1, "repeats": 2, "timeout": 10}
    raw = run.run_all(profile, 2, ["mop", "task-parallel"], tmp_path, log=lambda m: None)
    figs = {s: run.system_figures(s, runs, 2) for s, runs in raw["runs"].items()}
    s = run.summarise(figs, None, workers=2)
    assert s["ratios_per_repeat"]["mop_over_task_parallel"] == pytest.approx([1 / 1.01, 1.03 / 1.02])
    assert s["mop_over_task_parallel"] == pytest.approx(1.0, abs=1e-3)
    back_to_back = (1 / 1.01 + 1.02 / 1.03) / 2                         # A B, A B
    assert abs(back_to_back - 1) > 5e-3


def test_a_failed_or_missing_fixed_cost_run_is_recorded_with_its_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(run, "run_fixed_cost", lambda framework, *a: (
        {"error": "exit 1: no worker started"} if framework == "keras" else
        {"sub_epoch_fixed_cost_ms": 5.0, "visit_fixed_cost_ms": 9.0, "wall_s": 1.0}))
    got = run.fixed_cost_all(2, 3, tmp_path, log=lambda m: None)
    assert got["errors"] == {"fixed-cost (keras)": "exit 1: no worker started"}
    assert list(got["figures"]) == ["torch"] or got["unavailable"] == {
        "fixed-cost (torch)": "torch is not installed (python -m benchmarks.setup_baselines)"}
    s = run.summarise({}, None, 2, got["figures"])
    assert s["sub_epoch_fixed_cost_ms"] is None                          # n/a, and the error says why


def test_network_runs_repeat_interleaved_and_report_their_spread(monkeypatch, tmp_path):
    from benchmarks import netem

    calls = []

    def engine(system, jobs, workers, tmp, timeout, log_dir, env=None, log_name=None):
        calls.append((system, env[netem.ENV]))
        return {"jobs": [{**_time_job(10.0 + len(calls)), "network": f"emulated {env[netem.ENV]}"}], "wall_s": 1.0}

    monkeypatch.setattr(run, "run_engine", engine)
    monkeypatch.setattr(run, "prepare_data", lambda root, rows, workers: {"time": "t", "accuracy": "a"})
    monkeypatch.setattr(netem, "unavailable", lambda: None)
    monkeypatch.setattr(netem, "engine_unavailable", lambda system: None)
    profile = {"rows": 1000, "epochs": 1, "repeats": 2, "timeout": 10}
    net = run.network_all(["10gbit", "1gbit"], ["ddp", "model-averaging"], profile, 2, tmp_path, log=lambda m: None)
    assert calls == [("ddp", "10gbit"), ("model-averaging", "10gbit"), ("ddp", "1gbit"), ("model-averaging", "1gbit"),
                     ("model-averaging", "1gbit"), ("ddp", "1gbit"), ("model-averaging", "10gbit"), ("ddp", "10gbit")]
    ddp = net["runs"]["10gbit"]["ddp"]
    assert ddp["repeats"] == 2 and ddp["epoch_s_all"] == [11.0, 18.0] and ddp["epoch_s"] == 14.5
    assert ddp["network"] == "emulated 10gbit"
    mop = run.system_figures("mop", _runs(5.0), workers=2)
    table = run.network_summary(net, {"mop": mop}, 2)
    assert table["10gbit"]["ddp_epoch_s_all"] == [11.0, 18.0]
    assert "14.5 [11.0-18.0]" in "\n".join(run.network_lines(table))
