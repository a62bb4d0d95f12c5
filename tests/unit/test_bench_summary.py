"""The arithmetic behind benchmarks/results/*/summary.json (benchmarks/run.py): pure."""

from __future__ import annotations

import pytest

from benchmarks import run


def _job(tag, span, epochs=1, rows=1000, **extra):
    return {"tag": tag, "span_s": span, "epochs": epochs, "train_rows": rows, "cpu_s": extra.pop("cpu_s", None),
            "bytes_stored": extra.pop("stored", 100), "bytes_moved": extra.pop("moved", 0),
            "bytes_moved_how": extra.pop("how", "computed: x"), "configs": extra.pop("configs", []), **extra}


def _acc(*finals):
    return {"tag": "accuracy", "epochs": 2, "configs": [{"params": {"learning_rate": 1e-3, "width": 128, "batch_size": 32},
                                                          "val_accuracy": [0.5, f]} for f in finals]}


def test_system_figures_are_medians_over_repeats():
    runs = [{"jobs": [_job("time", 10, epochs=2, cpu_s=16), _acc(0.9, 0.8)]},
            {"jobs": [_job("time", 30, epochs=2, cpu_s=30)]},
            {"jobs": [_job("time", 14, epochs=2, cpu_s=14)]}]
    fig = run.system_figures("ddp", runs, workers=2)
    assert fig["repeats"] == 3
    assert fig["epoch_s"] == 7          # median of 5, 15, 7
    assert fig["utilisation"] == pytest.approx(0.5)  # median of 0.8, 0.5, 0.5
    assert fig["best_val_accuracy"] == 0.9 and fig["mean_val_accuracy"] == pytest.approx(0.85)
    seq = run.system_figures("sequential", [{"jobs": [_job("time", 10, cpu_s=9)]}], workers=2)
    assert seq["utilisation"] == pytest.approx(0.9)  # one process: p = 1


def test_mop_utilisation_is_the_busy_fraction():
    fig = run.system_figures("mop", [{"jobs": [_job("time", 10, busy_fraction=0.93, hop_share=0.02, build_share=0.04,
                                                    raw_data_bytes=50)]}], 2)
    assert fig["utilisation"] == 0.93 and fig["hop_share"] == 0.02 and fig["raw_data_bytes"] == 50
    assert fig["build_share"] == 0.04


def _figs():
    return {
        "mop": {"epoch_s": 10.0, "utilisation": 0.95, "hop_share": 0.02, "rows_per_s": 900.0, "bytes_stored": 120,
                "raw_data_bytes": 100, "best_val_accuracy": 0.975},
        "sequential": {"epoch_s": 20.0, "rows_per_s": 500.0, "best_val_accuracy": 0.980},
        "sequential-lean": {"epoch_s": 15.0, "rows_per_s": 600.0, "best_val_accuracy": 0.975},
        "task-parallel": {"epoch_s": 9.0, "bytes_stored": 175},
        "ddp": {"epoch_s": 25.0},
        "ps": {"epoch_s": 120.0},
        "model-averaging": {"epoch_s": 8.0, "best_val_accuracy": 0.95},
    }


def test_summary_ratios_and_gaps():
    sim = {"scheduler_makespan_over_lower_bound": 1.03, "randomized_makespan_over_lower_bound": 1.08,
           "scheduler_decision_ms": 0.07}
    s = run.summarise(_figs(), sim, workers=2)
    assert set(run.SUMMARY_KEYS) <= set(s)
    assert s["mop_busy_fraction"] == 0.95
    assert s["horovod_over_mop"] is None
    assert s["ddp_over_mop"] == 2.5 and s["allreduce_over_mop"] == 2.5  # no Horovod: DDP stands in
    assert s["horovod_over_mop_torch"] is None and s["ddp_over_mop_torch"] is None  # no MOP on PyTorch
    assert s["ps_over_mop"] == 12.0
    assert s["mop_over_task_parallel"] == pytest.approx(10 / 9)
    assert s["task_parallel_storage_over_mop"] == 1.75
    assert s["accuracy_gap_vs_sequential"] == pytest.approx(-0.5)       # percentage points, MOP minus sequential
    assert s["model_averaging_accuracy_gap_vs_sequential"] == pytest.approx(-3.0)
    assert s["throughput_over_physical_limit"] == pytest.approx(0.75)   # 900 / (2 x 600): the same loop
    assert s["throughput_over_p_sequential_fit"] == pytest.approx(0.9)  # 900 / (2 x 500): model.fit
    assert s["hop_share"] == 0.02 and s["scheduler_decision_ms"] == 0.07


