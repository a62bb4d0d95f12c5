"""What the deterministic scheduler costs in utilisation: busy fraction, dynamic vs deterministic.

``scheduler="deterministic"`` delivers the search driver's reports in the canonical logical
order (:mod:`cerebro.core.order`): a model's epoch report waits until every report before it in
``(tick, model index)`` order has arrived, so no decision depends on timing.  A model whose
report waits is not trained in the meantime, and a worker with nothing else to run idles.
This benchmark measures that cost for the searches whose decisions depend on reports (TPE,
Hyperband, ASHA, PBT); the goal is at most 5 points of busy fraction.

Workload, sizing and execution are those of :mod:`benchmarks.search_budget` (digits, the small
MLP, the same search space, ``plan(budget, population, workers)``, ``make_search``, one
``LocalBackend(2)`` and one ``LocalStore`` shared by every run, ``seed=2020``); only the
scheduler changes between the two runs of a search.  The warm-up (not reported) is larger than
search_budget's: a 1-epoch grid over every (width, batch_size) the space can draw (16 models),
because a worker's first visit with a new layer shape costs seconds and would otherwise land
on the first runs only (see ``warmup_space``).

Order: the runs are interleaved so that drift of the (shared) machine cancels: repeat 1 runs
tpe-dynamic, tpe-deterministic, hyperband-dynamic, hyperband-deterministic, ...; repeat 2 the
same searches with the deterministic run first; repeat 3 dynamic first again, and so on.

Per run, from the experiment directory in the store (``cerebro.report.load_experiment`` +
``cerebro.report.summarize``): ``busy_fraction`` = the sum of the durations of the ok training
visits and evaluations / (workers x span), span = first visit start to last visit end (data
preparation and worker start-up are outside it); also the span, the wall time of ``fit``, the
models built, the model-epochs trained (rows of the history), the best validation accuracy,
each worker's idle seconds within the span, and a sha256 of the history (every column, rows
sorted by model and epoch; metrics written with full precision).

Per search: the median busy fraction under each scheduler with its min-max over the repeats;
the difference of the medians in points (deterministic - dynamic; negative = the
deterministic scheduler is less busy) and the same difference within each repeat (the two
runs of a pair ran back to back, so it is the least exposed to drift); the ratio of the
median ``fit`` wall times (deterministic / dynamic); and whether the deterministic repeats
gave identical histories (they must; recorded as a check, ``deterministic_identical``, that
does not stop the run; None with one repeat).  The same is recorded for the dynamic
scheduler (``dynamic_identical``), for information only: its decisions may depend on timing.

Usage: python -m benchmarks.determinism_cost [--quick] [--repeats N] [--budget B] [--only tpe,asha]
       [--warmup shapes|one] [--out DIR]

Defaults: budget 48 model-epochs (half of search_budget's 96: 4 searches x 2 schedulers x 3
repeats took 9 minutes on 2 cores shared with other jobs; 96 takes about twice as long), PBT
population 8, 3 repeats.  ``--quick``: budget 16, population 4, 1 repeat (about 2 minutes).  Prints the
markdown table; with ``--out DIR`` also writes ``determinism_cost.json`` and
``determinism_cost.md`` there.  Nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

from benchmarks import search_budget as sb

SEARCHES = ("tpe", "hyperband", "asha", "pbt")
SCHEDULERS = ("dynamic", "deterministic")
GOAL_POINTS = 5.0
DEFAULT_BUDGET, QUICK_BUDGET = 48, 16
DEFAULT_POPULATION, QUICK_POPULATION = 8, 4
DEFAULT_REPEATS = 3


def run_order(searches: list[str], repeats: int) -> list[tuple[int, str, str]]:
    """``(repeat, search, scheduler)`` in the order they run: interleaved, and the scheduler
    that goes first alternates from one repeat to the next (dynamic first in repeat 1)."""
    order = []
    for r in range(1, repeats + 1):
        first = SCHEDULERS if r % 2 == 1 else SCHEDULERS[::-1]
        for name in searches:
            order.extend((r, name, sched) for sched in first)
    return order


def history_digest(history) -> str:
    """sha256 of the history: every column, rows sorted by (model_id, epoch), full precision."""
    frame = history.sort_values(["model_id", "epoch"], kind="stable").reset_index(drop=True)
    frame = frame[sorted(frame.columns)]
    return hashlib.sha256(frame.to_csv(index=False, float_format="%.17g").encode()).hexdigest()


def idle_per_worker(loaded: dict[str, Any], workers: int) -> list[float]:
    """Each worker's seconds within the span (first start to last end, all workers) not spent
    in an ok training visit or evaluation."""
    import pandas as pd

    frames = [f for f in (loaded["visits"], loaded.get("evaluations")) if f is not None and len(f)]
    allv = pd.concat(frames, ignore_index=True)
    span = float(allv["end"].max() - allv["start"].min())
    ok = allv[allv["status"] == "ok"]
    busy = (ok["end"] - ok["start"]).groupby(ok["worker"]).sum()
    return [round(span - float(busy.get(w, 0.0)), 3) for w in range(workers)]


def measure(loaded: dict[str, Any], workers: int) -> dict[str, Any]:
    """The figures of one run from its experiment directory."""
    from cerebro.report import summarize

    summary = summarize(loaded)
    history = loaded["history"]
    ok = loaded["visits"][loaded["visits"]["status"] == "ok"]
    return {
        "busy_fraction": round(float(summary["busy_fraction"]), 4) if summary["busy_fraction"] is not None else None,
        "span_s": round(float(summary["wall_s"]), 2),
        "models": int(summary["num_models"]),
        "model_epochs": int(len(history)),
        "sub_epochs": int(len(ok)),
        "best_val_accuracy": round(float(summary["best_score"]), 4) if summary["best_score"] is not None else None,
        "idle_s_per_worker": idle_per_worker(loaded, workers),
        "history_sha256": history_digest(history),
    }


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _spread(values):
    values = [v for v in values if v is not None]
    return [min(values), max(values)] if values else None


def _identical(runs: list[dict[str, Any]]):
    """True/False: every repeat's history is the same; None with fewer than 2 successful runs."""
    digests = [r["history_sha256"] for r in runs if "history_sha256" in r]
    return len(set(digests)) == 1 if len(digests) >= 2 else None


