"""``cerebro report``: the Gantt chart and the self-contained HTML report of an experiment directory.

Experiment directories are written by hand here (experiment.json, history.csv, visits.csv,
evaluations.csv as ``fit`` leaves them), so these tests need no worker processes or Keras.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cerebro.cli import main
from cerebro.errors import CerebroError
from cerebro.report import LEGEND_MAX, load_experiment, plot_gantt, write_report

VISIT_COLUMNS = ["model_id", "epoch", "partition", "worker", "start", "end", "rows", "status", "attempt",
                 "load_s", "compute_s", "save_s"]
T0 = 1_700_000_000.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Final (epoch 2) validation accuracy: model_001 is the highest, model_002 the lowest.
FINAL_VAL_ACC = {"model_000": 0.81, "model_001": 0.93, "model_002": 0.62}


def _history(evil_param: bool) -> pd.DataFrame:
    rows = []
    for i, (mid, final) in enumerate(FINAL_VAL_ACC.items()):
        for epoch in (1, 2):
            acc = final - (0.2 if epoch == 1 else 0.0)
            rows.append({
                "model_id": mid, "epoch": epoch,
                "train_accuracy": acc - 0.05, "train_loss": 2.0 - acc,
                "val_accuracy": acc, "val_loss": 2.1 - acc,
                "param_lr": [1e-3, 1e-2, 1e-1][i], "param_width": [32, 64, 128][i],
                "param_act": "<script>alert(1)</script>" if (evil_param and mid == "model_002") else "relu",
            })
    return pd.DataFrame(rows)


def _visits() -> tuple[pd.DataFrame, pd.DataFrame]:
    """2 workers, 2 partitions, 2 epochs; model_002's first attempt on partition 1 in epoch 1 fails."""
    train, evals = [], []
    clock = {0: T0, 1: T0}
    for epoch in (1, 2):
        for step in range(2):
            for mid_i, mid in enumerate(FINAL_VAL_ACC):
                worker = (mid_i + step) % 2
                partition = worker
                if epoch == 1 and mid == "model_002" and partition == 1:
                    start = clock[worker]
                    train.append([mid, epoch, partition, worker, start, start + 0.4, 0, "failed", 0, 0.0, 0.0, 0.0])
                    clock[worker] = start + 0.5
                    attempt = 1
                else:
                    attempt = 0
                start = clock[worker]
                train.append([mid, epoch, partition, worker, start, start + 1.0 + 0.2 * mid_i, 100, "ok", attempt,
                              0.05, 0.9, 0.05])
                clock[worker] = start + 1.0 + 0.2 * mid_i + 0.01
        for step in range(2):
            for mid_i, mid in enumerate(FINAL_VAL_ACC):
                worker = (mid_i + step) % 2
                start = clock[worker]
                evals.append([mid, epoch, worker, worker, start, start + 0.3, 25, "ok", 0, 0.01, 0.28, 0.0])
                clock[worker] = start + 0.31
    return pd.DataFrame(train, columns=VISIT_COLUMNS), pd.DataFrame(evals, columns=VISIT_COLUMNS)


def make_experiment(root: Path, *, mode: str = "max", metric: str = "accuracy", evaluations: bool = True,
                    evil_param: bool = True, name: str = "exp-synthetic") -> Path:
    """A finished experiment directory: 3 models, 2 workers, 2 epochs, one failed visit."""
    exp_dir = root / name
    exp_dir.mkdir(parents=True)
    experiment = {
        "name": name, "search": "GridSearch", "data_key": "k" * 24, "data_hash": "h" * 64,
        "num_workers": 2, "num_epochs": 2, "evaluation_metric": metric, "mode": mode, "seed": 7,
        "scheduler": "dynamic", "search_space": "{'lr': Choice(values=(0.001, 0.01, 0.1))}",
        "feature_columns": ["features"], "label_columns": ["label"], "validation": 0.25,
        "started": T0 - 5.0, "some_future_key": {"ignored": True},
    }
    (exp_dir / "experiment.json").write_text(json.dumps(experiment))
    _history(evil_param).to_csv(exp_dir / "history.csv", index=False)
    visits, evals = _visits()
    visits.to_csv(exp_dir / "visits.csv", index=False)
    if evaluations:
        evals.to_csv(exp_dir / "evaluations.csv", index=False)
    (exp_dir / "journal.jsonl").write_text("")
    return exp_dir


