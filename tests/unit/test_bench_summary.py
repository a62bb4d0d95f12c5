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
