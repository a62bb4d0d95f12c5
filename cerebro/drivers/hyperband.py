"""Hyperband (Li et al., JMLR 2018) with epochs as the resource, over model hopper parallelism.

Brackets ``s = s_max .. 0`` (``s_max = floor(log_eta(max_epochs))``); bracket ``s`` starts
``n = ceil((s_max + 1) / (s + 1) * eta**s)`` configurations and runs successive halving on
them: rung ``i`` holds ``n_i = floor(n / eta**i)`` models trained to ``r_i = max_epochs /
eta**(s - i)`` epochs (cumulative, rounded to whole epochs; a promoted model continues from
its checkpoint).  A model that reaches its rung pauses (holding no worker) until every model
of the rung has arrived; then the best ``floor(n_i / eta)`` continue and the others stop.  The
last rung has no barrier: each model stops ("finished") when it gets there.

There is no global barrier: brackets are started one after another, the next as soon as
fewer models are training than there are workers, so a draining bracket never leaves workers
idle while configurations remain.

Pure: all randomness comes from ``self.rng``; the state is JSON-able.
"""

from __future__ import annotations

from typing import Any, Mapping

from .._checks import check_int
from ..space import sample
from ._rungs import badness, score
from .base import Action, Continue, Pause, SearchDriver, Stop