def test_horovod_is_the_allreduce_figure_when_it_ran():
    figs = _figs()
    figs["horovod"] = {"epoch_s": 40.0}
    s = run.summarise(figs, None, workers=2)
    assert s["allreduce_over_mop"] == 4.0 and s["horovod_over_mop"] == 4.0 and s["ddp_over_mop"] == 2.5
    assert s["scheduler_makespan_over_lower_bound"] is None


def test_torch_ratios_divide_by_mop_on_pytorch():
    """``*_over_mop_torch``: the same all-reduce epoch times over MOP-on-PyTorch's; the Keras ratios stay."""
    figs = _figs()
    figs["horovod"] = {"epoch_s": 40.0}
    figs["mop-torch"] = {"epoch_s": 5.0, "utilisation": 0.9}
    s = run.summarise(figs, None, workers=2)
    assert s["ddp_over_mop_torch"] == 5.0 and s["horovod_over_mop_torch"] == 8.0
    assert s["ddp_over_mop"] == 2.5 and s["horovod_over_mop"] == 4.0 and s["allreduce_over_mop"] == 4.0
    assert s["mop_busy_fraction"] == 0.95  # still MOP on Keras
    assert {"ddp_over_mop_torch", "horovod_over_mop_torch"} <= set(run.SUMMARY_KEYS)
    assert "mop-torch" in run.SYSTEMS and run.LABELS["mop-torch"] and run.SHORT["mop-torch"]


def test_mop_torch_utilisation_is_its_busy_fraction():
    fig = run.system_figures("mop-torch", [{"jobs": [_job("time", 10, busy_fraction=0.91, hop_share=0.04)]}], 2)
    assert fig["utilisation"] == 0.91 and fig["hop_share"] == 0.04


def test_markdown_has_a_column_against_mop_on_pytorch():
    figs = {"mop": {"epoch_s": 10.0, "utilisation": 0.95, "bytes_stored": 1},
            "mop-torch": {"epoch_s": 5.0, "utilisation": 0.9, "bytes_stored": 1},
            "ddp": {"epoch_s": 7.5, "utilisation": 0.8, "bytes_stored": 1}}
    report = {"figures": figs, "summary": run.summarise(figs, None, workers=2), "configs": 8, "workers": 2,
              "profile": {"rows": 1000, "epochs": 1, "accuracy_epochs": 1, "repeats": 1},
              "systems": ["mop", "mop-torch", "ddp"], "unavailable": {}, "errors": {}}
    table = run.markdown(report)
    assert "| vs MOP | vs MOP (torch) |" in table
    assert f"| {run.LABELS['ddp']} | 7.5 | 0.75 | 1.50 |" in table
    assert "| ddp_over_mop_torch | 1.5000 |" in table


def test_missing_systems_give_none_not_errors():
    s = run.summarise({"mop": {"epoch_s": 10.0}}, None, workers=2)
    assert s["ps_over_mop"] is None and s["accuracy_gap_vs_sequential"] is None
    assert s["throughput_over_physical_limit"] is None
    assert s["ddp_over_mop_torch"] is None and s["horovod_over_mop_torch"] is None


def test_goal_status():
    assert run.goal_status("ps_over_mop", 12.0).startswith("met")
    assert run.goal_status("mop_busy_fraction", 0.8).startswith("MISSED")
    assert run.goal_status("accuracy_gap_vs_sequential", -0.4).startswith("met")
    assert run.goal_status("accuracy_gap_vs_sequential", -0.6).startswith("MISSED")
    assert run.goal_status("hop_share", None) == "n/a"


def _search(span, config_epochs, finals, busy=0.9, rss=2e9):
    return {"tag": "search", "span_s": span, "epochs": 3, "train_rows": 100, "cpu_s": None, "bytes_stored": 1,
            "bytes_moved": 1, "bytes_moved_how": "computed: x", "config_epochs": config_epochs,
            "busy_fraction": busy, "peak_rss_bytes": rss,
            "configs": [{"params": {"learning_rate": 1e-3, "width": 128, "batch_size": 32}, "val_accuracy": f}
                        for f in finals]}


