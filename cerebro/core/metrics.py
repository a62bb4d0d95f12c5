"""Metric direction: which way is better.  Pure."""

from __future__ import annotations

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


def better(a: float, b: float, mode: str) -> bool:
    """True when ``a`` is strictly better than ``b`` under ``mode``."""
    return a < b if mode == "min" else a > b