def hyperband_brackets(max_epochs: int, eta: int) -> list[list[tuple[int, int]]]:
    """Per bracket (s = s_max .. 0) its rungs ``(n_i, r_i)``, in integer arithmetic."""
    s_max = 0
    while eta ** (s_max + 1) <= max_epochs:
        s_max += 1
    out = []
    for s in range(s_max, -1, -1):
        n = -(-((s_max + 1) * eta ** s) // (s + 1))          # ceil((s_max+1)/(s+1) * eta^s)
        rungs = []
        for i in range(s + 1):
            div = eta ** (s - i)
            r_i = max((2 * max_epochs + div) // (2 * div), 1)  # round(max_epochs / eta^(s-i)), half up
            rungs.append((n // eta ** i, r_i))
        out.append(rungs)
    return out


def _copy_bracket(b: Mapping[str, Any]) -> dict[str, Any]:
    return {**b, "arrived": [list(a) for a in b["arrived"]]}


class HyperbandDriver(SearchDriver):
    """Hyperband over epochs: ``brackets()`` gives the plan, successive halving runs it."""

    def __init__(self, max_epochs: int, eta: int = 3) -> None:
        super().__init__()
        self.max_epochs = check_int("HyperbandDriver", "max_epochs", max_epochs, minimum=1)
        self.eta = check_int("HyperbandDriver", "eta", eta, minimum=2)
        self._plan = hyperband_brackets(self.max_epochs, self.eta)
        self._next_bracket = 0
        self._pending: list[int] = []                 # bracket of each suggested, not yet added config
        self._models: dict[str, dict[str, Any]] = {}  # id -> {"bracket", "status"}
        self._brackets: list[dict[str, Any]] = []     # per started bracket: its current rung

    # ------------------------------------------------------------------ plan

    def brackets(self) -> list[list[tuple[int, int]]]:
        """Per bracket (s = s_max first) the rungs ``(n_i, r_i)``: n_i models trained to r_i epochs."""
        return [list(rungs) for rungs in self._plan]

    def planned_epochs(self) -> int:
        """Model-epochs the plan trains (each promoted model trains r_i - r_{i-1} more epochs)."""
        total = 0
        for rungs in self._plan:
            previous = 0
            for n_i, r_i in rungs:
                total += n_i * (r_i - previous)
                previous = r_i
        return total

    def total_sub_epochs(self, num_partitions: int) -> int | None:
        return self.planned_epochs() * num_partitions

    def bracket_of(self, model_id: str) -> int:
        """The bracket (an index into :meth:`brackets`) that ``model_id`` belongs to."""
        return int(self._models[model_id]["bracket"])

    # ------------------------------------------------------------------ driver

    def _training(self) -> int:
        return sum(1 for m in self._models.values() if m["status"] == "training") + len(self._pending)

    def suggest(self, num_active: int) -> list[dict[str, Any]] | None:
        if self._next_bracket >= len(self._plan):
            return None
        out: list[dict[str, Any]] = []
        # No global barrier: open the next bracket whenever fewer models train than workers
        # (models paused at a rung barrier hold no worker).
        while self._next_bracket < len(self._plan) and self._training() < self.num_workers:
            b = self._next_bracket
            self._next_bracket += 1
            n = self._plan[b][0][0]
            self._brackets.append({"rung": 0, "expected": n, "arrived": [], "failed": 0, "done": False})
            for _ in range(n):
                out.append(sample(self.space, self.rng))
                self._pending.append(b)
        return out

    def on_model_added(self, model_id: str, params: Mapping[str, Any]) -> None:
        if not self._pending:
            raise ValueError(f"HyperbandDriver was told {model_id!r} was added, but no configuration was pending")
        b = self._pending.pop(0)
        self._models[model_id] = {"bracket": b, "status": "training"}

    def on_model_failed(self, model_id: str | None, params: Mapping[str, Any], error: str) -> list[Action]:
        """A failed model leaves its rung (the worst there); returns the actions this unblocks.

        When the failure completes a rung barrier, the paused models of that rung are
        promoted or stopped by the returned actions (the engine must apply them)."""
        if model_id is None:
            if not self._pending:
                return []
            b = self._pending.pop(0)
            self._brackets[b]["failed"] += 1
            return self._resolve(b)
        return self._leave(model_id, "failed")

    def on_model_stopped(self, model_id: str, epoch: int, metrics: Mapping[str, float], reason: str) -> list[Action]:
        """Someone else (an early-stopping wrapper) ended ``model_id``: it leaves its rung like a failure."""
        return self._leave(model_id, "done")

    def _leave(self, model_id: str, status: str) -> list[Action]:
        model = self._models.get(model_id)
        if model is None or model["status"] not in ("training", "paused"):
            return []
        b = model["bracket"]
        bracket = self._brackets[b]
        if model["status"] == "paused":  # it had arrived at the rung already: take its score back out
            bracket["arrived"] = [a for a in bracket["arrived"] if a[0] != model_id]
        model["status"] = status
        bracket["failed"] += 1
        return self._resolve(b)

    def on_epoch_end(self, model_id: str, epoch: int, metrics: Mapping[str, float]) -> Action | list[Action]:
        model = self._models.get(model_id)
        if model is None:
            raise ValueError(f"HyperbandDriver was told about the epoch of unknown model {model_id!r}")
        b = model["bracket"]
        bracket = self._brackets[b]
        rungs = self._plan[b]
        _, r_i = rungs[bracket["rung"]]
        if epoch < r_i:
            return Continue()
        if bracket["rung"] == len(rungs) - 1:
            model["status"] = "done"
            bracket["arrived"].append([model_id, score(metrics, self.metric)])
            self._resolve(b)
            return Stop("finished")
        model["status"] = "paused"
        bracket["arrived"].append([model_id, score(metrics, self.metric)])
        actions = self._resolve(b)
        if not any(getattr(a, "model_id", None) == model_id for a in actions):
            actions.append(Pause(model_id=model_id))
        return actions

    def _resolve(self, b: int) -> list[Action]:
        """Complete bracket ``b``'s rung if every model of it arrived or failed."""
        bracket = self._brackets[b]
        rungs = self._plan[b]
        if bracket["done"] or len(bracket["arrived"]) + bracket["failed"] < bracket["expected"]:
            return []
        if bracket["rung"] == len(rungs) - 1:
            bracket["done"] = True
            return []
        n_i, _ = rungs[bracket["rung"]]
        keep = n_i // self.eta
        order = sorted(range(len(bracket["arrived"])),
                       key=lambda k: (badness(bracket["arrived"][k][1], self.mode), k))
        kept = {bracket["arrived"][k][0] for k in order[:keep]}
        actions: list[Action] = []
        promoted = []
        for mid, _ in bracket["arrived"]:
            if mid in kept:
                self._models[mid]["status"] = "training"
                promoted.append(mid)
                actions.append(Continue(model_id=mid))
            else:
                self._models[mid]["status"] = "done"
                actions.append(Stop("successive halving", model_id=mid))
        bracket["rung"] += 1
        bracket["expected"] = len(promoted)
        bracket["arrived"] = []
        bracket["failed"] = 0
        if not promoted:
            bracket["done"] = True
        return actions

    # ------------------------------------------------------------------ state

    def get_state(self) -> dict[str, Any]:
        return {
            **super().get_state(),
            "next_bracket": self._next_bracket,
            "pending": list(self._pending),
            "models": {mid: dict(m) for mid, m in self._models.items()},
            "brackets": [_copy_bracket(b) for b in self._brackets],
        }

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self._next_bracket = int(state["next_bracket"])
        self._pending = [int(b) for b in state["pending"]]
        self._models = {str(mid): dict(m) for mid, m in state["models"].items()}
        self._brackets = [_copy_bracket(b) for b in state["brackets"]]
