"""GPU check: MOP on every visible GPU against one plain process on one GPU, Keras and PyTorch.

    python -m benchmarks.gpu_check [--rows 200000] [--epochs 2] [--workers-per-gpu 1]

On a machine with GPUs it runs the demo workload (the 8 configurations of ``cerebro demo``:
learning rate × width × batch size, on scikit-learn's digits tiled with small seeded noise to
``--rows`` rows) with ``LocalBackend(gpus="all")`` for each framework, and prints

* each worker's device and host, read from ``visits`` (so the pinning is what really ran);
* MOP's training throughput per GPU (training rows per second of sub-epoch wall time, divided
  by the number of GPUs) against one plain process on one GPU training the same
  configurations one after another (``model.fit`` / a plain torch loop, same data, batch
  sizes and epochs), i.e. ``per_gpu_over_plain`` (goal >= 0.9);
* the busy fraction of the workers (goal >= 0.9).

It writes the figures to ``--out`` (default ``gpu-check.json``).  Without a GPU it says what it
found and exits with status 2; nothing here is needed on CPU-only CI.
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

SPACE_VALUES = {"learning_rate": [1e-3, 1e-2], "width": [32, 128], "batch_size": [16, 64]}


def _configurations() -> list[dict]:
    import itertools

    keys = sorted(SPACE_VALUES)
    return [dict(zip(keys, values)) for values in itertools.product(*(SPACE_VALUES[k] for k in keys))]


def make_data(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Digits (x / 16) tiled to ``rows`` rows with seeded Gaussian noise (sd 0.05)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(digits.target), rows)
    x = (digits.data[idx] / 16.0 + rng.normal(0, 0.05, (rows, 64))).astype("float32")
    return x, digits.target[idx].astype("int64")


def plain_run(framework: str, rows: int, epochs: int) -> dict:
    """One plain process (this one, on its one visible GPU): every configuration, one after another."""
    x, y = make_data(rows)
    n_train = int(rows * 0.75)
    x, y = x[:n_train], y[:n_train]
    from cerebro.cli import DEMO_ESTIMATORS

    started = time.perf_counter()
    for params in _configurations():
        estimator = DEMO_ESTIMATORS[framework](params)
        if framework == "keras":
            model = estimator.model
            model.compile(estimator.optimizer, estimator.loss, metrics=["accuracy"])
            model.fit(x, y, batch_size=params["batch_size"], epochs=epochs, shuffle=True, verbose=0)
        else:
            import torch

            device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
            model, opt = estimator.model.to(device), estimator.optimizer
            xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            for _ in range(epochs):
                for i in torch.randperm(len(xt), device=device).split(params["batch_size"]):
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(model(xt[i]), yt[i]).backward()
                    opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows_per_s": n_train * epochs * len(_configurations()) / seconds}


def mop_run(framework: str, rows: int, epochs: int, workers_per_gpu: int, store: str) -> dict:
    import pandas as pd

    from cerebro import GridSearch, LocalBackend, LocalStore, hp_choice
    from cerebro.cli import DEMO_ESTIMATORS
    from cerebro.report import load_experiment, summarize

    x, y = make_data(rows)
    df = pd.DataFrame({"features": list(x), "label": y})
    space = {k: hp_choice(v) for k, v in SPACE_VALUES.items()}
    with LocalBackend(gpus="all", workers_per_gpu=workers_per_gpu) as backend:
        result = GridSearch(backend, LocalStore(store), DEMO_ESTIMATORS[framework], space, num_epochs=epochs,
                            evaluation_metric="accuracy", verbose=0).fit(df)
    visits = result.visits[result.visits["status"] == "ok"]
    wall = float(visits["end"].max() - visits["start"].min())
    devices = {int(w): sorted(set(g["device"])) for w, g in visits.groupby("worker")}
    hosts = sorted(set(visits["host"]))
    n_gpus = len({d for ds in devices.values() for d in ds if d.startswith("cuda")}) or 1
    summary = summarize(load_experiment(result.experiment_dir))
    return {
        "devices": devices, "hosts": hosts, "gpus": n_gpus, "train_wall_s": wall,
        "rows_per_s_per_gpu": float(visits["rows"].sum()) / wall / n_gpus,
        "busy_fraction": summary["busy_fraction"], "best_val_accuracy": result.best_score,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers-per-gpu", type=int, default=1)
    parser.add_argument("--frameworks", default="keras,torch")
    parser.add_argument("--out", default="gpu-check.json")
    parser.add_argument("--plain", choices=["keras", "torch"], help=argparse.SUPPRESS)   # internal: the baseline
    args = parser.parse_args(argv)
    if args.plain:
        print(json.dumps(plain_run(args.plain, args.rows, args.epochs)))
        return 0

    from cerebro.backends.devices import discover_gpus

    found = discover_gpus()
    if not found.visible:
        print(f"gpu_check: no GPU is visible ({found.describe()}); run it on a machine with GPUs.")
        return 2
    import platform

    try:
        model = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True).stdout.strip().splitlines()
    except OSError:   # only with the test hook CEREBRO_FAKE_GPUS
        model = []
    report = {"gpus": list(found.visible), "gpu_model": model[0] if model else "?", "host": platform.node(),
              "rows": args.rows, "epochs": args.epochs, "workers_per_gpu": args.workers_per_gpu, "frameworks": {}}
    for framework in [f for f in args.frameworks.split(",") if f]:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(found.visible[0]), CUDA_DEVICE_ORDER="PCI_BUS_ID")
        proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--plain", framework, "--rows",
                               str(args.rows), "--epochs", str(args.epochs)], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            return 1
        plain = json.loads(proc.stdout.strip().splitlines()[-1])
        with tempfile.TemporaryDirectory(prefix="cerebro-gpu-check-") as store:
            mop = mop_run(framework, args.rows, args.epochs, args.workers_per_gpu, store)
        mop["per_gpu_over_plain"] = mop["rows_per_s_per_gpu"] / plain["rows_per_s"]
        report["frameworks"][framework] = {"mop": mop, "plain_one_gpu": plain}
        print(f"{framework}: workers -> devices {mop['devices']} on {', '.join(mop['hosts'])}")
        print(f"{framework}: MOP {mop['rows_per_s_per_gpu']:,.0f} rows/s per GPU vs plain {plain['rows_per_s']:,.0f} "
              f"on one GPU: per_gpu_over_plain {mop['per_gpu_over_plain']:.2f} (goal >= 0.9); "
              f"busy {mop['busy_fraction']:.2f} (goal >= 0.9)")
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"wrote {args.out} ({report['gpu_model']} x {len(found.visible)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
