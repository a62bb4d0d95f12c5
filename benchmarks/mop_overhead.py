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

Usage: python -m benchmarks.mop_overhead [--rows 60000] [--epochs 2] [--workers 2]
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

SPACE = {"learning_rate": [1e-3, 3e-3], "width": [128, 256], "batch_size": [32, 128]}


def make_data(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 64)).astype(np.float32)
    w1 = rng.normal(size=(64, 32)) / 8
    w2 = rng.normal(size=(32, 10))
    y = np.argmax(np.tanh(x @ w1) @ w2 + 0.5 * rng.normal(size=(rows, 10)), axis=1)
    return pd.DataFrame({"features": list(x), "label": y.astype(np.int64)})


def make_estimator(params):
    import keras

    from cerebro import KerasEstimator

    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(params["width"], activation="relu"),
        keras.layers.Dense(params["width"], activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    return KerasEstimator(model, keras.optimizers.Adam(params["learning_rate"]), "sparse_categorical_crossentropy",
                          metrics=["accuracy"], batch_size=params["batch_size"])


def single_process(rows: int, out_path: str) -> None:
    """Child process: one thread, every configuration for one epoch + evaluation; writes rows/s."""
    import itertools

    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    from cerebro.frameworks.keras import limit_threads

    limit_threads(1)
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


def run(rows: int, epochs: int, workers: int) -> dict:
    from cerebro import GridSearch, LocalBackend, LocalStore, hp_choice

    with tempfile.TemporaryDirectory() as tmp:
        single = _reference(tmp, rows, 1)[0]
        # The same plain-Keras work in `workers` independent processes at once: what this
        # machine gives p processes when nothing is shared (memory bandwidth, caches, turbo).
        concurrent = _reference(tmp, rows, workers)
        df = make_data(rows)
        space = {k: hp_choice(v) for k, v in SPACE.items()}
        with LocalBackend(num_workers=workers, threads_per_worker=1) as backend:
            t0 = time.time()
            result = GridSearch(backend, LocalStore(os.path.join(tmp, "store")), make_estimator, space,
                                num_epochs=epochs, evaluation_metric="accuracy", verbose=0).fit(df)
            fit_wall = time.time() - t0
    train = result.visits[result.visits.status == "ok"]
    evals = result.evaluations[result.evaluations.status == "ok"]
    tasks = pd.concat([train, evals])
    span = tasks.end.max() - tasks.start.min()
    work = (tasks.load_s + tasks.compute_s + tasks.save_s).sum()
    busy = work / (workers * span)
    hop_share = (train.load_s + train.save_s).sum() / train.compute_s.sum()
    mop_rows_per_s = train.rows.sum() / span
    share = mop_rows_per_s / (workers * single["rows_per_s"])
    concurrent_rows_per_s = sum(c["rows_per_s"] for c in concurrent)
    return {
        "rows": rows, "epochs": epochs, "workers": workers, "configurations": len(result.models),
        "fit_wall_s": round(fit_wall, 1), "training_span_s": round(span, 1),
        "busy_fraction": round(busy, 3), "hop_share": round(hop_share, 4),
        "mean_hop_ms": round(1000 * (train.load_s + train.save_s).mean(), 2),
        "mean_sub_epoch_s": round(train.compute_s.mean(), 3),
        "mop_rows_per_s": round(mop_rows_per_s), "single_process_rows_per_s": round(single["rows_per_s"]),
        "throughput_share": round(share, 3),
        "concurrent_plain_keras_rows_per_s": round(concurrent_rows_per_s),
        "share_of_concurrent_plain_keras": round(mop_rows_per_s / concurrent_rows_per_s, 3),
        "best_val_accuracy": round(result.best_score, 4),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=60000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--single-process", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.single_process:
        single_process(args.rows, args.single_process)
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