def _best_in_summary(page: str) -> str:
    """The model id the report's summary names as best."""
    match = re.search(r"<dt>best model</dt><dd>([^:<]+):", page)
    assert match, "the summary has no 'best model' entry"
    return match.group(1)


def _check_png(path: str, min_width: int = 400, min_height: int = 150) -> None:
    import matplotlib.image as mpimg

    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1000
    image = mpimg.imread(path)
    height, width = image.shape[:2]
    assert min_width <= width <= 4000, width
    assert min_height <= height <= 4000, height


def test_write_report_creates_png_and_self_contained_html(tmp_path):
    exp_dir = make_experiment(tmp_path)
    png, page_path = write_report(str(exp_dir))
    assert png == os.path.join(str(exp_dir), "gantt.png")
    assert page_path == os.path.join(str(exp_dir), "report.html")
    _check_png(png)

    page = Path(page_path).read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert '<table id="history"' in page
    for mid in FINAL_VAL_ACC:
        assert mid in page
    assert page.count("data:image/png;base64,") >= 2
    # Self-contained: nothing fetched from anywhere.
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(script|link)\b", page, re.IGNORECASE)
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page)
    # Values are escaped.
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # Summary figures.
    assert "exp-synthetic" in page and "GridSearch" in page
    assert _best_in_summary(page) == "model_001"
    assert "0.9300" in page
    # The history table has one row per (model, epoch).
    history_table = page[page.index('<table id="history"'):]
    history_table = history_table[:history_table.index("</table>")]
    assert history_table.count("<tr") == 1 + 6


@pytest.mark.parametrize(("mode", "metric", "expected"), [
    ("max", "accuracy", max(FINAL_VAL_ACC, key=FINAL_VAL_ACC.get)),
    ("min", "accuracy", min(FINAL_VAL_ACC, key=FINAL_VAL_ACC.get)),
    ("min", "loss", max(FINAL_VAL_ACC, key=FINAL_VAL_ACC.get)),   # val_loss = 2.1 - acc
    ("max", "val_accuracy", max(FINAL_VAL_ACC, key=FINAL_VAL_ACC.get)),
])
def test_best_model_honours_mode(tmp_path, mode, metric, expected):
    exp_dir = make_experiment(tmp_path, mode=mode, metric=metric)
    _, page_path = write_report(str(exp_dir))
    page = Path(page_path).read_text(encoding="utf-8")
    assert _best_in_summary(page) == expected
    assert re.search(r'<tr class="best"><td class="num">' + expected, page)


def test_summary_counts_failures_wall_time_and_busy_fraction(tmp_path):
    from cerebro.report import summarize

    exp_dir = make_experiment(tmp_path)
    loaded = load_experiment(str(exp_dir))
    summary = summarize(loaded)
    visits, evals = loaded["visits"], loaded["evaluations"]
    both = pd.concat([visits, evals])
    span = both["end"].max() - both["start"].min()
    ok = both[both["status"] == "ok"]
    assert summary["failures"] == 1
    assert summary["num_models"] == 3
    assert summary["workers"] == 2 and summary["epochs"] == 2
    assert summary["best_model_id"] == "model_001"
    assert summary["best_params"]["width"] == 64
    assert summary["wall_s"] == pytest.approx(span)
    assert summary["busy_fraction"] == pytest.approx((ok["end"] - ok["start"]).sum() / (2 * span))
    assert 0 < summary["busy_fraction"] <= 1


def test_load_experiment_reads_tables(tmp_path):
    exp_dir = make_experiment(tmp_path)
    loaded = load_experiment(str(exp_dir))
    assert loaded["experiment"]["name"] == "exp-synthetic"
    assert len(loaded["history"]) == 6
    assert len(loaded["visits"]) == 13 and (loaded["visits"]["status"] == "failed").sum() == 1
    assert len(loaded["evaluations"]) == 12


def test_missing_evaluations_csv_still_works(tmp_path):
    exp_dir = make_experiment(tmp_path, evaluations=False)
    assert load_experiment(str(exp_dir))["evaluations"] is None
    png, page_path = write_report(str(exp_dir))
    _check_png(png)
    page = Path(page_path).read_text(encoding="utf-8")
    assert "no evaluations.csv" in page
    assert page.count("data:image/png;base64,") >= 2


