"""The fixed cost of a visit: one batch trained and one batch evaluated, measured in a worker.

``sub_epoch_fixed_cost_ms`` (goal: <= 10 ms) is what a sub-epoch costs when it has almost no
work to do: the framework call around one mini-batch, which every visit pays whatever its
partition's size.  It is measured through cerebro's public API with real worker processes:
``GridSearch`` on ``LocalBackend(p, threads_per_worker=1)`` with one configuration of the
benchmark's reference MLP (``benchmarks.workload``: 64 -> 128 -> 128 -> 10, Adam, lr 1e-3,
batch 32; Keras 3 through ``KerasEstimator`` or PyTorch through ``TorchEstimator``), on
generated data of p x batch training rows and p x batch validation rows (an ``is_val``
column), so that every worker's training partition and validation partition hold exactly one
batch (checked from the visits' ``rows``).  The model trains for many epochs; the first is left
out (it builds and traces the model's training and evaluation functions in each worker).

From ``result.visits`` (training) and ``result.evaluations`` (evaluation), medians over the
remaining visits, in ms:

- ``sub_epoch_fixed_cost_ms`` = median train ``compute_s`` + median eval ``compute_s``: the
  framework's call cost (the figure with the goal);
- ``visit_fixed_cost_ms`` = median train (load + compute + save) + median eval (load +
  compute): the whole visit inside the worker, the hop's checkpoint I/O included;
- the parts: ``load_ms`` (the model from the worker's cache, or its checkpoint read from the
  store when it last ran on another worker: ``load_moved_ms`` against ``load_cached_ms``),
  ``save_ms`` (checkpoint serialised, hashed and written; training visits only) and
  ``wall_ms`` (end - start on the driver's clock: the visit plus its dispatch and commit).

Usage:
    python -m benchmarks.fixed_cost                       # Keras, 20 epochs, 2 workers
    python -m benchmarks.fixed_cost --framework torch     # PyTorch (TorchEstimator)
Options: --epochs E (>= 2), --workers P, --out FILE (the JSON, also printed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from benchmarks import workload as wl

FRAMEWORKS = ("keras", "torch")
#: The reference configuration: the workload grid's first one (batch 32, lr 1e-3, width 128).
PARAMS = wl.configurations()[0]


def make_frame(workers: int, batch_size: int, seed: int = 0):
    """Generated rows: ``workers x batch_size`` training rows and as many validation rows
    (``is_val``), so that each of ``workers`` partitions holds one batch of each."""
    import pandas as pd

    n = workers * batch_size
    x, y = wl.make_arrays(2 * n, seed)
    return pd.DataFrame({"features": list(x), "label": y, "is_val": np.r_[np.zeros(n, bool), np.ones(n, bool)]})


def _ms(values) -> float | None:
    values = [float(v) for v in values]
    return 1000.0 * statistics.median(values) if values else None


def figures_from_visits(visits, evaluations, batch_size: int) -> dict:
    """The fixed-cost figures from a result's ``visits`` and ``evaluations`` frames (pure).

    Only ``ok`` visits count; the first epoch (tracing) is left out.  Raises ``ValueError``
    when a visit saw more than one batch of rows (the measurement would not be of a one-batch
    visit) or when no visit is left after the first epoch.
    """
    import pandas as pd

    train = visits[visits.status == "ok"]
    evals = evaluations[evaluations.status == "ok"]
    for kind, frame in (("train", train), ("eval", evals)):
        if len(frame) and int(frame.rows.max()) > batch_size:
            raise ValueError(f"a {kind} visit saw {int(frame.rows.max())} rows, more than one batch ({batch_size})")
    first = int(min(train.epoch.min(), evals.epoch.min())) if len(train) and len(evals) else 1
    t, e = train[train.epoch > first], evals[evals.epoch > first]
    if not len(t) or not len(e):
        raise ValueError("no training or evaluation visit after the first epoch: train for >= 2 epochs")

    # Did the model hop (its previous visit, train or eval, ran on another worker)?
    both = (pd.concat([train.assign(kind="train"), evals.assign(kind="eval")], ignore_index=True)
            .sort_values("start", kind="stable").reset_index(drop=True))
    moved = both.worker.ne(both.groupby("model_id").worker.shift()) & both.groupby("model_id").cumcount().gt(0)
    keep = (both.epoch > first).to_numpy()
    later, later_moved = both[keep], moved[keep].to_numpy()

    def parts(frame, kind):
        visit = frame.load_s + frame.compute_s + frame.save_s
        out = {"visits": int(len(frame)), "compute_ms": _ms(frame.compute_s), "load_ms": _ms(frame.load_s),
               "save_ms": _ms(frame.save_s), "visit_ms": _ms(visit), "wall_ms": _ms(frame.end - frame.start),
               "max_rows": int(frame.rows.max())}
        if kind == "eval":
            out["save_ms"] = None  # an evaluation writes nothing
        return out

    tr, ev = parts(t, "train"), parts(e, "eval")
    return {
        "sub_epoch_fixed_cost_ms": tr["compute_ms"] + ev["compute_ms"],
        "visit_fixed_cost_ms": tr["visit_ms"] + ev["visit_ms"],
        "visit_wall_ms": tr["wall_ms"] + ev["wall_ms"],
        "train": tr, "eval": ev,
        # The mean as well: with p workers a model's visits alternate between a load from the
        # worker's cache and a checkpoint read after a hop, so the visit times are bimodal.
        "visit_fixed_cost_mean_ms": 1000.0 * float((t.load_s + t.compute_s + t.save_s).mean()
                                                   + (e.load_s + e.compute_s + e.save_s).mean()),
        "load_moved_ms": _ms(later.load_s[later_moved]),
        "load_cached_ms": _ms(later.load_s[~later_moved]),
        "hops": int(later_moved.sum()),
        "first_epoch": {"train_compute_ms": _ms(train[train.epoch == first].compute_s),
                        "eval_compute_ms": _ms(evals[evals.epoch == first].compute_s)},
        "epochs_used": sorted(int(v) for v in t.epoch.unique()),
        "batch_size": batch_size,
    }


def measure(framework: str = "keras", *, epochs: int = 20, workers: int = 2, seed: int = 2020) -> dict:
    """Run the search in real worker processes and return :func:`figures_from_visits`'s figures
    with the setup (framework, configuration, workers, epochs, ``fit`` wall time)."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, not {framework!r}")
    if epochs < 2:
        raise ValueError("epochs must be >= 2 (the first epoch is left out)")
    wl.limit_threads(1)
    import functools

    import cerebro

    params = dict(PARAMS)
    batch = int(params["batch_size"])
    gen_fn = (functools.partial(wl.make_torch_estimator, seed=seed) if framework == "torch" else wl.make_estimator)
    space = {k: cerebro.hp_choice([v]) for k, v in params.items()}
    df = make_frame(workers, batch)
    with tempfile.TemporaryDirectory(prefix="cerebro-fixed-cost-") as tmp, \
            cerebro.LocalBackend(workers, threads_per_worker=1) as backend:
        search = cerebro.GridSearch(backend, cerebro.LocalStore(tmp), gen_fn, space, num_epochs=epochs,
                                    evaluation_metric="accuracy", validation="is_val", seed=seed,
                                    verbose=0, tensorboard=False, experiment_name="fixed-cost")
        t0 = time.perf_counter()
        result = search.fit(df)
        fit_wall = time.perf_counter() - t0
    if result.failures:
        raise RuntimeError(f"the model failed: {next(iter(result.failures.values()))[-2000:]}")
    figures = figures_from_visits(result.visits, result.evaluations, batch)
    return {"framework": framework, "params": params, "workers": workers, "threads_per_worker": 1,
            "epochs": epochs, "rows": {"train": workers * batch, "val": workers * batch},
            **figures, "fit_wall_s": fit_wall, "host": {"cpus": os.cpu_count()}}


