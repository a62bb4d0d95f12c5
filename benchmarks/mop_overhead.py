"""MOP overhead on this machine: busy fraction, hop share, throughput vs the physical limit.

Workload (stated next to the numbers, never tuned to flatter MOP): 8 configurations of a
reference MLP (64 -> width -> width -> 10; learning rate 1e-3/3e-3 x width 128/256 x batch
32/128, Adam) on generated data (default 60,000 rows x 64 features, 10 classes from a random
teacher network; 25% validation), 2 epochs, LocalBackend with 2 workers of 1 thread each.

Side by side in one run:
1. the single-process reference: each configuration trained for one epoch + one evaluation
   in a fresh process with one TensorFlow thread (what one worker can do), giving rows/s;
2. MOP over the same configurations.

Figures:
- busy fraction = sum of the workers' task time (load + train/eval + save, as measured inside
  the workers) / (workers x wall time of the training span);
- hop share = (checkpoint load + save time) / training compute time, over training sub-epochs;
- throughput share = MOP training rows per second / (workers x single-process rows per second);
- share of concurrent plain Keras = MOP rows per second / the rows per second that `workers`
  independent plain-Keras processes reach when run at the same time (separates MOP's own
  overhead from what the machine loses when all its cores work at once).

With ``--spark [MASTER ...]``: SparkBackend on Spark ``local[2]`` and ``local-cluster[2,1,1024]``
(two executor JVMs), each next to a LocalBackend run of the same workload: busy fractions and
the throughput ratio Spark / Local (goal: >= 0.85 busy, >= 0.95 of LocalBackend).

Usage: python -m benchmarks.mop_overhead [--rows 60000] [--epochs 2] [--workers 2] [--spark [MASTER ...]]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

from benchmarks.workload import SPACE, make_data, make_estimator  # noqa: F401 - the shared workload


def single_process(rows: int, out_path: str) -> None:
    """Child process: one thread, every configuration for one epoch + evaluation; writes rows/s."""
    import itertools

    from benchmarks.workload import limit_tf_threads, limit_threads

    limit_threads(1)
    import tensorflow as tf

    limit_tf_threads(tf, 1)
    df = make_data(rows)
    x = np.stack(df.features.to_numpy())
    y = df.label.to_numpy()
    n_val = round(0.25 * rows)
    xt, yt, xv, yv = x[n_val:], y[n_val:], x[:n_val], y[:n_val]
    total_rows, total_time = 0, 0.0
    for lr, width, batch in itertools.product(*SPACE.values()):
        est = make_estimator({"learning_rate": lr, "width": width, "batch_size": batch})
        model = est.model
        model.compile(est.optimizer, est.loss, metrics=list(est.metrics))
        model.fit(xt[:batch * 4], yt[:batch * 4], batch_size=batch, verbose=0)  # trace once, like a warm worker
        t0 = time.perf_counter()
        model.fit(xt, yt, batch_size=batch, epochs=1, verbose=0, shuffle=True)
        model.evaluate(xv, yv, batch_size=batch, verbose=0)
        total_time += time.perf_counter() - t0
        total_rows += len(xt)
    with open(out_path, "w") as fh:
        json.dump({"rows_per_s": total_rows / total_time, "seconds": total_time}, fh)


def _reference(tmp: str, rows: int, copies: int) -> list[dict]:
    paths = [os.path.join(tmp, f"single-{copies}-{i}.json") for i in range(copies)]
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.mop_overhead", "--single-process", path, "--rows", str(rows)])
             for path in paths]
    if any(p.wait() != 0 for p in procs):
        raise RuntimeError("the single-process reference failed")
    out = []
    for path in paths:
        with open(path) as fh:
            out.append(json.load(fh))
    return out


def _fit(backend, store_dir: str, df, epochs: int):
    from cerebro import GridSearch, LocalStore, hp_choice

    space = {k: hp_choice(v) for k, v in SPACE.items()}
    t0 = time.time()
    result = GridSearch(backend, LocalStore(store_dir), make_estimator, space, num_epochs=epochs,
                        evaluation_metric="accuracy", verbose=0).fit(df)
    return result, time.time() - t0


def mop_figures(result, workers: int) -> dict:
    """Busy fraction, hop share and training throughput of one MOP run, from its visits."""
    train = result.visits[result.visits.status == "ok"]
    evals = result.evaluations[result.evaluations.status == "ok"]
    tasks = pd.concat([train, evals])
    span = tasks.end.max() - tasks.start.min()
    work = (tasks.load_s + tasks.compute_s + tasks.save_s).sum()
    return {
        "training_span_s": round(span, 1),
        "busy_fraction": round(work / (workers * span), 3),
        "hop_share": round((train.load_s + train.save_s).sum() / train.compute_s.sum(), 4),
        "mean_hop_ms": round(1000 * (train.load_s + train.save_s).mean(), 2),
        "mean_sub_epoch_s": round(train.compute_s.mean(), 3),
        "mop_rows_per_s": round(train.rows.sum() / span),
        "best_val_accuracy": round(result.best_score, 4),
    }


def run(rows: int, epochs: int, workers: int) -> dict:
    from cerebro import LocalBackend

    with tempfile.TemporaryDirectory() as tmp:
        single = _reference(tmp, rows, 1)[0]
        # The same plain-Keras work in `workers` independent processes at once: what this
        # machine gives p processes when nothing is shared (memory bandwidth, caches, turbo).
        concurrent = _reference(tmp, rows, workers)
        df = make_data(rows)
        with LocalBackend(num_workers=workers, threads_per_worker=1) as backend:
            result, fit_wall = _fit(backend, os.path.join(tmp, "store"), df, epochs)
    figures = mop_figures(result, workers)
    mop_rows_per_s = figures["mop_rows_per_s"]
    concurrent_rows_per_s = sum(c["rows_per_s"] for c in concurrent)
    return {
        "rows": rows, "epochs": epochs, "workers": workers, "configurations": len(result.models),
        "fit_wall_s": round(fit_wall, 1), **figures,
        "single_process_rows_per_s": round(single["rows_per_s"]),
        "throughput_share": round(mop_rows_per_s / (workers * single["rows_per_s"]), 3),
        "concurrent_plain_keras_rows_per_s": round(concurrent_rows_per_s),
        "share_of_concurrent_plain_keras": round(mop_rows_per_s / concurrent_rows_per_s, 3),
    }


def run_spark(rows: int, epochs: int, workers: int, masters: list[str]) -> dict:
    """SparkBackend on each master next to LocalBackend on the same workload, side by side.

    For each master: a LocalBackend run, then the SparkBackend run (the same store, so the
    prepared data is shared), so that the ratio compares runs minutes apart, not a whole
    benchmark apart.  Each Spark session starts before its timing and is stopped after.
    """
    from cerebro import LocalBackend, SparkBackend
    from cerebro.backends.spark_session import local_session

    out: dict = {"rows": rows, "epochs": epochs, "workers": workers}
    df = make_data(rows)
    for master in masters:
        with tempfile.TemporaryDirectory() as tmp:
            store = os.path.join(tmp, "store")
            with LocalBackend(num_workers=workers, threads_per_worker=1) as backend:
                local_result, local_wall = _fit(backend, store, df, epochs)
            local = mop_figures(local_result, workers)
            session = local_session(master, "cerebro-bench")
            try:
                with SparkBackend(session.sparkContext, workers) as backend:
                    spark_result, spark_wall = _fit(backend, store, df, epochs)
            finally:
                session.stop()
                time.sleep(1)
        spark = mop_figures(spark_result, workers)
        out[master] = {
            "spark": {"fit_wall_s": round(spark_wall, 1), **spark},
            "local": {"fit_wall_s": round(local_wall, 1), **local},
            "throughput_over_local": round(spark["mop_rows_per_s"] / local["mop_rows_per_s"], 3),
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=60000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--spark", nargs="*", metavar="MASTER",
                        help="instead: SparkBackend on these masters (default local[2] and local-cluster[2,1,1024]) "
                             "side by side with LocalBackend")
    parser.add_argument("--single-process", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.single_process:
        single_process(args.rows, args.single_process)
        return 0
    if args.spark is not None:
        masters = args.spark or [f"local[{args.workers}]", f"local-cluster[{args.workers},1,1024]"]
        figures = run_spark(args.rows, args.epochs, args.workers, masters)
        print("| master | Spark busy | LocalBackend busy | Spark rows/s | LocalBackend rows/s | Spark / Local throughput |")
        print("|---|---|---|---|---|---|")
        for master in masters:
            f = figures[master]
            print(f"| {master} | {f['spark']['busy_fraction']} | {f['local']['busy_fraction']} | "
                  f"{f['spark']['mop_rows_per_s']} | {f['local']['mop_rows_per_s']} | {f['throughput_over_local']} |")
        print(json.dumps(figures))
        return 0
    figures = run(args.rows, args.epochs, args.workers)
    print("| figure | value | goal |")
    print("|---|---|---|")
    goals = {"busy_fraction": ">= 0.90", "hop_share": "<= 0.05", "throughput_share": ">= 0.90"}
    for key, value in figures.items():
        print(f"| {key} | {value} | {goals.get(key, '')} |")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
