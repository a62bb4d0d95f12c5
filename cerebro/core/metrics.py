"""Metric direction, and the one rule for which score is better and which model is best.  Pure.

The rule, used by the engine (the best checkpoint), the result (``best_model``), ``cerebro
report`` and the live progress alike: a higher score wins under ``mode="max"``, a lower one under
``"min"``; a NaN or missing score never beats a number; between equal scores the model created
first (lowest configuration index) wins.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

_MAXIMISE = ("acc", "auc", "precision", "recall", "f1", "r2", "iou", "top_k", "accuracy")
_MINIMISE = ("loss", "error", "mse", "mae", "mape", "msle", "crossentropy", "hinge", "rmse", "kl", "poisson", "cosine_similarity_loss")


def strip_prefix(metric: str) -> str:
    for prefix in ("val_", "train_"):
        if metric.startswith(prefix):
            return metric[len(prefix):]
    return metric


def infer_mode(metric: str) -> str | None:
    """'min' for loss- and error-like metrics, 'max' for accuracy-like ones, None if unknown.

    The original Cerebro picked the *lowest* accuracy; the direction is inferred from the name.
    """
    name = strip_prefix(metric).lower()
    if name == "loss" or name.endswith("_loss") or any(k in name for k in ("error", "crossentropy", "hinge")):
        return "min"
    if any(k in name for k in _MAXIMISE):
        return "max"
    if any(k == name or name.endswith("_" + k) or name.startswith(k) for k in _MINIMISE):
        return "min"
    return None


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or (not isinstance(x, (int, float)) and math.isnan(float(x)))


def is_better(a: float | None, b: float | None, mode: str) -> bool:
    """True when ``a`` is strictly better than ``b`` under ``mode`` (a NaN or None is worse than
    any number, and never better than another NaN)."""
    if _missing(a):
        return False
    if _missing(b):
        return True
    return float(a) < float(b) if mode == "min" else float(a) > float(b)


def rank_key(score: float | None, order: Any, mode: str) -> tuple:
    """Sort key of the rule: the best candidate sorts first."""
    if _missing(score):
        return (1, 0.0, order)
    return (0, float(score) if mode == "min" else -float(score), order)


def best_of(candidates: Iterable[tuple[Any, float | None, Any]], mode: str) -> tuple[Any, float | None] | None:
    """``(key, score)`` of the best of ``(key, score, order)`` candidates (``order``: the model's
    creation index, which breaks ties), or None when there are none.  The winner's score is NaN
    or None only when no candidate has a number."""
    best = None
    for key, score, order in candidates:
        k = rank_key(score, order, mode)
        if best is None or k < best[0]:
            best = (k, key, score)
    return None if best is None else (best[1], best[2])
