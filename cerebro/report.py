"""Experiment reports: the MOP Gantt chart and a self-contained HTML report.

``cerebro report EXPERIMENT_DIR`` calls :func:`write_report`, which reads the tables that ``fit``
leaves in an experiment directory (:func:`load_experiment`) and writes ``gantt.png`` and
``report.html`` next to them.  The HTML file stands alone: inline CSS, no scripts, no external
fonts or links, every image embedded as a ``data:image/png;base64,`` URI, every value escaped.

Matplotlib is driven through :class:`matplotlib.figure.Figure` (Agg canvas) only, so nothing
here touches pyplot's global state or the process-wide backend.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import time
from typing import Any, Sequence

import pandas as pd

from .core.metrics import best_of, infer_mode, strip_prefix
from .errors import CerebroError
from .storage import layout

__all__ = ["plot_gantt", "load_experiment", "write_report", "best_model", "summarize"]

# The names of an experiment directory's files, from the store layout (one place for every name).
EXPERIMENT_FILE = layout.EXPERIMENT_FILE
HISTORY_FILE, VISITS_FILE, EVALUATIONS_FILE = (layout.table_file(t) for t in layout.TABLES)
GANTT_FILE = "gantt.png"
REPORT_FILE = "report.html"

#: Columns a visits/evaluations table must have to be drawn.
VISIT_COLUMNS = ("model_id", "worker", "start", "end", "status")
#: Columns the history table must have.
HISTORY_COLUMNS = ("model_id", "epoch")
#: Most models named in a legend; the rest are summarised as "+N more".
LEGEND_MAX = 20

_FAILED_COLOUR = "#d62728"


# --------------------------------------------------------------------------------------------
# Colours and small helpers
# --------------------------------------------------------------------------------------------

def _palette(n: int) -> list[tuple[float, float, float, float]]:
    """``n`` colours: tab10 for up to 10 models, else tab20 + tab20b + tab20c, cycled.

    Saturated reds are left out: red means a failed attempt.
    """
    import colorsys

    from matplotlib import colormaps

    names = ("tab10",) if n <= 9 else ("tab20", "tab20b", "tab20c")
    base = []
    for name in names:
        for colour in colormaps[name].colors:
            hue, sat, _ = colorsys.rgb_to_hsv(*colour[:3])
            if not ((hue < 0.04 or hue > 0.95) and sat > 0.5):
                base.append(colour)
    return [(*base[i % len(base)][:3], 1.0) for i in range(n)]


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _save(fig, path: str | None = None) -> bytes:
    """PNG bytes of ``fig`` (also written to ``path`` when given)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", facecolor="white")
    data = buf.getvalue()
    if path is not None:
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    return data


def _visit_frame(frame: pd.DataFrame | None, kind: str) -> pd.DataFrame:
    """Normalised copy of a visits-like table with a ``kind`` column; empty when ``frame`` is None."""
    if frame is None or len(frame) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in (*VISIT_COLUMNS, "kind")})
    missing = [c for c in VISIT_COLUMNS if c not in frame.columns]
    if missing:
        raise CerebroError(f"the {kind} table has no column(s) {missing}; it has {list(frame.columns)}")
    out = frame.copy()
    out["model_id"] = out["model_id"].astype(str)
    out["start"] = pd.to_numeric(out["start"], errors="coerce").astype(float)
    out["end"] = pd.to_numeric(out["end"], errors="coerce").astype(float)
    out["status"] = out["status"].astype(str)
    out["kind"] = kind
    return out.dropna(subset=["start", "end"])


# --------------------------------------------------------------------------------------------
# Gantt chart
# --------------------------------------------------------------------------------------------

def _distinct(rows: pd.DataFrame, column: str, sep: str) -> str:
    """The distinct non-empty values of ``rows[column]`` in order, joined ("" if no such column)."""
    if column not in rows.columns:
        return ""
    return sep.join(str(v) for v in dict.fromkeys(rows[column].dropna().tolist()) if str(v))


def _worker_label(visits: pd.DataFrame, worker: Any) -> str:
    """``worker 0`` and, where ``visits`` recorded them, its device and host (``cuda:1 @ node-3``)."""
    rows = visits[visits["worker"] == worker]
    where = [v for v in (_distinct(rows, "device", "/"), _distinct(rows, "host", "/")) if v]
    return f"worker {worker}" + (f"\n{' @ '.join(where)}" if where else "")


