"""Search algorithms under one fixed training budget: what each finds for the same work.

Workload (the same for every search, never tuned per search):

- data: scikit-learn's digits (1,797 rows; ``features`` = the 64 pixels / 16 as float32,
  ``label`` = the digit), 25% held out for validation by cerebro's seeded content hash;
- model: a small MLP, 64 -> width (ReLU) -> 10 (softmax), Adam(lr), sparse categorical
  cross-entropy, ``batch_size`` from the configuration; evaluation metric: validation accuracy;
- search space: ``lr`` hp_loguniform(1e-4, 1e-1), ``width`` hp_quniform(16, 128, 16),
  ``batch_size`` hp_choice([16, 64]); GridSearch needs hp_choice dimensions, so it gets the
  grid lr in {1e-4, 1e-3, 1e-2, 1e-1} x width in {32, 128} x batch_size in {16, 64}
  (16 configurations spanning the same ranges);
- execution: one ``LocalBackend(2)`` (2 worker processes, 1 TensorFlow thread each), one
  ``LocalStore`` in a temporary directory shared by all searches (the prepared data is
  reused), ``seed=2020``, ``verbose=0``, ``tensorboard=False``; a 1-model 1-epoch warm-up
  (not reported) prepares the data and starts the workers' TensorFlow first.  Every search
  draws from the same seeded generator, so Random, Hyperband, ASHA and PBT start from the
  same first configurations (common random numbers; TPE's draws go through hyperopt).

Budget: ``--budget B`` model-epochs (one model trained for one epoch = one sub-epoch on each
of the 2 workers' partitions, so B x 2 training sub-epochs).  Each search is sized to it:

- Grid: the 16 grid configurations x ``E = max(1, B // 16)`` epochs;
- Random, TPE: ``B // E`` configurations x ``E`` epochs (the same E as the grid).  Note that
  hyperopt's TPE draws its first 20 configurations at random (``n_startup_jobs=20``, which
  TPESearch does not expose), so with 20 configurations or fewer TPE *is* random search with
  a different random stream;
- Hyperband (eta=3): the largest ``max_epochs`` R whose plan (every bracket of successive
  halving, computed as the driver does) is at most B model-epochs;
- ASHA (grace_period=1, reduction_factor=3, max_epochs=R as Hyperband's): the most
  configurations whose mean work in a simulation of ASHA's promotion rule (random model
  qualities, no training; see ``asha_simulated_epochs``) is at most B model-epochs.  The
  first models at each rung go on before there is anything to compare them with, so ASHA
  trains more than the textbook 1/3 per rung;
- PBT: a population of ``P = 8`` (4 with ``--quick``) x ``B // P`` epochs,
  perturbation_interval=1, quantile_fraction=0.25, mutating only what keeps the architecture
  (the weights are copied): lr x 0.8 or x 1.2 (within its bounds) and batch_size resampled
  with probability 0.25; width comes from the source model.

Reported per search: the best validation accuracy (``result.best_score``: the last epoch of
the best model), the configurations explored (models built; for PBT also the distinct
parameter sets that trained, exploits included), the model-epochs actually trained
(``len(result.history)``) next to the planned ones, and the wall time of ``fit``.
Digits is small and the validation set has about 450 rows (one row is 0.22%), so
differences below ~1% are noise, and one seed is one draw: read the table as what each
search does with the budget (configurations, epochs per configuration), not as a ranking.

Usage: python -m benchmarks.search_budget [--budget 96] [--quick] [--only grid,asha] [--out DIR]

Runs about 5 minutes on 2 shared cores (``--quick``: about 2.5).  ``--quick`` is
``--budget 32`` with a population of 4.  Prints a markdown table and one JSON
line; with ``--out DIR`` also writes ``search_budget.json`` and ``search_budget.md`` there.
Nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

SEARCHES = ("grid", "random", "tpe", "hyperband", "asha", "pbt")
LR_LOW, LR_HIGH = 1e-4, 1e-1
GRID_LR = [1e-4, 1e-3, 1e-2, 1e-1]
GRID_WIDTH = [32, 128]
BATCH_SIZES = [16, 64]
HB_ETA = 3
ASHA_RF = 3


# ---------------------------------------------------------------------------- workload

def digits_frame():
    from cerebro.datasets import digits_frame as frame

    return frame()


def make_estimator(params: dict):
    import keras

    from cerebro import KerasEstimator

    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(int(params["width"]), activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    return KerasEstimator(model, keras.optimizers.Adam(float(params["lr"])), "sparse_categorical_crossentropy",
                          metrics=["accuracy"], batch_size=int(params["batch_size"]))


def search_space():
    from cerebro import hp_choice, hp_loguniform, hp_quniform

    return {"lr": hp_loguniform(LR_LOW, LR_HIGH), "width": hp_quniform(16, 128, 16), "batch_size": hp_choice(BATCH_SIZES)}


def grid_space():
    from cerebro import hp_choice

    return {"lr": hp_choice(GRID_LR), "width": hp_choice(GRID_WIDTH), "batch_size": hp_choice(BATCH_SIZES)}


def mutate_lr(value, rng):
    """PBT explore for lr: x0.8 or x1.2, kept within the search range."""
    factor = (0.8, 1.2)[int(rng.integers(2))]
    return float(min(max(float(value) * factor, LR_LOW), LR_HIGH))


def mutate_batch_size(value, rng):
    """PBT explore for batch_size: resampled with probability 0.25 (the default rule for choices)."""
    if rng.random() < 0.25:
        return BATCH_SIZES[int(rng.integers(len(BATCH_SIZES)))]
    return value


# ---------------------------------------------------------------------------- sizing

def hyperband_planned_epochs(max_epochs: int, eta: int) -> int:
    """Model-epochs of Hyperband's whole plan (brackets s_max..0 of successive halving), as
    cerebro's HyperbandDriver computes it: rung i of bracket s holds floor(n / eta^i) models
    trained to round(R / eta^(s-i)) epochs, n = ceil((s_max+1) / (s+1) * eta^s)."""
    s_max = 0
    while eta ** (s_max + 1) <= max_epochs:
        s_max += 1
    total = 0
    for s in range(s_max, -1, -1):
        n = -(-((s_max + 1) * eta ** s) // (s + 1))
        previous = 0
        for i in range(s + 1):
            div = eta ** (s - i)
            r_i = max((2 * max_epochs + div) // (2 * div), 1)
            total += (n // eta ** i) * (r_i - previous)
            previous = r_i
    return total


def asha_rungs(max_epochs: int, grace: int, rf: int) -> list[int]:
    rungs, r = [], grace
    while r < max_epochs:
        rungs.append(r)
        r *= rf
    return rungs + [max_epochs]


def asha_simulated_epochs(num_models: int, max_epochs: int, grace: int, rf: int, workers: int,
                          trials: int = 40, seed: int = 0) -> float:
    """Mean model-epochs that ASHA's rule trains, by simulation (no training): each model has
    a fixed random quality, ``workers`` models train at once and a random one ends its epoch
    next.  The rule, as documented for ASHASearch: at a rung, a model continues if it is among
    the best max(floor(recorded / rf), 1) recorded there, else it pauses; a paused model is
    resumed once the rung's top grows to include it (never twice); when every configuration
    has started and none trains, the paused ones stop.  Early promotions make this more than
    the textbook 1/rf per rung."""
    import numpy as np

    rungs = asha_rungs(max_epochs, grace, rf)
    rng = np.random.default_rng(seed)
    total = 0
    for _ in range(trials):
        quality = rng.random(num_models)
        epoch = [0] * num_models
        status = ["new"] * num_models          # new | run | paused | done
        recorded: list[list[int]] = [[] for _ in rungs[:-1]]
        promoted: list[set[int]] = [set() for _ in rungs[:-1]]
        started = 0
        while True:
            while started < num_models and status.count("run") < workers:
                status[started] = "run"
                started += 1
            running = [i for i, st in enumerate(status) if st == "run"]
            if not running:
                break
            m = running[int(rng.integers(len(running)))]
            epoch[m] += 1
            total += 1
            if epoch[m] >= max_epochs:
                status[m] = "done"
            elif epoch[m] in rungs:
                k = rungs.index(epoch[m])
                recorded[k].append(m)
                status[m] = "paused"
                top = sorted(recorded[k], key=lambda i: quality[i])[:max(len(recorded[k]) // rf, 1)]
                for i in top:
                    if i not in promoted[k] and status[i] == "paused" and epoch[i] == rungs[k]:
                        promoted[k].add(i)
                        status[i] = "run"
            if started == num_models and "run" not in status:
                status = ["done" if st == "paused" else st for st in status]
    return total / trials


def plan(budget: int, population: int, workers: int) -> dict[str, dict[str, Any]]:
    """Per search: its size arguments and the model-epochs they plan."""
    grid_size = len(GRID_LR) * len(GRID_WIDTH) * len(BATCH_SIZES)
    epochs = max(1, budget // grid_size)
    models = max(1, budget // epochs)
    hb_r = 1
    for r in range(1, 200):
        if hyperband_planned_epochs(r, HB_ETA) <= budget:
            hb_r = r
    asha_models, asha_planned = 1, asha_simulated_epochs(1, hb_r, 1, ASHA_RF, workers)
    for n in range(2, budget + 1):   # the most configurations whose simulated work fits the budget
        work = asha_simulated_epochs(n, hb_r, 1, ASHA_RF, workers)
        if work > budget:
            break
        asha_models, asha_planned = n, work
    pbt_epochs = max(1, budget // population)
    return {
        "grid": {"args": {"num_epochs": epochs}, "planned": grid_size * epochs,
                 "settings": f"{grid_size} configs x {epochs} epochs"},
        "random": {"args": {"num_models": models, "num_epochs": epochs}, "planned": models * epochs,
                   "settings": f"{models} configs x {epochs} epochs"},
        "tpe": {"args": {"num_models": models, "num_epochs": epochs}, "planned": models * epochs,
                "settings": f"{models} configs x {epochs} epochs"},
        "hyperband": {"args": {"max_epochs": hb_r, "eta": HB_ETA}, "planned": hyperband_planned_epochs(hb_r, HB_ETA),
                      "settings": f"max_epochs={hb_r}, eta={HB_ETA}"},
        "asha": {"args": {"num_models": asha_models, "max_epochs": hb_r, "grace_period": 1, "reduction_factor": ASHA_RF},
                 "planned": round(asha_planned),
                 "settings": f"{asha_models} configs, max_epochs={hb_r}, rf={ASHA_RF}"},
        "pbt": {"args": {"population_size": population, "num_epochs": pbt_epochs},
                "planned": population * pbt_epochs, "settings": f"population {population} x {pbt_epochs} epochs"},
    }


# ---------------------------------------------------------------------------- running

def make_search(name: str, backend, store, size: dict[str, Any], seed: int, experiment: str,
                scheduler: str = "dynamic"):
    import cerebro

    common = dict(evaluation_metric="accuracy", seed=seed, verbose=0, tensorboard=False, experiment_name=experiment,
                  scheduler=scheduler)
    args = dict(size["args"])
    if name == "grid":
        return cerebro.GridSearch(backend, store, make_estimator, grid_space(), **args, **common)
    cls = {"random": cerebro.RandomSearch, "tpe": cerebro.TPESearch, "hyperband": cerebro.HyperbandSearch,
           "asha": cerebro.ASHASearch, "pbt": cerebro.PBTSearch}[name]
    if name == "pbt":
        args["mutations"] = {"lr": mutate_lr, "batch_size": mutate_batch_size}
    return cls(backend, store, make_estimator, search_space(), **args, **common)


def summarise(name: str, size: dict[str, Any], result, wall: float) -> dict[str, Any]:
    history = result.history
    param_cols = sorted(c for c in history.columns if c.startswith("param_"))
    distinct = len(history[param_cols].astype(str).drop_duplicates()) if param_cols and len(history) else 0
    ok = result.visits[result.visits.status == "ok"]
    return {
        "search": name,
        "settings": size["settings"],
        "best_val_accuracy": round(float(result.best_score), 4),
        "best_params": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.best_params.items()},
        "best_epochs": int(len(result.best_model.history)),
        "configs": len(result.models),
        "distinct_param_sets": int(distinct),
        "model_epochs": int(len(history)),
        "planned_model_epochs": int(size["planned"]),
        "sub_epochs": int(len(ok)),
        "failures": len(result.failures),
        "wall_s": round(wall, 1),
    }


def run(budget: int, population: int, workers: int, seed: int, only: list[str]) -> dict[str, Any]:
    from cerebro import LocalBackend, LocalStore, RandomSearch

    sizes = plan(budget, population, workers)
    df = digits_frame()
    tmp = tempfile.mkdtemp(prefix="cerebro-search-budget-")
    rows: list[dict[str, Any]] = []
    try:
        store = LocalStore(tmp)
        with LocalBackend(workers) as backend:
            # Warm-up (not reported): prepares the data once and starts TF in the workers.
            RandomSearch(backend, store, make_estimator, search_space(), num_models=1, num_epochs=1,
                         evaluation_metric="accuracy", seed=seed, verbose=0, tensorboard=False,
                         experiment_name="warmup").fit(df)
            for name in only:
                size = sizes[name]
                print(f"# {name}: {size['settings']} (planned {size['planned']} model-epochs)", file=sys.stderr, flush=True)
                started = time.perf_counter()
                try:
                    result = make_search(name, backend, store, size, seed, name).fit(df)
                except Exception as exc:  # one search failing must not hide the others' figures
                    rows.append({"search": name, "settings": size["settings"], "error": f"{type(exc).__name__}: {exc}",
                                 "wall_s": round(time.perf_counter() - started, 1)})
                    continue
                rows.append(summarise(name, size, result, time.perf_counter() - started))
                print(f"#   {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"benchmark": "search_budget", "budget_model_epochs": budget, "workers": workers,
            "budget_sub_epochs": budget * workers, "seed": seed, "population": population, "results": rows}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Budget: {report['budget_model_epochs']} model-epochs x {report['workers']} workers = "
        f"{report['budget_sub_epochs']} training sub-epochs; digits, MLP, LocalBackend({report['workers']}), seed {report['seed']}.",
        "",
        "| search | settings | best val acc | configs (distinct param sets) | model-epochs trained / planned | wall s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['search']} | {r['settings']} | error: {r['error'][:80]} | | | {r['wall_s']} |")
            continue
        configs = f"{r['configs']}" + (f" ({r['distinct_param_sets']})" if r["distinct_param_sets"] != r["configs"] else "")
        lines.append(f"| {r['search']} | {r['settings']} | {r['best_val_accuracy']:.4f} | {configs} | "
                     f"{r['model_epochs']} / {r['planned_model_epochs']} | {r['wall_s']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=None, help="model-epochs per search (default 96; 32 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a smaller run: budget 32, PBT population 4")
    parser.add_argument("--population", type=int, default=None, help="PBT population (default 8; 4 with --quick)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--only", default=",".join(SEARCHES), help=f"comma-separated subset of {','.join(SEARCHES)}")
    parser.add_argument("--out", default=None, help="also write search_budget.json and search_budget.md into this directory")
    args = parser.parse_args(argv)
    budget = args.budget if args.budget is not None else (32 if args.quick else 96)
    population = args.population if args.population is not None else (4 if args.quick else 8)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SEARCHES))
    if unknown:
        parser.error(f"--only names unknown searches {unknown}; choose from {list(SEARCHES)}")
    if budget < 1 or population < 2 or args.workers < 1:
        parser.error("--budget and --workers must be >= 1, --population >= 2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    report = run(budget, population, args.workers, args.seed, only)
    table = markdown(report)
    print(table)
    print(json.dumps(report))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "search_budget.json"), "w") as fh:
            json.dump(report, fh, indent=2)
        with open(os.path.join(args.out, "search_budget.md"), "w") as fh:
            fh.write(table + "\n")
    return 0 if all("error" not in r for r in report["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
