"""What the engine tests ask of ``visits``: how often each (model, epoch, partition) committed."""

from __future__ import annotations

from collections import Counter


def ok_once(visits) -> dict:
    """``{(model_id, epoch, partition): number of ok visits}``: every value 1 when each visit
    committed exactly once."""
    return dict(Counter((v["model_id"], v["epoch"], v["partition"]) for v in visits if v["status"] == "ok"))