def test_an_asha_search_is_timed_as_a_whole_and_paired_per_repeat():
    mop = run.system_figures("mop-asha", [{"repeat": 0, "jobs": [_search(10.0, 12, [[0.5], [0.6, 0.7, 0.8]])]},
                                          {"repeat": 1, "jobs": [_search(20.0, 12, [[0.5]])]}], 2)
    ray = run.system_figures("ray-tune-asha", [{"repeat": 0, "jobs": [_search(30.0, 11, [[0.4]], rss=6e9)]},
                                               {"repeat": 1, "jobs": [_search(80.0, 11, [[0.4]], rss=6e9)]}], 2)
    assert mop["search_s"] == 15.0 and mop["config_epochs"] == 12 and mop["search_best_val_accuracy"] == 0.8
    assert "epoch_s" not in mop  # no time job: not in the per-epoch table
    s = run.summarise({"mop-asha": mop, "ray-tune-asha": ray}, None, workers=2)
    assert s["ray_tune_asha_over_mop_asha"] == pytest.approx(3.5)   # median of 30/10 and 80/20
    assert s["ratios_per_repeat"]["ray_tune_asha_over_mop_asha"] == [3.0, 4.0]
    assert s["ray_tune_asha_memory_over_mop_asha"] == pytest.approx(3.0)


def test_ray_tune_figures_use_its_trials_busy_time_and_memory():
    ray = run.system_figures("ray-tune", [{"jobs": [_job("time", 20, cpu_s=39, busy_fraction=0.6,
                                                         busy_how="fit time", peak_rss_bytes=5e9)]}], 2)
    assert ray["utilisation"] == 0.6 and ray["utilisation_how"] == "fit time"  # not its CPU (imports included)
    mop = run.system_figures("mop", [{"jobs": [_job("time", 10, busy_fraction=0.95, peak_rss_bytes=2.5e9)]}], 2)
    s = run.summarise({"mop": mop, "ray-tune": ray}, None, workers=2)
    assert s["ray_tune_over_mop"] == pytest.approx(2.0)
    assert s["ray_tune_busy_fraction"] == 0.6 and s["ray_tune_memory_over_mop"] == pytest.approx(2.0)
    report = {"figures": {"mop": mop, "ray-tune": ray}, "summary": s, "configs": 8, "workers": 2,
              "profile": {"rows": 1000, "epochs": 1, "accuracy_epochs": 1, "repeats": 1, "asha_epochs": 3},
              "systems": ["mop", "ray-tune", "ray-tune-asha"], "unavailable": {"ray-tune-asha": "ray is missing"},
              "errors": {}}
    table = run.markdown(report)
    assert f"| {run.LABELS['ray-tune']} | 20.0 | 2.00 |" in table and "| 5.00 |" in table
    assert f"| {run.LABELS['ray-tune-asha']} | unavailable: ray is missing |" in table


def test_ray_tune_is_reported_unavailable_with_the_reason(monkeypatch):
    real = run.importlib.util.find_spec
    monkeypatch.setattr(run.importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    avail = run.availability(2)
    assert "ray[tune] is not installed" in avail["ray-tune"] and "setup_baselines" in avail["ray-tune-asha"]
    assert avail["mop-asha"] is None


def test_network_summary_charges_mop_hops_at_the_rate_and_divides():
    figs = {"mop": {"epoch_s": 10.0, "bytes_moved_per_epoch": 250e6}, "ddp": {"epoch_s": 12.0}}
    net = {"runs": {"1gbit": {"ddp": {"epoch_s": 30.0}}}}
    table = run.network_summary(net, figs, workers=2)
    # 250 MB over 2 workers' links at 1 Gbit/s: 1 s on each, added to the epoch
    assert table["1gbit"]["mop_charged_epoch_s"] == pytest.approx(11.0)
    assert table["1gbit"]["ddp_over_mop"] == pytest.approx(30.0 / 11.0)
    assert table["loopback"]["ddp_over_mop"] == pytest.approx(1.2)
    lines = "\n".join(run.network_lines(table))
    assert "| 1gbit | 11.00 | 30.0 (2.73x) |" in lines
    assert run.network_summary({}, figs, 2) == {}
