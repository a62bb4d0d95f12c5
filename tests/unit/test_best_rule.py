"""One best-model rule, used by the result, `cerebro report`, the live progress and the engine's
best checkpoint: NaN never wins, ties go to the model created first."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from cerebro.core.metrics import best_of, is_better
from cerebro.progress import RichProgress
from cerebro.report import best_model

NAN = math.nan


@pytest.mark.parametrize("mode, candidates, winner", [
    ("max", [("a", 0.5, 0), ("b", 0.9, 1), ("c", 0.7, 2)], "b"),
    ("min", [("a", 0.5, 0), ("b", 0.9, 1), ("c", 0.1, 2)], "c"),
    ("max", [("a", NAN, 0), ("b", 0.2, 1)], "b"),             # NaN never beats a number
    ("min", [("a", NAN, 0), ("b", 5.0, 1)], "b"),
    ("max", [("b", 0.8, 1), ("a", 0.8, 0), ("c", 0.8, 2)], "a"),   # ties: created first
    ("min", [("c", 0.3, 2), ("b", 0.3, 1)], "b"),
    ("min", [("b", NAN, 1), ("a", NAN, 0)], "a"),             # all NaN: the first created, NaN score
    ("max", [("b", None, 1), ("a", 0.1, 0)], "a"),
])
def test_best_of(mode, candidates, winner):
    assert best_of(candidates, mode)[0] == winner


def test_best_of_nothing_is_none():
    assert best_of([], "min") is None


def test_is_better_is_strict_and_nan_aware():
    assert is_better(1.0, 2.0, "min") and not is_better(2.0, 1.0, "min")
    assert is_better(2.0, 1.0, "max") and not is_better(1.0, 1.0, "max")
    assert is_better(0.0, NAN, "max") and is_better(0.0, NAN, "min")
    assert not is_better(NAN, 0.0, "max") and not is_better(NAN, NAN, "min")


def _history(rows):
    return pd.DataFrame([{"model_id": m, "epoch": e, "val_accuracy": s} for m, e, s in rows])


def test_report_uses_the_rule():
    h = _history([("model_000", 1, 0.9), ("model_000", 2, NAN), ("model_001", 2, 0.8), ("model_002", 2, 0.8)])
    # model_000's last epoch is NaN: never best; model_001 and model_002 tie: the first created wins
    assert best_model(h, "accuracy", "max") == ("model_001", 0.8)
    assert best_model(_history([("model_000", 1, NAN)]), "accuracy", "max") is None


def test_live_progress_uses_the_rule():
    progress = RichProgress(10, "val_accuracy", "max")
    for i in (1, 0, 2):   # added out of id order: ties go by creation index
        progress("model_added", {"model_id": f"model_00{i}", "params": {}, "index": i})
    progress("epoch", {"model_id": "model_002", "epoch": 1, "metrics": {"val_accuracy": NAN}})
    assert progress.best[1] == "model_002" and math.isnan(progress.best[0])   # a NaN only while nothing else scored
    progress("epoch", {"model_id": "model_001", "epoch": 1, "metrics": {"val_accuracy": 0.7}})
    progress("epoch", {"model_id": "model_000", "epoch": 1, "metrics": {"val_accuracy": 0.7}})
    assert progress.best == (0.7, "model_000")
    progress("epoch", {"model_id": "model_002", "epoch": 2, "metrics": {"val_accuracy": 0.71}})
    assert progress.best == (0.71, "model_002")
