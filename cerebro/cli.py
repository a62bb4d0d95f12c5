"""Command line: ``cerebro demo`` and ``cerebro report``.  The CLI owns the console; the library only logs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Sequence


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


def _demo_torch_estimator(params: dict):
    from torch import nn, optim

    from . import TorchEstimator

    model = nn.Sequential(
        nn.Linear(64, params["width"]), nn.ReLU(),
        nn.Linear(params["width"], params["width"]), nn.ReLU(),
        nn.Linear(params["width"], 10),
    )
    return TorchEstimator(model, optim.Adam(model.parameters(), lr=params["learning_rate"]), "cross_entropy",
                          metrics=["accuracy"], batch_size=params["batch_size"])


DEMO_ESTIMATORS = {"keras": _demo_estimator, "torch": _demo_torch_estimator}
_FRAMEWORK_NAMES = {"keras": "Keras", "torch": "PyTorch"}


def demo(args: argparse.Namespace) -> int:
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from . import GridSearch, LocalBackend, LocalStore, hp_choice
    from .datasets import digits_frame

    console = Console()
    if args.framework == "torch":
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            console.print("[red]cerebro demo --framework torch needs PyTorch[/red]: pip install 'cerebro-mop[torch]'")
            return 2
    store_dir = os.path.abspath(args.store)
    where = (f"{args.workers} local worker processes" if args.backend == "local"
             else f"{args.workers} long-running tasks of a Spark local[{args.workers}] barrier stage")
    console.print(
        f"[bold]cerebro demo[/bold]: 8-configuration grid of {_FRAMEWORK_NAMES[args.framework]} MLPs on scikit-learn's "
        f"digits (1,797 images, 10 classes), {args.epochs} epochs, model hopper parallelism on {where}.\n"
        f"Store: {store_dir} (prepared data, checkpoints, journal, worker logs)"
    )
    df = digits_frame()
    spark = None
    if args.backend == "spark":
        spark = _local_spark(args.workers, console)
        if spark is None:
            return 2
        # A Spark DataFrame: the data is validated, hashed and partitioned by Spark itself.
        df = spark.createDataFrame(df)
    space = {
        "learning_rate": hp_choice([1e-3, 1e-2]),
        "width": hp_choice([32, 128]),
        "batch_size": hp_choice([16, 64]),
    }
    started = time.time()
    if spark is not None:
        from . import SparkBackend

        backend_cm = SparkBackend(spark.sparkContext, num_workers=args.workers)
    else:
        backend_cm = LocalBackend(num_workers=args.workers)
    with backend_cm as backend:
        search = GridSearch(
            backend, LocalStore(store_dir), DEMO_ESTIMATORS[args.framework], space, num_epochs=args.epochs,
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
    evals = result.evaluations[result.evaluations.status == "ok"]
    tasks = pd.concat([ok, evals])
    span = tasks.end.max() - tasks.start.min() if len(tasks) else float("nan")
    busy = (tasks.end - tasks.start).sum() / (args.workers * span) if len(tasks) else float("nan")
    console.print(
        f"Best: [bold]{result.best_model_id}[/bold] {result.best_params} with validation accuracy "
        f"[bold green]{result.best_score:.4f}[/bold green]\n"
        f"Training took {span:.1f} s, {span / args.epochs:.1f} s per epoch for all 8 models ({len(ok)} sub-epochs and "
        f"{len(evals)} evaluations; workers busy {busy:.0%} of that time); {wall:.1f} s in all with data preparation "
        f"and worker start-up.\n"
        f"Experiment directory: {result.experiment_dir}  (report: cerebro report {result.experiment_dir})"
    )
    return 0


def _local_spark(workers: int, console):
    """A Spark local[workers] session for the demo, or None (with a message) without pyspark."""
    import importlib.util

    if importlib.util.find_spec("pyspark") is None:
        console.print("[red]cerebro demo --backend spark needs pyspark[/red]: pip install 'cerebro-mop[spark]'")
        return None
    from .backends.spark_session import local_session

    console.print(f"Starting Spark local[{workers}] ...")
    spark = local_session(f"local[{workers}]", "cerebro-demo", {"spark.sql.shuffle.partitions": str(max(2, workers))})
    return spark


def report(args: argparse.Namespace) -> int:
    """``cerebro report DIR``: write DIR/gantt.png and DIR/report.html, print their paths."""
    from .errors import CerebroError
    from .report import write_report

    try:
        png, page = write_report(args.experiment_dir)
    except CerebroError as exc:
        print(f"cerebro report: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cerebro report: experiment directory {args.experiment_dir!r}: {exc}", file=sys.stderr)
        return 2
    print(png)
    print(page)
    return 0


def resume(args: argparse.Namespace) -> int:
    """Rebuild the search from the experiment directory and finish it on LocalBackend."""
    from . import CerebroError, LocalBackend, LocalStore
    from .experiment.journal import read_journal
    from .storage import layout
    from .worker import read_pickled

    exp_dir = os.path.abspath(args.experiment_dir)
    try:
        store_root, name = layout.split_experiment_path(exp_dir)
    except ValueError as exc:
        print(f"cerebro resume: {exc}", file=sys.stderr)
        return 2
    meta_path = os.path.join(exp_dir, layout.file_name(layout.experiment_file(name)))
    if not os.path.exists(meta_path):
        print(f"cerebro resume: {exp_dir!r} is not an experiment directory (no experiment.json)", file=sys.stderr)
        return 2
    store = LocalStore(store_root)
    try:
        started = [r for r in read_journal(store, name) if r.get("type") == "started"]
    except CerebroError as exc:
        print(f"cerebro resume: {exc}", file=sys.stderr)
        return 1
    if not started:
        print(f"cerebro resume: experiment {name!r} never started (its journal has no 'started' record); "
              "nothing to resume: run the search again with fit(df)", file=sys.stderr)
        return 2
    pickled = started[0].get("search")
    if not pickled:
        print(f"cerebro resume: {exp_dir!r} has no saved search: its estimator_gen_fn could not be saved by reference "
              "(a lambda or local function); resume from your program with fit(df, resume=True)", file=sys.stderr)
        return 2
    with open(meta_path) as fh:
        meta = json.load(fh)
    try:
        # Checked against the sha256 the journal names before it is unpickled.
        search = read_pickled(store, pickled)
    except (AttributeError, ImportError, ModuleNotFoundError) as exc:
        print(f"cerebro resume: cannot import the search's estimator_gen_fn ({exc}); make its module importable "
              "(PYTHONPATH) or resume from your program with fit(df, resume=True)", file=sys.stderr)
        return 2
    except CerebroError as exc:
        print(f"cerebro resume: {exc}", file=sys.stderr)
        return 1
    search.store = store
    search.experiment_name = name
    search.verbose = 0 if args.quiet else 1
    try:
        with LocalBackend(num_workers=meta["num_workers"]) as backend:
            search.backend = backend
            result = search.fit(None, resume=True)
    except (CerebroError, ValueError) as exc:
        print(f"cerebro resume: {exc}", file=sys.stderr)
        return 1
    print(f"finished {search.experiment_name}: best {result.best_model_id} {result.best_params} "
          f"{result.evaluation_metric}={result.best_score:.4f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cerebro", description="Deep-learning model selection with model hopper parallelism.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run a complete model selection on scikit-learn's digits")
    p_demo.add_argument("--backend", choices=["local", "spark"], default="local",
                        help="where workers run: local processes (default) or Spark local mode")
    p_demo.add_argument("--framework", choices=sorted(DEMO_ESTIMATORS), default="keras",
                        help="the models' framework: Keras (default) or PyTorch (needs cerebro-mop[torch])")
    p_demo.add_argument("--workers", type=int, default=2, help="number of MOP workers (default 2)")
    p_demo.add_argument("--epochs", type=int, default=5, help="epochs per configuration (default 5)")
    p_demo.add_argument("--store", default="cerebro-demo", help="store directory (default ./cerebro-demo)")
    p_demo.add_argument("--seed", type=int, default=2020)
    p_report = sub.add_parser("report", help="write a Gantt chart and a self-contained HTML report of an experiment")
    p_report.add_argument("experiment_dir", metavar="EXPERIMENT_DIR",
                          help="an experiment directory (<store>/experiments/<name>) written by fit")
    p_resume = sub.add_parser("resume", help="continue an interrupted experiment from what its journal committed")
    p_resume.add_argument("experiment_dir", metavar="EXPERIMENT_DIR",
                          help="the interrupted experiment's directory (<store>/experiments/<name>)")
    p_resume.add_argument("--quiet", action="store_true", help="no live progress")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command == "demo":
        return demo(args)
    if args.command == "report":
        return report(args)
    if args.command == "resume":
        return resume(args)
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
