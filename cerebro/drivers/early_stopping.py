"""Early stopping usable with any search: the median stopping rule, and a driver wrapper.

``MedianStopping`` (Golovin et al., Google Vizier, 2017): after the grace epochs, a model whose
best metric so far is worse than the median of the other models' best-so-far values at the same
epoch is stopped.  It never fails for lack of models (Maggy's median rule crashed with too few
finished trials); it simply keeps the model going until ``min_models`` others have reported.

``EarlyStoppingDriver(inner, stopper)`` applies a stopper to any :class:`SearchDriver`.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Mapping

from .._checks import check_int, check_type, param_error
from .base import Action, Exploit, SearchDriver, Stop

__all__ = ["MedianStopping", "EarlyStoppingDriver", "EARLY_STOP_REASON"]

EARLY_STOP_REASON = "early stopped by the median rule"


def _loss(value: float, mode: str) -> float:
    """The value oriented so that lower is better; NaN is the worst (+inf)."""
    if value is None or math.isnan(value):
        return math.inf
    return value if mode == "min" else -value


def _encode(value: float) -> Any:
    return value if math.isfinite(value) else (None if math.isnan(value) else repr(value))


def _decode(value: Any) -> float:
    return math.nan if value is None else float(value)


class MedianStopping:
    """The median stopping rule.

    ``should_stop(model_id, epoch, value, mode)`` records the model's metric ``value`` at
    ``epoch`` (1-based) and answers True when ``epoch > grace_epochs``, at least
    ``min_models`` *other* models have reported, and the model's best value so far is worse
    than the median of those models' best-so-far values up to ``epoch`` (a model still behind
    counts with its best value so far).  ``mode`` is "min" or "max"; NaN counts as the worst
    value.
    """

    def __init__(self, grace_epochs: int = 1, min_models: int = 3) -> None:
        self.grace_epochs = check_int("MedianStopping", "grace_epochs", grace_epochs, minimum=0, type_error=TypeError)
        self.min_models = check_int("MedianStopping", "min_models", min_models, minimum=1, type_error=TypeError)
        self._values: dict[str, dict[int, float]] = {}          # model -> epoch -> raw value
        self._best: dict[str, dict[str, dict[int, float]]] = {}  # mode -> model -> epoch -> best loss so far

    def __repr__(self) -> str:
        return f"MedianStopping(grace_epochs={self.grace_epochs}, min_models={self.min_models})"

    def record(self, model_id: str, epoch: int, value: float) -> None:
        """Record ``value`` for ``model_id`` at ``epoch`` without deciding."""
        values = self._values.setdefault(str(model_id), {})
        values[int(epoch)] = float(value)
        for mode in ("min", "max"):
            best, running = {}, math.inf
            for e in sorted(values):
                running = min(running, _loss(values[e], mode))
                best[e] = running
            self._best.setdefault(mode, {})[str(model_id)] = best

    def should_stop(self, model_id: str, epoch: int, value: float, mode: str) -> bool:
        if mode not in ("min", "max"):
            raise ValueError(f"The 'mode' argument of MedianStopping.should_stop must be 'min' or 'max'. Got {mode!r}.")
        model_id, epoch = str(model_id), int(epoch)
        self.record(model_id, epoch, value)
        if epoch <= self.grace_epochs:
            return False
        bests = self._best[mode]
        # Under MOP models move at their own pace: another model counts with its best value up
        # to this epoch, even if it has not reached this epoch yet (a lenient comparison for the
        # laggards, whose best is then older).  Comparing only models that already reported
        # this exact epoch would never judge a model that happens to be ahead.
        others = []
        for m, b in bests.items():
            reached = [e for e in b if e <= epoch]
            if m != model_id and reached:
                others.append(b[max(reached)])
        if len(others) < self.min_models:
            return False
        median = float(statistics.median(others))
        mine = bests[model_id][epoch]
        return bool(mine > median)   # False when the median is NaN (inf and -inf among the others)

    def get_state(self) -> dict[str, Any]:
        return {"values": {m: {str(e): _encode(v) for e, v in sorted(vals.items())}
                           for m, vals in sorted(self._values.items())}}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._values, self._best = {}, {}
        for model_id, vals in state["values"].items():
            for epoch, value in vals.items():
                self.record(model_id, int(epoch), _decode(value))


def _names(action: Action, current: str) -> set[str]:
    if isinstance(action, Exploit):
        return {action.target, action.source}
    return {current if action.model_id is None else action.model_id}


def _about_stopped(action: Action, current: str, stopped: set[str]) -> bool:
    if isinstance(action, Exploit):
        return action.target in stopped   # copying FROM an ended model is fine
    return bool(_names(action, current) & stopped)


class EarlyStoppingDriver(SearchDriver):
    """Wraps any search driver with an early-stopping rule.

    Everything is delegated to ``inner``; after each epoch the inner driver decides first,
    then, when ``stopper`` says so and the inner decision would continue or pause this model,
    that action becomes ``Stop("early stopped by the median rule")``.  Actions about other
    models are left alone, except that later actions naming a model this wrapper stopped are
    dropped (the inner driver may not know it ended).  The inner driver is told through its
    optional ``on_model_stopped(model_id, epoch, metrics, reason)`` method when it has one
    (TPEDriver reports the trial's loss there).  A model that the inner decision re-seeds with
    ``Exploit`` (PBT) is not stopped: its curve is being replaced.
    """

    def __init__(self, inner: SearchDriver, stopper: MedianStopping) -> None:
        super().__init__()
        check_type("EarlyStoppingDriver", "inner", inner, SearchDriver, "a SearchDriver")
        if not hasattr(stopper, "should_stop"):
            raise param_error("EarlyStoppingDriver", "stopper", "an object with a should_stop method (e.g. MedianStopping)",
                              stopper, TypeError)
        self.inner = inner
        self.stopper = stopper
        self._stopped: list[str] = []   # models this wrapper ended early (in order)

    def bind(self, space, rng, num_workers, metric="val_loss", mode="min") -> None:
        super().bind(space, rng, num_workers, metric, mode)
        self.inner.bind(space, rng, num_workers, metric, mode)

    def suggest(self, num_active: int):
        return self.inner.suggest(num_active)

    def on_model_added(self, model_id: str, params: Mapping[str, Any]) -> None:
        self.inner.on_model_added(model_id, params)

    def on_model_failed(self, model_id: str | None, params: Mapping[str, Any], error: str):
        return self.inner.on_model_failed(model_id, params, error)   # whatever the inner driver answers

    def total_sub_epochs(self, num_partitions: int) -> int | None:
        return self.inner.total_sub_epochs(num_partitions)

    def on_epoch_end(self, model_id: str, epoch: int, metrics: Mapping[str, float]):
        decision = self.inner.on_epoch_end(model_id, epoch, metrics)
        if self.metric not in metrics:
            raise KeyError(f"Early stopping watches {self.metric!r}, which the metrics of model {model_id!r} "
                           f"do not hold (they have {sorted(metrics)}).")
        stop = self.stopper.should_stop(model_id, epoch, float(metrics[self.metric]), self.mode)
        single = not isinstance(decision, (list, tuple))
        actions = [decision] if single else list(decision)
        # the inner driver may name a model this wrapper already ended: drop those actions
        stopped = set(self._stopped)
        kept = [a for a in actions if not _about_stopped(a, model_id, stopped)]
        changed = len(kept) != len(actions)
        actions = kept
        reseeded = any(isinstance(a, Exploit) and a.target == model_id for a in actions)
        if stop and not reseeded:
            mine = [i for i, a in enumerate(actions) if not isinstance(a, Exploit) and _names(a, model_id) == {model_id}]
            if not any(isinstance(actions[i], Stop) for i in mine):
                if mine:
                    for i in mine:
                        actions[i] = Stop(EARLY_STOP_REASON, model_id=actions[i].model_id)
                else:   # no action names it: it would be paused
                    actions.append(Stop(EARLY_STOP_REASON, model_id=model_id))
                changed = True
                self._stopped.append(model_id)
                hook = getattr(self.inner, "on_model_stopped", None)
                if callable(hook):
                    # the inner driver may answer with actions this unblocks (say a rung of
                    # paused models that no longer waits for this one): they join the decision
                    extra = hook(model_id, epoch, metrics, EARLY_STOP_REASON)
                    extra = [] if extra is None else (list(extra) if isinstance(extra, (list, tuple)) else [extra])
                    actions.extend(a for a in extra if not _about_stopped(a, model_id, set(self._stopped)))
        if single and len(actions) == 1 and not changed:
            return decision
        if single and len(actions) == 1:
            return actions[0]
        return actions

    def get_state(self) -> dict[str, Any]:
        return {"inner": self.inner.get_state(), "stopper": self.stopper.get_state(), "stopped": list(self._stopped)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.inner.set_state(state["inner"])
        self.stopper.set_state(state["stopper"])
        self._stopped = [str(m) for m in state.get("stopped", [])]
