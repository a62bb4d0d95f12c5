"""Command line: ``cerebro demo``.  The CLI owns the console; the library only logs."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Sequence


def _digits_frame():
    import numpy as np
    import pandas as pd
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.data / 16.0).astype(np.float32)
    return pd.DataFrame({"features": list(pixels), "label": digits.target.astype(np.int64)})


def _demo_estimator(params: dict):
    import keras

    from .frameworks.keras import KerasEstimator

    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(params["width"], activation="relu"),
        keras.layers.Dense(params["width"], activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    return KerasEstimator(
        model, keras.optimizers.Adam(params["learning_rate"]), "sparse_categorical_crossentropy",
        metrics=["accuracy"], batch_size=params["batch_size"],
    )


def demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from . import GridSearch, LocalBackend, LocalStore, hp_choice

    console = Console()
    store_dir = os.path.abspath(args.store)
    console.print(
        f"[bold]cerebro demo[/bold]: 8-configuration grid on scikit-learn's digits (1,797 images, 10 classes), "
        f"{args.epochs} epochs, model hopper parallelism on {args.workers} local worker processes.\n"
        f"Store: {store_dir} (prepared data, checkpoints, journal, worker logs)"
    )
    df = _digits_frame()
    space = {
        "learning_rate": hp_choice([1e-3, 1e-2]),
        "width": hp_choice([32, 128]),
        "batch_size": hp_choice([16, 64]),
    }
    started = time.time()
    with LocalBackend(num_workers=args.workers) as backend:
        search = GridSearch(
            backend, LocalStore(store_dir), _demo_estimator, space, num_epochs=args.epochs,
            evaluation_metric="accuracy", feature_columns=["features"], label_columns=["label"],
            seed=args.seed, verbose=1,
        )
        result = search.fit(df)
    wall = time.time() - started
    table = Table(title=f"Results: validation accuracy after {args.epochs} epochs (best first)")
    for col in ("model", "lr", "width", "batch", "val acc", "val loss", "train acc"):
        table.add_column(col, justify="right" if col != "model" else "left")
    last = result.history.sort_values("epoch").groupby("model_id").tail(1).sort_values("val_accuracy", ascending=False)
    for row in last.itertuples():
        mark = " *" if row.model_id == result.best_model_id else ""
        table.add_row(row.model_id + mark, f"{row.param_learning_rate:g}", str(row.param_width), str(row.param_batch_size),
                      f"{row.val_accuracy:.4f}", f"{row.val_loss:.4f}", f"{row.train_accuracy:.4f}")
    console.print(table)
    ok = result.visits[result.visits.status == "ok"]
    busy = (ok.end - ok.start).sum() / (args.workers * (ok.end.max() - ok.start.min())) if len(ok) else float("nan")
    console.print(
        f"Best: [bold]{result.best_model_id}[/bold] {result.best_params} with validation accuracy "
        f"[bold green]{result.best_score:.4f}[/bold green]\n"
        f"Wall time {wall:.1f} s in all (worker start-up included), {wall / args.epochs:.1f} s per epoch for all "
        f"8 models; {len(ok)} sub-epochs, workers busy {busy:.0%} of the training span.\n"
        f"Experiment directory: {result.experiment_dir}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cerebro", description="Deep-learning model selection with model hopper parallelism.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run a complete model selection on scikit-learn's digits")
    p_demo.add_argument("--backend", choices=["local"], default="local", help="where workers run (default: local processes)")
    p_demo.add_argument("--workers", type=int, default=2, help="number of MOP workers (default 2)")
    p_demo.add_argument("--epochs", type=int, default=5, help="epochs per configuration (default 5)")
    p_demo.add_argument("--store", default="cerebro-demo", help="store directory (default ./cerebro-demo)")
    p_demo.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command == "demo":
        return demo(args)
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
