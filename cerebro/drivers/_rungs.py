"""Scores and their order, shared by the rung-based drivers (Hyperband, ASHA) and PBT.  Pure.

A model's score is the finite value of the search's metric in the metrics of its latest
epoch; a missing, NaN or infinite value is no score (None), which ranks worst.  Rankings sort
on :func:`badness` (lower is better, whatever the mode).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

__all__ = ["score", "badness"]


def score(metrics: Mapping[str, Any], metric: str) -> float | None:
    """The finite score of ``metric`` in ``metrics``, or None (missing, NaN or infinite: the worst)."""
    value = metrics.get(metric)
    try:
        value = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def badness(score: float | None, mode: str) -> float:
    """Sort key: lower is better; a missing score is the worst."""
    if score is None:
        return math.inf
    return score if mode == "min" else -score
