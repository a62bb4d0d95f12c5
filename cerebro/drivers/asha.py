"""ASHA: asynchronous successive halving (Li et al., MLSys 2020), epochs as the resource.

Rungs sit at ``grace_period * reduction_factor**k`` epochs (while <= ``max_epochs``), plus
``max_epochs`` as the last one.  A model that reaches a rung is recorded there; if it is
among the best ``floor(recorded / reduction_factor)`` of that rung it continues to the next
rung, else it pauses (holding no worker).  Whenever a rung's top fraction grows to include a
paused model never promoted from it (because more models arrived), that model is resumed; a
model is never promoted twice from the same rung.  New configurations start whenever fewer
models train than there are workers, until ``num_models`` have started: there is no barrier.
Once every configuration has started and none trains any more, nothing can change the rungs,
so the paused models are stopped ("not promoted") and the search ends.

Pure: all randomness comes from ``self.rng``; the state is JSON-able.
"""

from __future__ import annotations

from typing import Any, Mapping

from .._checks import check_int
from ..space import sample
from ._rungs import badness, score
from .base import Action, Continue, Pause, SearchDriver, Stop


def asha_rungs(max_epochs: int, grace_period: int, reduction_factor: int) -> list[int]:
    """The rung epochs: grace_period * reduction_factor**k <= max_epochs, then max_epochs."""
    rungs = []
    r = grace_period
    while r < max_epochs:
        rungs.append(r)
        r *= reduction_factor
    rungs.append(max_epochs)
    return rungs


class ASHADriver(SearchDriver):
    """Asynchronous successive halving over ``num_models`` sampled configurations."""

    def __init__(self, num_models: int, max_epochs: int, grace_period: int = 1, reduction_factor: int = 3) -> None:
        super().__init__()
        self.num_models = check_int("ASHADriver", "num_models", num_models, minimum=1)
        self.max_epochs = check_int("ASHADriver", "max_epochs", max_epochs, minimum=1)
        self.grace_period = check_int("ASHADriver", "grace_period", grace_period, minimum=1)
        self.reduction_factor = check_int("ASHADriver", "reduction_factor", reduction_factor, minimum=2)
        self._rungs = asha_rungs(self.max_epochs, self.grace_period, self.reduction_factor)
        self._started = 0                              # configurations suggested so far
        self._pending = 0                              # suggested, not yet added (or failed to build)
        self._models: dict[str, dict[str, Any]] = {}   # id -> {"status", "rung"}
        # per non-final rung: models recorded there in arrival order ([id, score]) and those promoted
        self._recorded: list[list[list[Any]]] = [[] for _ in self._rungs[:-1]]
        self._promoted: list[list[str]] = [[] for _ in self._rungs[:-1]]

    def rungs(self) -> list[int]:
        """The rung epochs (the last one is ``max_epochs``)."""
        return list(self._rungs)

    def recorded(self, rung: int) -> list[tuple[str, float | None]]:
        """The models recorded at non-final rung ``rung`` (index), with their scores, in arrival order."""
        return [(m, s) for m, s in self._recorded[rung]]

    def promoted(self, rung: int) -> list[str]:
        """The models promoted from non-final rung ``rung`` (index), in promotion order."""
        return list(self._promoted[rung])

    # ------------------------------------------------------------------ driver

    def _training(self) -> int:
        return sum(1 for m in self._models.values() if m["status"] == "training") + self._pending

    def suggest(self, num_active: int) -> list[dict[str, Any]] | None:
        if self._started >= self.num_models:
            return None
        room = min(self.num_workers - self._training(), self.num_models - self._started)
        out = [sample(self.space, self.rng) for _ in range(max(room, 0))]
        self._started += len(out)
        self._pending += len(out)
        return out

    def on_model_added(self, model_id: str, params: Mapping[str, Any]) -> None:
        self._pending = max(self._pending - 1, 0)
        self._models[model_id] = {"status": "training", "rung": -1}

    def on_model_failed(self, model_id: str | None, params: Mapping[str, Any], error: str) -> list[Action]:
        """Returns the final Stops when this failure leaves nothing training (the engine must apply them)."""
        if model_id is None:
            self._pending = max(self._pending - 1, 0)
        elif model_id in self._models and self._models[model_id]["status"] in ("training", "paused"):
            self._models[model_id]["status"] = "failed"
        return self._finish_if_idle()

    def on_model_stopped(self, model_id: str, epoch: int, metrics: Mapping[str, float], reason: str) -> list[Action]:
        """Someone else (an early-stopping wrapper) ended ``model_id``; like :meth:`on_model_failed`."""
        if model_id in self._models and self._models[model_id]["status"] in ("training", "paused"):
            self._models[model_id]["status"] = "done"
        return self._finish_if_idle()

    def on_epoch_end(self, model_id: str, epoch: int, metrics: Mapping[str, float]) -> Action | list[Action]:
        model = self._models.get(model_id)
        if model is None:
            raise ValueError(f"ASHADriver was told about the epoch of unknown model {model_id!r}")
        if epoch >= self.max_epochs:
            model["status"] = "done"
            return [Stop("finished", model_id=model_id), *self._finish_if_idle()]
        if epoch not in self._rungs:
            return Continue()
        k = self._rungs.index(epoch)
        model["status"] = "paused"
        model["rung"] = k
        self._recorded[k].append([model_id, score(metrics, self.metric)])
        actions = self._promote(k)
        actions.extend(self._finish_if_idle())
        if not any(getattr(a, "model_id", None) == model_id for a in actions):
            actions.append(Pause(model_id=model_id))
        return actions

    def _promote(self, k: int) -> list[Action]:
        """Resume every paused model in rung ``k``'s top 1/reduction_factor not yet promoted from it."""
        recorded = self._recorded[k]
        # Fewer than reduction_factor recorded: the best so far goes on (Optuna's rule), so the
        # first model at every rung continues and a finite search always reaches max_epochs.
        top = max(len(recorded) // self.reduction_factor, 1)
        order = sorted(range(len(recorded)), key=lambda i: (badness(recorded[i][1], self.mode), i))
        actions: list[Action] = []
        for i in sorted(order[:top]):  # in arrival order
            mid = recorded[i][0]
            if mid in self._promoted[k] or self._models[mid]["status"] != "paused" or self._models[mid]["rung"] != k:
                continue
            self._promoted[k].append(mid)
            self._models[mid]["status"] = "training"
            actions.append(Continue(model_id=mid))
        return actions

    def _finish_if_idle(self) -> list[Action]:
        """Once all configurations started and none trains, no rung can change: stop the paused ones."""
        if self._started < self.num_models or self._training() > 0:
            return []
        actions: list[Action] = []
        for mid, m in self._models.items():
            if m["status"] == "paused":
                m["status"] = "done"
                actions.append(Stop("not promoted", model_id=mid))
        return actions

    def total_sub_epochs(self, num_partitions: int) -> int | None:
        return None  # depends on the scores

    # ------------------------------------------------------------------ state

    def get_state(self) -> dict[str, Any]:
        return {
            **super().get_state(),
            "started": self._started,
            "pending": self._pending,
            "models": {mid: dict(m) for mid, m in self._models.items()},
            "recorded": [[list(r) for r in rung] for rung in self._recorded],
            "promoted": [list(p) for p in self._promoted],
        }

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self._started = int(state["started"])
        self._pending = int(state["pending"])
        self._models = {str(mid): dict(m) for mid, m in state["models"].items()}
        self._recorded = [[list(r) for r in rung] for rung in state["recorded"]]
        self._promoted = [list(p) for p in state["promoted"]]
