"""When the search driver hears a model's report: the canonical order.  Pure.

A *report* is what the scheduler says about a model that the driver must answer: the end of
an epoch (:class:`~cerebro.core.events.EndEpoch`) or the model's abandonment
(:class:`~cerebro.core.events.AbandonModel`).  Every model the driver waits on has exactly one
report outstanding, and each has a place in *logical time*:

* the experiment starts at tick 0;
* a model created by a suggestion made at tick ``t`` reports at tick ``t + 1``; so does a model
  continued (by its own report's decision or a promotion) by a decision made at tick ``t``;
* a report is delivered at its key ``(tick, model index)``, and delivering it sets the clock
  to that key (:class:`~cerebro.core.state.ExperimentState` keeps the ticks, from the journal).

So every epoch costs one tick whatever its real duration: the keys are those of a run in which
every epoch takes the same time, and a decision never depends on which worker was faster.
Every key a decision creates is later than the decision's own, so a report can be delivered as
soon as it is the earliest outstanding one and has arrived: the conservative rule of
discrete-event simulation, with no rollback.

With ``canonical=False`` (the dynamic scheduler) reports are delivered as they arrive.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Mapping, TypeVar

__all__ = ["ReportQueue", "Key"]

Key = tuple[int, int]      # (tick, model index)
R = TypeVar("R")


class ReportQueue(Generic[R]):
    """Reports that arrived and wait to be delivered to the driver."""

    def __init__(self, canonical: bool) -> None:
        self.canonical = canonical
        self._held: OrderedDict[str, R] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def add(self, model_id: str, report: R) -> None:
        """``model_id``'s outstanding report arrived (at most one per model is outstanding)."""
        if model_id in self._held:
            raise ValueError(f"a second report of {model_id!r} arrived before the first was delivered")
        self._held[model_id] = report

    def first_awaited(self, awaited: Mapping[str, Key]) -> str | None:
        """The model whose report is due first (the smallest key), or None."""
        return min(awaited, key=awaited.__getitem__) if awaited else None

    def pop(self, awaited: Mapping[str, Key]) -> R | None:
        """The next report to deliver, or None while the one due first has not arrived.

        ``awaited``: model -> key of its outstanding report, for every model the driver waits
        on (held ones included)."""
        if not self._held:
            return None
        if not self.canonical:
            return self._held.popitem(last=False)[1]
        first = self.first_awaited(awaited)
        if first is None or first not in self._held:
            return None
        return self._held.pop(first)

    def held(self) -> list[str]:
        """The models whose reports arrived and wait, in arrival order."""
        return list(self._held)