def plot_gantt(visits: pd.DataFrame, evaluations: pd.DataFrame | None, path: str, *,
               model_ids: Sequence[str] | None = None, title: str | None = None) -> str:
    """Draw the MOP schedule to the PNG file ``path`` and return ``path``.

    One row per worker (every worker seen in ``visits`` or ``evaluations``); one bar per visit,
    from ``start`` to ``end`` in seconds since the earliest start of either table.  Bars are
    coloured by model (``model_ids`` fixes the colour order and the legend; by default the
    sorted ids seen), evaluation visits are hatched, failed attempts (``status != "ok"``) are
    red with an ``x`` marker.  The legend names at most ``LEGEND_MAX`` models and ends with
    "+N more models"; model ids are written inside bars wide enough to hold them when there
    are few models.  ``evaluations`` may be None or empty.  Raises :class:`CerebroError` when a
    table lacks one of ``model_id, worker, start, end, status``.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    path = os.fspath(path)
    train = _visit_frame(visits, "training")
    evals = _visit_frame(evaluations, "evaluation")
    frames = [f for f in (train, evals) if len(f)]
    allv = pd.concat(frames, ignore_index=True) if frames else train
    ids = [str(m) for m in model_ids] if model_ids is not None else []
    seen = set(ids)
    ids += sorted({m for m in allv["model_id"]} - seen)
    colours = dict(zip(ids, _palette(len(ids))))
    workers = sorted(set(allv["worker"].tolist()), key=lambda w: (str(type(w)), w))
    ypos = {w: i for i, w in enumerate(workers)}
    t0 = float(allv["start"].min()) if len(allv) else 0.0
    span = float(allv["end"].max() - t0) if len(allv) else 1.0
    span = span if span > 0 else 1.0

    width_in = 13.0
    height_in = min(2.2 + 0.55 * max(1, len(workers)), 40.0)
    fig = _new_figure(width_in, height_in)
    ax = fig.add_subplot(1, 1, 1)
    bar_h = 0.72
    # Pixels per second along x, roughly (axes take ~75% of the width next to the legend).
    px_per_s = width_in * 100 * 0.75 / span
    label_bars = len(ids) <= 40
    edge_w = 0.4 if len(allv) <= 400 else 0.15

    # One collection per kind of bar (not one artist per visit) keeps thousands of visits fast.
    ok = allv[allv["status"] == "ok"]
    for kind in ("training", "evaluation"):
        bars = ok[ok["kind"] == kind]
        if len(bars):
            shrink = 0.7 if kind == "evaluation" else 1.0
            _bars(ax, bars, t0, ypos, bar_h * shrink, [colours[m] for m in bars["model_id"]],
                  edgecolors="#333333", linewidths=edge_w, hatch="////" if kind == "evaluation" else None,
                  alpha=0.75 if kind == "evaluation" else 1.0)
    failed = allv[allv["status"] != "ok"]
    if len(failed):
        for kind in ("training", "evaluation"):
            bars = failed[failed["kind"] == kind]
            if len(bars):
                _bars(ax, bars, t0, ypos, bar_h, [_FAILED_COLOUR] * len(bars), edgecolors="#7f0000",
                      linewidths=0.6, hatch="////" if kind == "evaluation" else None, zorder=3)
        mid_x = (failed["start"] + failed["end"]) / 2 - t0
        ax.scatter(mid_x, [ypos[w] for w in failed["worker"]], marker="x", s=70, color="black",
                   linewidths=2.0, zorder=5)
    if label_bars and len(train):
        for row in train[train["status"] == "ok"].itertuples(index=False):
            width_px = (row.end - row.start) * px_per_s
            if width_px >= 7.0 * len(row.model_id) + 6:
                ax.text((row.start + row.end) / 2 - t0, ypos[row.worker], row.model_id, ha="center",
                        va="center", fontsize=7.5, color="white" if _dark(colours[row.model_id]) else "black",
                        clip_on=True)

    ax.set_yticks(range(len(workers)), [_worker_label(allv, w) for w in workers])
    ax.set_ylim(-0.6, len(workers) - 0.4 if workers else 0.6)
    ax.invert_yaxis()
    ax.set_xlim(0, span * 1.01)
    ax.set_xlabel("seconds since the first visit started")
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or "MOP schedule: which model ran on which worker when", loc="left", fontsize=12)
    if not len(allv):
        ax.text(0.5, 0.5, "no visits recorded", transform=ax.transAxes, ha="center", va="center", color="grey")

    handles: list[Any] = [Patch(facecolor=colours[m], edgecolor="#333333", linewidth=0.4, label=m)
                          for m in ids[:LEGEND_MAX]]
    if len(ids) > LEGEND_MAX:
        handles.append(Patch(facecolor="none", edgecolor="none", label=f"+{len(ids) - LEGEND_MAX} more models"))
    handles.append(Patch(facecolor="#cccccc", edgecolor="#333333", linewidth=0.4, label="training sub-epoch"))
    handles.append(Patch(facecolor="#cccccc", edgecolor="#333333", linewidth=0.4, hatch="////", label="evaluation"))
    handles.append((Patch(facecolor=_FAILED_COLOUR, edgecolor="black", linewidth=0.6, label="failed attempt"),
                    Line2D([], [], marker="x", markersize=7, markeredgewidth=2, color="black", linestyle="none")))
    labels = [h.get_label() if not isinstance(h, tuple) else h[0].get_label() for h in handles]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              frameon=False, title=f"{len(ids)} model{'s' if len(ids) != 1 else ''}", title_fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return path


def _bars(ax, rows: pd.DataFrame, t0: float, ypos: dict[Any, int], height: float, colours: list[Any],
          **style: Any) -> None:
    """Add one rectangle per row (start..end on the row's worker) as a single PolyCollection."""
    import numpy as np
    from matplotlib.collections import PolyCollection

    x0 = rows["start"].to_numpy(dtype=float) - t0
    x1 = rows["end"].to_numpy(dtype=float) - t0
    y = np.array([ypos[w] for w in rows["worker"]], dtype=float)
    y0, y1 = y - height / 2, y + height / 2
    verts = np.stack([np.column_stack([x0, y0]), np.column_stack([x0, y1]),
                      np.column_stack([x1, y1]), np.column_stack([x1, y0])], axis=1)
    ax.add_collection(PolyCollection(verts, facecolors=colours, **style), autolim=False)


def _dark(rgba: tuple[float, ...]) -> bool:
    r, g, b = rgba[:3]
    return 0.299 * r + 0.587 * g + 0.114 * b < 0.5


# --------------------------------------------------------------------------------------------
# Loading an experiment directory
# --------------------------------------------------------------------------------------------

def _read_csv(experiment_dir: str, name: str, required: Sequence[str]) -> pd.DataFrame:
    path = os.path.join(experiment_dir, name)
    try:
        frame = pd.read_csv(path, dtype={"model_id": str})
    except pd.errors.EmptyDataError:
        raise CerebroError(f"experiment directory {experiment_dir!r}: {name} is empty (not even a header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise CerebroError(f"experiment directory {experiment_dir!r}: {name} is not a readable CSV file: {exc}") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise CerebroError(f"experiment directory {experiment_dir!r}: {name} has no column(s) {missing}; "
                           f"it has {list(frame.columns)}")
    return frame


def load_experiment(experiment_dir: str) -> dict[str, Any]:
    """Read the tables ``fit`` wrote into a (local) experiment directory.

    Returns ``{"experiment": dict, "history": DataFrame, "visits": DataFrame,
    "evaluations": DataFrame | None}``; ``evaluations`` is None when ``evaluations.csv`` is
    absent (directories written before it existed).  ``model_id`` columns are read as strings.
    Raises :class:`CerebroError` naming the directory and what is wrong with it: it does not
    exist / is not a directory, ``experiment.json``, ``history.csv`` or ``visits.csv`` is
    missing (all missing files are listed), a file is unreadable, or a table lacks a column
    the report needs (history: model_id, epoch; visits: model_id, worker, start, end, status).
    """
    experiment_dir = os.fspath(experiment_dir)
    if not os.path.exists(experiment_dir):
        raise CerebroError(f"experiment directory {experiment_dir!r} does not exist")
    if not os.path.isdir(experiment_dir):
        raise CerebroError(f"experiment directory {experiment_dir!r} is not a directory")
    needed = (EXPERIMENT_FILE, HISTORY_FILE, VISITS_FILE)
    missing = [f for f in needed if not os.path.isfile(os.path.join(experiment_dir, f))]
    if missing:
        raise CerebroError(
            f"experiment directory {experiment_dir!r} is missing {', '.join(missing)} "
            f"(an experiment directory holds {', '.join(needed)} after a finished fit)"
        )
    try:
        with open(os.path.join(experiment_dir, EXPERIMENT_FILE), encoding="utf-8") as fh:
            experiment = json.load(fh)
    except (OSError, ValueError) as exc:
        raise CerebroError(f"experiment directory {experiment_dir!r}: {EXPERIMENT_FILE} is not valid JSON: {exc}") from None
    if not isinstance(experiment, dict):
        raise CerebroError(f"experiment directory {experiment_dir!r}: {EXPERIMENT_FILE} must hold a JSON object")
    history = _read_csv(experiment_dir, HISTORY_FILE, HISTORY_COLUMNS)
    visits = _read_csv(experiment_dir, VISITS_FILE, VISIT_COLUMNS)
    evaluations = None
    if os.path.isfile(os.path.join(experiment_dir, EVALUATIONS_FILE)):
        evaluations = _read_csv(experiment_dir, EVALUATIONS_FILE, VISIT_COLUMNS)
    return {"experiment": experiment, "history": history, "visits": visits, "evaluations": evaluations}


# --------------------------------------------------------------------------------------------
# Summary figures
# --------------------------------------------------------------------------------------------

def _metric_and_mode(experiment: dict[str, Any]) -> tuple[str, str]:
    metric = str(experiment.get("evaluation_metric") or "loss")
    mode = experiment.get("mode")
    if mode not in ("min", "max"):
        mode = infer_mode(metric) or "min"
    return metric, mode


def _final_rows(history: pd.DataFrame) -> pd.DataFrame:
    """Each model's last-epoch row of ``history``, in model id order."""
    if history.empty:
        return history
    return (history.sort_values(["model_id", "epoch"], kind="stable")
            .groupby("model_id", sort=True).tail(1).reset_index(drop=True))


def best_model(history: pd.DataFrame, metric: str, mode: str) -> tuple[str, float] | None:
    """``(model_id, score)`` of the best model by ``val_<metric>`` at each model's last epoch.

    ``mode`` is ``"min"`` or ``"max"``; models whose last value is missing/NaN are skipped;
    ties go to the smallest model id (ids are numbered in creation order).  None when no
    model has a score (or the column does not exist).
    """
    column = "val_" + strip_prefix(metric)
    final = _final_rows(history)
    if final.empty or column not in final.columns:
        return None
    scores = pd.to_numeric(final[column], errors="coerce")
    # The one best-model rule (cerebro.core.metrics): ids are numbered in creation order.
    best = best_of(((mid, float(score), mid) for mid, score in zip(final["model_id"].astype(str), scores)), mode)
    if best is None or math.isnan(best[1]):
        return None
    return best


def summarize(loaded: dict[str, Any]) -> dict[str, Any]:
    """Figures of the report's summary from :func:`load_experiment`'s result.

    Keys: name, search, scheduler, seed, workers, epochs, metric, mode, best_model_id (or None),
    best_params (dict), best_score (float or None), num_models, failures (failed training
    visits), failed_evaluations, wall_s (last end - first start over visits and evaluations),
    busy_fraction (sum of end - start of ok visits and evaluations / (workers x wall_s); None
    without visits), started (unix time or None), first_start (earliest visit start or None).
    """
    exp = loaded["experiment"]
    history: pd.DataFrame = loaded["history"]
    train = _visit_frame(loaded["visits"], "training")
    evals = _visit_frame(loaded.get("evaluations"), "evaluation")
    frames = [f for f in (train, evals) if len(f)]
    allv = pd.concat(frames, ignore_index=True) if frames else train
    metric, mode = _metric_and_mode(exp)
    best = best_model(history, metric, mode)
    best_params: dict[str, Any] = {}
    if best is not None:
        row = _final_rows(history)
        row = row[row["model_id"].astype(str) == best[0]].iloc[0]
        best_params = {c[len("param_"):]: _plain(row[c]) for c in history.columns if c.startswith("param_")}
    workers = exp.get("num_workers")
    if not isinstance(workers, int) or workers <= 0:
        workers = int(allv["worker"].nunique()) if len(allv) else 0
    model_ids = set(history["model_id"].astype(str)) | set(train["model_id"]) | set(evals["model_id"])
    wall = float(allv["end"].max() - allv["start"].min()) if len(allv) else 0.0
    ok = allv[allv["status"] == "ok"]
    busy = float((ok["end"] - ok["start"]).sum()) / (workers * wall) if wall > 0 and workers else None
    return {
        "name": exp.get("name") or os.path.basename(os.path.normpath(loaded.get("dir", ""))) or "experiment",
        "search": exp.get("search"), "scheduler": exp.get("scheduler"), "seed": exp.get("seed"),
        "workers": workers, "epochs": exp.get("num_epochs"),
        "metric": metric, "mode": mode,
        "best_model_id": best[0] if best else None, "best_params": best_params,
        "best_score": best[1] if best else None,
        "num_models": len(model_ids),
        "failures": int((train["status"] != "ok").sum()),
        "failed_evaluations": int((evals["status"] != "ok").sum()),
        "wall_s": wall, "busy_fraction": busy,
        "started": exp.get("started") if isinstance(exp.get("started"), (int, float)) else None,
        "first_start": float(allv["start"].min()) if len(allv) else None,
    }


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (for display)."""
    return value.item() if hasattr(value, "item") else value


# --------------------------------------------------------------------------------------------
# Learning curves
# --------------------------------------------------------------------------------------------

def _metric_names(history: pd.DataFrame) -> list[str]:
    """Metric names with a train_ or val_ column, loss first."""
    names: list[str] = []
    for col in history.columns:
        for prefix in ("val_", "train_"):
            if col.startswith(prefix) and col[len(prefix):] not in names:
                names.append(col[len(prefix):])
    return sorted(names, key=lambda n: (n != "loss", n))


def plot_learning_curves(history: pd.DataFrame, *, best_model_id: str | None = None,
                         model_ids: Sequence[str] | None = None) -> bytes:
    """PNG bytes: one panel per metric (val solid, train dashed) per model; the best model bold.

    Panels are laid out two per row.  With more than 20 models the others are drawn thin and
    translucent and only the best model is named in the legend.
    """
    from matplotlib.lines import Line2D

    metrics = _metric_names(history)
    ids = [str(m) for m in model_ids] if model_ids is not None else sorted(history["model_id"].astype(str).unique())
    colours = dict(zip(ids, _palette(len(ids))))
    ncols = 1 if len(metrics) <= 1 else 2
    nrows = max(1, math.ceil(len(metrics) / ncols))
    fig = _new_figure(11.5 if ncols == 2 else 7.0, 3.8 * nrows + 0.4)
    if not metrics:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no metrics in history", ha="center", va="center", color="grey")
        ax.set_axis_off()
        return _save(fig)
    many = len(ids) > 20
    hist = history.copy()
    hist["model_id"] = hist["model_id"].astype(str)
    hist = hist.sort_values(["model_id", "epoch"], kind="stable")
    groups = dict(tuple(hist.groupby("model_id", sort=False)))
    epochs = pd.to_numeric(hist["epoch"], errors="coerce").dropna()
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for mid in ids:
            if mid not in groups:
                continue
            g = groups[mid]
            is_best = mid == best_model_id
            colour = "black" if is_best else colours[mid]
            lw = 2.6 if is_best else (0.8 if many else 1.4)
            alpha = 1.0 if is_best else (0.35 if many else 0.75)
            z = 10 if is_best else 2
            marker = "o" if len(g) <= 12 else None
            for prefix, style in (("val_", "-"), ("train_", "--")):
                col = prefix + metric
                if col in g.columns:
                    ax.plot(g["epoch"], pd.to_numeric(g[col], errors="coerce"), linestyle=style, color=colour,
                            linewidth=lw, alpha=alpha, zorder=z, marker=marker, markersize=3 if not is_best else 5)
        ax.set_title(metric, loc="left", fontsize=11)
        ax.set_xlabel("epoch")
        ax.grid(color="#e5e5e5", linewidth=0.6)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if len(epochs):
            lo, hi = int(epochs.min()), int(epochs.max())
            step = max(1, math.ceil((hi - lo + 1) / 12))
            ax.set_xticks(range(lo, hi + 1, step))
            if lo == hi:
                ax.set_xlim(lo - 0.5, hi + 0.5)
    handles: list[Any] = [Line2D([], [], color="grey", linestyle="-", label="validation"),
                          Line2D([], [], color="grey", linestyle="--", label="training")]
    if best_model_id is not None:
        handles.insert(0, Line2D([], [], color="black", linewidth=2.6, label=f"best: {best_model_id}"))
    if not many:
        handles += [Line2D([], [], color=colours[m], linewidth=1.4, label=m) for m in ids
                    if m != best_model_id and m in groups]
    else:
        handles.append(Line2D([], [], color="grey", alpha=0.5, label=f"{len(ids) - 1} other models"))
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.98), fontsize=8.5, frameon=False)
    return _save(fig)


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#222;margin:0;background:#f6f7f9}
main{max-width:1320px;margin:0 auto;padding:24px 32px 48px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:32px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;font-size:13px;margin-bottom:16px}
section{background:#fff;border:1px solid #e2e4e8;border-radius:6px;padding:16px 20px;margin-top:16px}
section h2{margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{flex:1 1 130px;background:#fff;border:1px solid #e2e4e8;border-radius:6px;padding:10px 14px}
.card .k{font-size:12px;color:#666;text-transform:uppercase;letter-spacing:.03em}
.card .v{font-size:20px;font-weight:600;margin-top:2px;overflow-wrap:anywhere}
.card.best{border-color:#2e7d32;background:#f1f8f1}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0;font-size:14px}
dl.kv dt{color:#666}
dl.kv dd{margin:0;overflow-wrap:anywhere}
code{font-family:SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
img{max-width:100%;height:auto;display:block}
.scroll{max-height:640px;overflow:auto;border:1px solid #e2e4e8}
table{border-collapse:collapse;font-size:12.5px;width:100%}
th,td{padding:4px 8px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th{background:#f0f2f5;position:sticky;top:0;z-index:1;font-weight:600}
td:first-child,th:first-child{text-align:left}
tbody tr:nth-child(even){background:#fafbfc}
tr.best td{background:#e7f4e8;font-weight:600}
tr.failed td{color:#b71c1c}
.num{font-variant-numeric:tabular-nums}
.note{color:#666;font-size:13px;margin:6px 0 10px}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, column: str = "") -> str:
    """Display text of a table cell (not escaped)."""
    value = _plain(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if column.startswith(("train_", "val_")):
            return f"{value:.4f}"
        if column in ("start", "end"):
            return f"{value:.2f}"
        return f"{value:.6g}"
    return str(value)


def _table(frame: pd.DataFrame, table_id: str, *, best_model_id: str | None = None,
           row_class: Any = None) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in frame.columns)
    rows = []
    for rec in frame.itertuples(index=False, name=None):
        rec = dict(zip(frame.columns, rec))
        cls = []
        if best_model_id is not None and str(rec.get("model_id")) == best_model_id:
            cls.append("best")
        if row_class is not None:
            cls.extend(row_class(rec))
        attr = f' class="{" ".join(cls)}"' if cls else ""
        cells = "".join(f'<td class="num">{_esc(_fmt(rec[c], str(c)))}</td>' for c in frame.columns)
        rows.append(f"<tr{attr}>{cells}</tr>")
    return (f'<table id="{_esc(table_id)}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _card(key: str, value: Any, cls: str = "") -> str:
    return (f'<div class="card{" " + cls if cls else ""}"><div class="k">{_esc(key)}</div>'
            f'<div class="v">{_esc(value)}</div></div>')


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 120:
        return f"{int(minutes)} min {s:.0f} s"
    hours, m = divmod(minutes, 60)
    return f"{int(hours)} h {int(m)} min"


def render_html(loaded: dict[str, Any], gantt_png: bytes, curves_png: bytes) -> str:
    """The report page as one string (inline CSS, images as data URIs, all values escaped)."""
    exp = loaded["experiment"]
    history: pd.DataFrame = loaded["history"]
    s = summarize(loaded)
    metric_col = "val_" + strip_prefix(s["metric"])
    best_id = s["best_model_id"]
    score = "n/a" if s["best_score"] is None else f"{s['best_score']:.4f}"
    busy = "n/a" if s["busy_fraction"] is None else f"{s['busy_fraction']:.0%}"
    started = (time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(s["started"]))
               if s["started"] is not None else "unknown")
    failures = str(s["failures"]) + (f" (+{s['failed_evaluations']} evaluations)" if s["failed_evaluations"] else "")

    cards = "".join([
        _card("best model", best_id or "none", "best"),
        _card(f"best {metric_col} ({s['mode']})", score, "best"),
        _card("models", s["num_models"]),
        _card("workers × epochs", f"{s['workers']} × {s['epochs'] if s['epochs'] is not None else '?'}"),
        _card("wall time", _duration(s["wall_s"])),
        _card("workers busy", busy),
        _card("failed attempts", failures),
    ])
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in s["best_params"].items()) or "none"
    details = [
        ("experiment", s["name"]), ("search", s["search"] or "?"), ("scheduler", s["scheduler"] or "?"),
        ("evaluation metric", f"{s['metric']} ({'higher' if s['mode'] == 'max' else 'lower'} is better; "
                              f"ranked by {metric_col} at each model's last epoch)"),
        ("best model", f"{best_id or 'none'}: {params}"),
        ("started", started + (f" (first visit {s['first_start'] - s['started']:.1f} s later: data preparation "
                               f"and worker start-up)" if s["started"] is not None and s["first_start"] is not None
                               else "")),
        ("seed", s["seed"]),
        ("validation", exp.get("validation", "?")),
        ("features → labels", f"{', '.join(map(str, exp.get('feature_columns') or []))} → "
                              f"{', '.join(map(str, exp.get('label_columns') or []))}"),
        ("search space", exp.get("search_space", "?")),
        ("data", f"key {exp.get('data_key', '?')}, hash {str(exp.get('data_hash', '?'))[:16]}…"),
    ]
    kv = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in details)

    # Leaderboard: each model's last epoch, best first.
    final = _final_rows(history)
    leader = ""
    if not final.empty:
        cols = ["model_id", "epoch"] + [c for c in final.columns if c.startswith("val_")] \
            + [c for c in final.columns if c.startswith("train_")] + [c for c in final.columns if c.startswith("param_")]
        board = final[cols]
        if metric_col in board.columns:
            board = board.assign(_k=pd.to_numeric(board[metric_col], errors="coerce")).sort_values(
                "_k", ascending=s["mode"] == "min", na_position="last", kind="stable").drop(columns="_k")
        board = board.rename(columns={"epoch": "last epoch"})
        board.insert(0, "rank", range(1, len(board) + 1))
        leader = (f'<section><h2>Models ranked by {_esc(metric_col)} at their last epoch</h2>'
                  f'<div class="scroll">{_table(board, "leaderboard", best_model_id=best_id)}</div></section>')

    hist = history.sort_values(["model_id", "epoch"], kind="stable") if not history.empty else history
    history_html = _table(hist, "history", best_model_id=best_id)

    workers_html = _workers_table(loaded["visits"], loaded.get("evaluations"))
    failed_html = ""
    fail_frames = []
    for frame, kind in ((loaded["visits"], "training"), (loaded.get("evaluations"), "evaluation")):
        if frame is not None and len(frame):
            f = frame[frame["status"].astype(str) != "ok"]
            if len(f):
                fail_frames.append(f.assign(kind=kind))
    if fail_frames:
        fails = pd.concat(fail_frames, ignore_index=True)
        cols = [c for c in ("kind", "model_id", "epoch", "partition", "worker", "host", "device", "attempt", "start",
                            "end", "status")
                if c in fails.columns]
        fails = fails[cols]
        if "start" in fails.columns and "end" in fails.columns and s["first_start"] is not None:
            start = pd.to_numeric(fails["start"], errors="coerce")
            end = pd.to_numeric(fails["end"], errors="coerce")
            fails = fails.drop(columns=["start", "end", "status"]).assign(
                **{"at (s)": (start - s["first_start"]).round(2), "lasted (s)": (end - start).round(2)})
        failed_html = (f'<section><h2>Failed attempts ({len(fails)})</h2><p class="note">Each failed sub-epoch is '
                       f'retried from the model\'s last committed checkpoint.</p>'
                       f'<div class="scroll">{_table(fails, "failures", row_class=lambda r: ["failed"])}</div></section>')

    no_evals = "" if loaded.get("evaluations") is not None else \
        '<p class="note">This directory has no evaluations.csv: only training visits are drawn.</p>'
    title = f"cerebro report: {s['name']}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title>
<style>{_CSS}</style></head>
<body><main>
<h1>{_esc(title)}</h1>
<div class="sub">{_esc(s['search'] or 'model selection')} with model hopper parallelism · started {_esc(started)}</div>
<div class="cards">{cards}</div>
<section><h2>Summary</h2><dl class="kv">{kv}</dl></section>
{leader}
<section><h2>Learning curves</h2>
<p class="note">Validation solid, training dashed; the best model ({_esc(best_id or 'none')}) in bold black.</p>
{_img(curves_png, "learning curves")}</section>
<section><h2>Schedule (Gantt chart)</h2>
<p class="note">One row per worker; colour = model, hatched = evaluation, red with × = failed attempt.
Workers were busy {_esc(busy)} of the {_esc(_duration(s['wall_s']))} span.</p>{no_evals}
{_img(gantt_png, "MOP schedule")}</section>
{workers_html}
{failed_html}
<section><h2>History ({len(history)} rows: one per model and epoch)</h2>
<div class="scroll">{history_html}</div></section>
</main></body></html>
"""


def _workers_table(visits: pd.DataFrame, evaluations: pd.DataFrame | None) -> str:
    """One row per worker: where it ran (host, device) and what it did; "" without those columns."""
    frames = [f for f in (visits, evaluations) if f is not None and len(f)]
    if not frames:
        return ""
    allv = pd.concat(frames, ignore_index=True)
    if "device" not in allv.columns and "host" not in allv.columns:
        return ""   # written before cerebro recorded them
    rows = []
    for worker, group in allv.groupby("worker", sort=True):
        ok = group[group["status"].astype(str) == "ok"]
        busy = pd.to_numeric(ok["end"], errors="coerce") - pd.to_numeric(ok["start"], errors="coerce")
        rows.append({
            "worker": worker,
            "host": _distinct(group, "host", ", "), "device": _distinct(group, "device", ", "),
            "visits": len(group), "failed": int((group["status"].astype(str) != "ok").sum()),
            "busy (s)": round(float(busy.sum()), 2),
        })
    return (f'<section><h2>Workers ({len(rows)})</h2><p class="note">Where each worker ran: its host and device '
            f'(<code>cpu</code> or <code>cuda:&lt;physical id&gt;</code>).</p>'
            f'<div class="scroll">{_table(pd.DataFrame(rows), "workers")}</div></section>')


def write_report(experiment_dir: str) -> tuple[str, str]:
    """Write ``<dir>/gantt.png`` and ``<dir>/report.html``; return ``(png_path, html_path)``.

    Reads the directory with :func:`load_experiment` (so raises the same
    :class:`CerebroError` for a missing or incomplete directory).  The HTML is self-contained:
    summary, ranked models, learning curves, the Gantt chart, failed attempts and the full
    history as ``<table id="history">``.  Existing report files are replaced atomically.
    """
    experiment_dir = os.fspath(experiment_dir)
    loaded = load_experiment(experiment_dir)
    loaded["dir"] = experiment_dir
    s = summarize(loaded)
    history: pd.DataFrame = loaded["history"]
    ids = set(history["model_id"].astype(str))
    for frame in (loaded["visits"], loaded["evaluations"]):
        if frame is not None and "model_id" in frame.columns:
            ids |= set(frame["model_id"].astype(str))
    model_ids = sorted(ids)
    png_path = os.path.join(experiment_dir, GANTT_FILE)
    plot_gantt(loaded["visits"], loaded["evaluations"], png_path, model_ids=model_ids,
               title=f"MOP schedule of {s['name']}")
    with open(png_path, "rb") as fh:
        gantt_png = fh.read()
    curves_png = plot_learning_curves(history, best_model_id=s["best_model_id"], model_ids=model_ids)
    page = render_html(loaded, gantt_png, curves_png)
    html_path = os.path.join(experiment_dir, REPORT_FILE)
    tmp = f"{html_path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(page)
    os.replace(tmp, html_path)
    return png_path, html_path