@pytest.mark.parametrize("missing", ["experiment.json", "history.csv", "visits.csv"])
def test_load_experiment_names_dir_and_missing_file(tmp_path, missing):
    exp_dir = make_experiment(tmp_path)
    (exp_dir / missing).unlink()
    with pytest.raises(CerebroError) as info:
        load_experiment(str(exp_dir))
    assert str(exp_dir) in str(info.value) and missing in str(info.value)


def test_load_experiment_refuses_bad_dirs_and_files(tmp_path):
    with pytest.raises(CerebroError, match="does not exist"):
        load_experiment(str(tmp_path / "nope"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(CerebroError, match="not a directory"):
        load_experiment(str(tmp_path / "file"))
    exp_dir = make_experiment(tmp_path)
    (exp_dir / "experiment.json").write_text("{not json")
    with pytest.raises(CerebroError, match="experiment.json"):
        load_experiment(str(exp_dir))
    exp_dir = make_experiment(tmp_path, name="other")
    pd.DataFrame({"model_id": ["m"], "worker": [0]}).to_csv(exp_dir / "visits.csv", index=False)
    with pytest.raises(CerebroError, match=r"visits\.csv.*'start'"):
        load_experiment(str(exp_dir))


def test_cli_report_prints_both_paths(tmp_path, capsys):
    exp_dir = make_experiment(tmp_path)
    assert main(["report", str(exp_dir)]) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(exp_dir / "gantt.png"), str(exp_dir / "report.html")]
    assert all(os.path.getsize(p) > 0 for p in out)


def test_cli_report_bad_dir_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "no-such-experiment"
    assert main(["report", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err

    empty = tmp_path / "empty-dir"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert str(empty) in captured.err and "history.csv" in captured.err and "visits.csv" in captured.err


def test_plot_gantt_150_models_caps_legend(tmp_path):
    rng = np.random.default_rng(0)
    n_models, n_workers = 150, 8
    rows, evals = [], []
    clock = np.zeros(n_workers)
    for epoch in (1, 2):
        for step in range(n_workers):
            for m in range(n_models):
                w = (m + step) % n_workers
                d = float(rng.uniform(0.05, 0.2))
                status = "failed" if (epoch, step, m) == (1, 0, 3) else "ok"
                rows.append([f"model_{m:03d}", epoch, w, w, T0 + clock[w], T0 + clock[w] + d, 10, status, 0, 0, d, 0])
                clock[w] += d
        for m in range(n_models):
            w = m % n_workers
            evals.append([f"model_{m:03d}", epoch, w, w, T0 + clock[w], T0 + clock[w] + 0.02, 5, "ok", 0, 0, 0.02, 0])
            clock[w] += 0.02
    visits = pd.DataFrame(rows, columns=VISIT_COLUMNS)
    evaluations = pd.DataFrame(evals, columns=VISIT_COLUMNS)
    ids = sorted(visits["model_id"].unique())
    path = str(tmp_path / "gantt.png")

    import matplotlib.figure

    legends = []
    original = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        legends.extend(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)
        return original(fig, *args, **kwargs)

    matplotlib.figure.Figure.savefig = spy
    try:
        assert plot_gantt(visits, evaluations, path, model_ids=ids, title="many models") == path
    finally:
        matplotlib.figure.Figure.savefig = original
    _check_png(path)
    assert len(legends) == 1
    labels = [t.get_text() for t in legends[0].get_texts()]
    assert sum(label.startswith("model_") for label in labels) == LEGEND_MAX
    assert f"+{150 - LEGEND_MAX} more models" in labels


def test_plot_gantt_without_evaluations_or_visits(tmp_path):
    visits, _ = _visits()
    assert plot_gantt(visits, None, str(tmp_path / "a.png")) == str(tmp_path / "a.png")
    _check_png(str(tmp_path / "a.png"))
    empty = pd.DataFrame(columns=VISIT_COLUMNS)
    plot_gantt(empty, empty, str(tmp_path / "b.png"))
    _check_png(str(tmp_path / "b.png"))


def test_result_plot_gantt_uses_the_report_chart(tmp_path):
    from cerebro.result import ModelSelectionResult

    visits, evals = _visits()
    result = ModelSelectionResult(
        best_model_id="model_001", best_params={}, best_score=0.93, models=dict.fromkeys(FINAL_VAL_ACC),
        history=_history(False), visits=visits, failures={}, experiment_dir=str(tmp_path),
        evaluation_metric="val_accuracy", mode="max", evaluations=evals,
    )
    path = tmp_path / "result-gantt.png"
    assert result.plot_gantt(path) == str(path)
    _check_png(str(path))