def aggregate(name: str, settings: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-search figures over its runs (both schedulers, every repeat)."""
    row: dict[str, Any] = {"search": name, "settings": settings}
    for sched in SCHEDULERS:
        mine = [r for r in runs if r["scheduler"] == sched and "error" not in r]
        row[sched] = {
            "runs": len(mine),
            "errors": [r["error"] for r in runs if r["scheduler"] == sched and "error" in r],
            "busy_fraction": _median([r["busy_fraction"] for r in mine]),
            "busy_fraction_spread": _spread([r["busy_fraction"] for r in mine]),
            "wall_s": _median([r["wall_s"] for r in mine]),
            "wall_s_spread": _spread([r["wall_s"] for r in mine]),
            "span_s": _median([r["span_s"] for r in mine]),
            "models": _median([r["models"] for r in mine]),
            "model_epochs": _median([r["model_epochs"] for r in mine]),
            "model_epochs_spread": _spread([r["model_epochs"] for r in mine]),
            "best_val_accuracy": _median([r["best_val_accuracy"] for r in mine]),
        }
    dyn, det = row["dynamic"], row["deterministic"]
    both = dyn["busy_fraction"] is not None and det["busy_fraction"] is not None
    row["busy_difference_points"] = round(100 * (det["busy_fraction"] - dyn["busy_fraction"]), 2) if both else None
    row["within_goal"] = (row["busy_difference_points"] >= -GOAL_POINTS) if both else None
    # The same difference within each repeat (the two runs of a pair ran back to back).
    by_repeat = {(r["repeat"], r["scheduler"]): r["busy_fraction"] for r in runs
                 if "error" not in r and r.get("busy_fraction") is not None}
    row["busy_difference_points_paired"] = [
        round(100 * (by_repeat[(rep, "deterministic")] - by_repeat[(rep, "dynamic")]), 2)
        for rep in sorted({rep for rep, _ in by_repeat}) if (rep, "dynamic") in by_repeat and (rep, "deterministic") in by_repeat]
    row["wall_ratio_det_dyn"] = (round(det["wall_s"] / dyn["wall_s"], 3)
                                 if det["wall_s"] and dyn["wall_s"] else None)
    row["deterministic_identical"] = _identical([r for r in runs if r["scheduler"] == "deterministic"])
    row["dynamic_identical"] = _identical([r for r in runs if r["scheduler"] == "dynamic"])
    return row


def warmup_space():
    """Every (width, batch_size) of the search space, one lr: the warm-up trains each shape once.

    search_budget's 1-model warm-up is not enough here: the first time a worker trains a new
    layer shape costs seconds (kernels built for that shape), later ones ~0.1 s, so without
    this the first run of the first repeat (tpe-dynamic) was several times slower than the
    same run later."""
    from cerebro import hp_choice

    return {"lr": hp_choice([1e-3]), "width": hp_choice(list(range(16, 129, 16))), "batch_size": hp_choice(sb.BATCH_SIZES)}


def run(budget: int, population: int, workers: int, seed: int, repeats: int, searches: list[str],
        warmup: str = "shapes") -> dict[str, Any]:
    from cerebro import GridSearch, LocalBackend, LocalStore, hp_choice
    from cerebro.report import load_experiment

    sizes = sb.plan(budget, population, workers)
    df = sb.digits_frame()
    tmp = tempfile.mkdtemp(prefix="cerebro-determinism-cost-")
    runs: list[dict[str, Any]] = []
    started_all = time.perf_counter()
    try:
        store = LocalStore(tmp)
        with LocalBackend(workers) as backend:
            # Warm-up (not reported): prepares the data once, starts TF in the workers and (with
            # warmup="shapes") trains every layer shape the searches can build (see warmup_space).
            space = (warmup_space() if warmup == "shapes"
                     else {"lr": hp_choice([1e-3]), "width": hp_choice([32]), "batch_size": hp_choice([64])})
            GridSearch(backend, store, sb.make_estimator, space, num_epochs=1, evaluation_metric="accuracy",
                       seed=seed, verbose=0, tensorboard=False, experiment_name="warmup").fit(df)
            for position, (rep, name, sched) in enumerate(run_order(searches, repeats)):
                size = sizes[name]
                experiment = f"{name}-{sched}-r{rep}"
                record: dict[str, Any] = {"search": name, "scheduler": sched, "repeat": rep, "position": position,
                                          "experiment": experiment}
                print(f"# {experiment}: {size['settings']}", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                try:
                    result = sb.make_search(name, backend, store, size, seed, experiment, scheduler=sched).fit(df)
                    record["wall_s"] = round(time.perf_counter() - t0, 2)
                    record.update(measure(load_experiment(result.experiment_dir), workers))
                except Exception as exc:  # one run failing must not hide the others' figures
                    record["error"] = f"{type(exc).__name__}: {exc}"
                    record["wall_s"] = round(time.perf_counter() - t0, 2)
                runs.append(record)
                print(f"#   {json.dumps(record)}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [aggregate(name, sizes[name]["settings"], [r for r in runs if r["search"] == name]) for name in searches]
    return {"benchmark": "determinism_cost", "budget_model_epochs": budget, "population": population,
            "workers": workers, "seed": seed, "repeats": repeats, "searches": searches, "warmup": warmup,
            "order": "interleaved; the scheduler that runs first alternates per repeat (dynamic first in repeat 1)",
            "goal_points": GOAL_POINTS, "total_wall_s": round(time.perf_counter() - started_all, 1),
            "results": rows, "runs": runs}


def _fmt_busy(cell: dict[str, Any]) -> str:
    if cell["busy_fraction"] is None:
        return "error" if cell["errors"] else "-"
    lo, hi = cell["busy_fraction_spread"]
    return f"{cell['busy_fraction']:.3f} ({lo:.3f}-{hi:.3f})" if hi > lo else f"{cell['busy_fraction']:.3f}"


def _fmt_wall(cell: dict[str, Any]) -> str:
    if cell["wall_s"] is None:
        return "-"
    lo, hi = cell["wall_s_spread"]
    return f"{cell['wall_s']:.1f} ({lo:.1f}-{hi:.1f})" if hi > lo else f"{cell['wall_s']:.1f}"


def _pair(row: dict[str, Any], key: str, fmt: str = "{}") -> str:
    values = [row[s][key] for s in SCHEDULERS]
    return " / ".join("-" if v is None else fmt.format(v) for v in values)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Command: `{report.get('command', 'python -m benchmarks.determinism_cost')}`",
        "",
        f"Budget {report['budget_model_epochs']} model-epochs per search (PBT population {report['population']}); "
        f"digits, MLP, LocalBackend({report['workers']}), seed {report['seed']}, {report['repeats']} repeat(s), "
        f"runs {report['order']}.  Busy fraction = ok training + evaluation time / (workers x span from the "
        "first visit start to the last visit end); median over the repeats, (min-max) where they differ.  "
        "Δ = deterministic - dynamic in points (goal: >= -5), of the medians, (range of the "
        "per-repeat paired differences).  Wall = `fit` seconds.",
        "",
        "| search | settings | busy dynamic | busy deterministic | Δ points | wall s dynamic | wall s deterministic "
        "| wall det/dyn | models dyn / det | model-epochs dyn / det | best val acc dyn / det | det repeats identical |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        diff = "-" if r["busy_difference_points"] is None else f"{r['busy_difference_points']:+.1f}"
        paired = r.get("busy_difference_points_paired") or []
        if len(paired) > 1:
            diff += f" ({min(paired):+.1f} to {max(paired):+.1f})"
        ident = {True: "yes", False: "**NO**", None: "n/a (1 repeat)"}[r["deterministic_identical"]]
        ratio = "-" if r["wall_ratio_det_dyn"] is None else f"{r['wall_ratio_det_dyn']:.2f}"
        lines.append(
            f"| {r['search']} | {r['settings']} | {_fmt_busy(r['dynamic'])} | {_fmt_busy(r['deterministic'])} | {diff} "
            f"| {_fmt_wall(r['dynamic'])} | {_fmt_wall(r['deterministic'])} | {ratio} | {_pair(r, 'models', '{:g}')} "
            f"| {_pair(r, 'model_epochs', '{:g}')} | {_pair(r, 'best_val_accuracy', '{:.4f}')} | {ident} |")
    lines += ["", f"Total wall time: {report['total_wall_s']:.0f} s (warm-up included)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=None,
                        help=f"model-epochs per search (default {DEFAULT_BUDGET}; {QUICK_BUDGET} with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smaller run: budget {QUICK_BUDGET}, PBT population {QUICK_POPULATION}, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None, help=f"default {DEFAULT_REPEATS}; 1 with --quick")
    parser.add_argument("--population", type=int, default=None,
                        help=f"PBT population (default {DEFAULT_POPULATION}; {QUICK_POPULATION} with --quick)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--only", default=",".join(SEARCHES), help=f"comma-separated subset of {','.join(SEARCHES)}")
    parser.add_argument("--warmup", choices=("shapes", "one"), default="shapes",
                        help="shapes (default): a 1-epoch grid over every (width, batch_size); one: a single "
                             "1-epoch model, as search_budget (faster; the first runs then pay for new shapes)")
    parser.add_argument("--out", default=None,
                        help="also write determinism_cost.json and determinism_cost.md into this directory")
    args = parser.parse_args(argv)
    budget = args.budget if args.budget is not None else (QUICK_BUDGET if args.quick else DEFAULT_BUDGET)
    population = args.population if args.population is not None else (QUICK_POPULATION if args.quick else DEFAULT_POPULATION)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else DEFAULT_REPEATS)
    searches = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(searches) - set(SEARCHES))
    if unknown or not searches:
        parser.error(f"--only names unknown searches {unknown}; choose from {list(SEARCHES)}")
    if budget < 1 or population < 2 or args.workers < 1 or repeats < 1:
        parser.error("--budget, --workers and --repeats must be >= 1, --population >= 2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    report = run(budget, population, args.workers, args.seed, repeats, searches, args.warmup)
    report["command"] = " ".join(["python -m benchmarks.determinism_cost",
                                  *(sys.argv[1:] if argv is None else list(argv))])
    table = markdown(report)
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "determinism_cost.json"), "w") as fh:
            json.dump(report, fh, indent=2)
        with open(os.path.join(args.out, "determinism_cost.md"), "w") as fh:
            fh.write(table + "\n")
    failed = any("error" in r for r in report["runs"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