def _f(v, digits=2):
    return "n/a" if v is None else f"{v:.{digits}f}"


def table(fig: dict) -> str:
    """A small markdown table of the figures (sums are of medians)."""
    tr, ev = fig["train"], fig["eval"]
    p = fig["params"]
    lines = [
        f"Fixed cost of a one-batch visit: {fig['framework']}, MLP 64 -> {p['width']} -> {p['width']} -> 10 "
        f"(lr {p['learning_rate']:g}, batch {p['batch_size']}), {fig['workers']} workers x 1 thread, "
        f"{fig['epochs']} epochs (epoch 1, tracing, left out); at most {tr['max_rows']} train / {ev['max_rows']} "
        f"eval rows per visit; medians over {tr['visits']} train and {ev['visits']} eval visits, in ms.",
        "",
        "| part | train visit | eval visit | train + eval |",
        "|---|---:|---:|---:|",
        f"| compute (framework call): **sub_epoch_fixed_cost_ms** | {_f(tr['compute_ms'])} | {_f(ev['compute_ms'])} | "
        f"**{_f(fig['sub_epoch_fixed_cost_ms'])}** |",
        f"| load (median of cache hits and checkpoint reads: split below) | {_f(tr['load_ms'])} | {_f(ev['load_ms'])} | "
        f"{_f(tr['load_ms'] + ev['load_ms'])} |",
        f"| save (checkpoint write) | {_f(tr['save_ms'])} | - | {_f(tr['save_ms'])} |",
        f"| load + compute + save: visit_fixed_cost_ms | {_f(tr['visit_ms'])} | {_f(ev['visit_ms'])} | "
        f"{_f(fig['visit_fixed_cost_ms'])} |",
        f"| driver's end - start (dispatch and commit included) | {_f(tr['wall_ms'])} | {_f(ev['wall_ms'])} | "
        f"{_f(fig['visit_wall_ms'])} |",
        "",
        f"load after a hop from another worker (checkpoint read): {_f(fig['load_moved_ms'])} ms ({fig['hops']} visits); "
        f"model still in the worker's cache: {_f(fig['load_cached_ms'])} ms. First epoch compute (tracing, warm-up): "
        f"train {_f(fig['first_epoch']['train_compute_ms'], 0)} ms, eval {_f(fig['first_epoch']['eval_compute_ms'], 0)} ms. "
        f"fit wall {fig['fit_wall_s']:.1f} s.",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--framework", choices=FRAMEWORKS, default="keras")
    parser.add_argument("--epochs", type=int, default=20, help="epochs (>= 2; the first is left out)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    if args.epochs < 2 or args.workers < 1:
        parser.error("need --epochs >= 2 and --workers >= 1")
    fig = measure(args.framework, epochs=args.epochs, workers=args.workers)
    print(table(fig))
    print(json.dumps(fig, indent=1))
    if args.out:
        tmp = f"{args.out}.tmp"
        with open(tmp, "w") as fh:
            json.dump(fig, fh, indent=1)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
