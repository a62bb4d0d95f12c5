"""Population based training (Jaderberg et al. 2017), synchronous as in the paper and Ray Tune's
``synch=True``.

The whole population is proposed at once; every model trains ``num_epochs``.  Every
``perturbation_interval`` epochs (epoch ``e`` with ``e % perturbation_interval == 0`` and
``e < num_epochs``) the population meets at a *barrier*: a member that reports epoch ``e`` is
paused (holding no worker) until every live member has reported epoch ``e``.  Then, and only
then, the members waiting at ``e`` are ranked by their epoch-``e`` scores (like with like: under
MOP members finish an epoch in waves, and ranking an early reporter against the others' older
scores would let a weak member escape).  Each member in the bottom ``quantile_fraction``
*exploits*: it takes a copy of the state of a member drawn uniformly from the top
``quantile_fraction`` and *explores* around that member's hyperparameters; every waiting member
then continues.  The quantiles take ceil(n * fraction) members each, at most floor(n / 2), never
overlapping; a missing or non-finite score ranks worst, ties go to the earlier-added member.
So the decisions at a barrier do not depend on the order in which members reported, and the
worst member at an interval epoch is always exploited (with n >= 2 members at the barrier).

Live members are those that have neither failed nor been ended by someone else.  A member that
fails leaves the population: it is no longer waited for, never ranked and never a source; a
failure that completes a barrier releases it (``on_model_failed`` returns the actions for the
paused members).  A member ended by an early-stopping wrapper (``on_model_stopped``) leaves it
the same way, even if it had already reported the barrier epoch: it is not ranked there.

Explore: with ``mutations=None`` every continuous dimension of the search space is multiplied
by 0.8 or 1.2 (a fair coin), clipped to its bounds (re-quantised for q-dimensions, an int for an integral one,
an integer for hp_randint), and every hp_choice is resampled with probability 0.25.  A ``mutations``
dict maps a parameter name to an hp_* dimension (resampled), a list of values (one drawn
uniformly) or a callable ``(value, rng) -> new value``; only those parameters change.

Pure: all randomness comes from ``self.rng``; the state (with the lineage of every exploit and
the members waiting at the barrier) is JSON-able.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .._checks import check_int, check_number, check_type, is_number
from ..space import Choice, Dimension, LogUniform, QLogUniform, QUniform, RandInt, Uniform, sample
from ._rungs import badness, score
from .base import Action, Continue, Exploit, Pause, SearchDriver, Stop

RESAMPLE_PROBABILITY = 0.25
PERTURB_FACTORS = (0.8, 1.2)


def _json_value(value: Any) -> Any:
    """numpy scalars as Python numbers, so params stay JSON-able."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def perturb(dim: Dimension, value: Any, rng: np.random.Generator) -> Any:
    """One explore step of ``value`` within ``dim`` (the ``mutations=None`` rule)."""
    if isinstance(dim, Choice):
        if rng.random() < RESAMPLE_PROBABILITY:
            return dim.sample(rng)
        return value
    factor = PERTURB_FACTORS[int(rng.integers(2))]
    if not is_number(value):
        return value  # not a number (the user built it by hand): leave it
    new = float(value) * factor
    if isinstance(dim, (Uniform, LogUniform)):
        return float(min(max(new, dim.low), dim.high))
    if isinstance(dim, (QUniform, QLogUniform)):
        out = dim.snap(min(max(new, dim.low), dim.high))   # an int for an integral dimension
        if out == float(value):  # rounding swallowed the step: move one quantum the same way
            step = dim.q if factor > 1 else -dim.q
            out = dim.snap(min(max(float(value) + step, dim.low), dim.high))
        return out
    if isinstance(dim, RandInt):
        out = int(math.floor(new + 0.5))
        if out == int(value):  # small integers: 2 * 0.8 and 2 * 1.2 both round to 2
            out += 1 if factor > 1 else -1
        return int(min(max(out, dim.low), dim.high - 1))
    return value


def _copy_model(m: Mapping[str, Any]) -> dict[str, Any]:
    return {**m, "params": dict(m["params"])}


def _copy_exploit(e: Mapping[str, Any]) -> dict[str, Any]:
    return {**e, "old_params": dict(e["old_params"]), "new_params": dict(e["new_params"])}


class PBTDriver(SearchDriver):
    """Synchronous population based training; ``exploits()`` gives the lineage.

    Member statuses: "training" (live, including those paused at the barrier), "failed",
    "done" (finished its epochs) and "stopped" (ended by someone else, e.g. an early-stopping
    wrapper).  ``_waiting`` lists the members paused at the barrier of epoch ``_barrier``.
    """

    def __init__(self, population_size: int, num_epochs: int, perturbation_interval: int = 1,
                 quantile_fraction: float = 0.25, mutations: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.population_size = check_int("PBTDriver", "population_size", population_size, minimum=1)
        self.num_epochs = check_int("PBTDriver", "num_epochs", num_epochs, minimum=1)
        self.perturbation_interval = check_int("PBTDriver", "perturbation_interval", perturbation_interval, minimum=1)
        self.quantile_fraction = check_number("PBTDriver", "quantile_fraction", quantile_fraction, low=0, high=0.5,
                                              low_open=True, expected="a number in (0, 0.5]")
        self.mutations: dict[str, Dimension | Callable[[Any, np.random.Generator], Any]] | None = None
        if mutations is not None:
            check_type("PBTDriver", "mutations", mutations, Mapping,
                       "None or a dict of name -> hp_* dimension, list or callable")
            self.mutations = {}
            for name in sorted(mutations):
                spec = mutations[name]
                if isinstance(spec, (list, tuple)):
                    spec = Choice(tuple(spec))
                if not isinstance(spec, Dimension) and not callable(spec):
                    raise TypeError(
                        f"mutations[{name!r}] must be an hp_* dimension, a list of values or a callable (value, rng) -> value. Got {spec!r}."
                    )
                self.mutations[name] = spec
        self._suggested = False
        self._pending = 0
        self._models: dict[str, dict[str, Any]] = {}  # id -> {"params", "status", "score", "epoch"}
        self._exploits: list[dict[str, Any]] = []
        self._waiting: list[str] = []        # members paused at the barrier, in the order they reported
        self._barrier: int | None = None     # the epoch they wait at (None: no barrier open)

    def bind(self, space, rng, num_workers, metric="val_loss", mode="min") -> None:
        super().bind(space, rng, num_workers, metric, mode)
        if self.mutations is not None:
            unknown = sorted(set(self.mutations) - set(self.space))
            if unknown:
                raise ValueError(f"mutations name parameters that are not in the search space: {unknown}; "
                                 f"the search space has {sorted(self.space)}.")

    # ------------------------------------------------------------------ public

    def exploits(self) -> list[dict[str, Any]]:
        """The lineage: one dict per exploit, in order: epoch, target, source, their scores,
        old_params (the target's) and new_params (explored from the source's)."""
        return [_copy_exploit(e) for e in self._exploits]

    def params(self, model_id: str) -> dict[str, Any]:
        """The current hyperparameters of ``model_id`` (after any exploit)."""
        return dict(self._models[model_id]["params"])

    def waiting(self) -> tuple[int | None, list[str]]:
        """(epoch, members): the barrier now open and the members paused at it, in the order
        they reported; (None, []) when no barrier is open."""
        return self._barrier, list(self._waiting)

    def explore(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """New hyperparameters around ``params`` (draws from ``self.rng``)."""
        new = dict(params)
        if self.mutations is None:
            for name in sorted(self.space):
                if name in new:
                    new[name] = _json_value(perturb(self.space[name], new[name], self.rng))
        else:
            for name, spec in self.mutations.items():
                if isinstance(spec, Dimension):
                    new[name] = _json_value(spec.sample(self.rng))
                else:
                    new[name] = _json_value(spec(new.get(name), self.rng))
        return new

    def quantiles(self, model_ids: Iterable[str] | None = None) -> tuple[list[str], list[str]]:
        """(bottom, top): the members in the bottom and top ``quantile_fraction`` of
        ``model_ids`` (default: the members waiting at the open barrier) by their scores.

        Both are empty with fewer than 2 members; they never overlap (Ray Tune's rule:
        ceil(n * fraction) members each, at most floor(n / 2)).  A missing score ranks worst;
        ties go to the earlier-added member, so the order of ``model_ids`` does not matter."""
        ids = set(self._waiting if model_ids is None else model_ids)
        position = {mid: i for i, mid in enumerate(self._models)}
        members = [mid for mid in self._models if mid in ids]
        if len(members) < 2:
            return [], []
        ranked = sorted(members, key=lambda mid: (badness(self._models[mid]["score"], self.mode), position[mid]))
        k = min(int(math.ceil(len(ranked) * self.quantile_fraction)), len(ranked) // 2)
        return ranked[len(ranked) - k:], ranked[:k]

    # ------------------------------------------------------------------ barrier

    def _leave(self, model_id: str, status: str) -> None:
        """``model_id`` ends (failed, finished, or stopped by someone else): it leaves the barrier."""
        self._models[model_id]["status"] = status
        if model_id in self._waiting:
            self._waiting.remove(model_id)
        if not self._waiting:
            self._barrier = None

    def _release(self) -> list[Action]:
        """The actions for every member waiting at the barrier once no live member is missing
        from it (else []): rank them by their scores at the barrier epoch; the bottom exploit."""
        if not self._waiting or self._pending:
            return []
        waiting = set(self._waiting)
        if any(m["status"] == "training" and mid not in waiting for mid, m in self._models.items()):
            return []
        epoch = self._barrier
        members = [mid for mid in self._models if mid in waiting]   # population order
        bottom, top = self.quantiles(members)
        exploited: dict[str, Exploit] = {}
        if top:
            for target in (mid for mid in members if mid in bottom):   # population order, as the actions
                source = top[int(self.rng.integers(len(top)))]
                model, src = self._models[target], self._models[source]
                old = dict(model["params"])
                new = self.explore(src["params"])
                self._exploits.append({
                    "epoch": epoch, "target": target, "source": source,
                    "target_score": model["score"], "source_score": src["score"], "source_epoch": src["epoch"],
                    "old_params": old, "new_params": dict(new),
                })
                model["params"] = dict(new)
                model["score"] = src["score"]  # it now holds the source's state
                exploited[target] = Exploit(target=target, source=source, params=dict(new))
        self._waiting, self._barrier = [], None
        actions: list[Action] = []
        for mid in members:
            if mid in exploited:
                actions.append(exploited[mid])
            actions.append(Continue(model_id=mid))
        return actions

    # ------------------------------------------------------------------ driver

    def suggest(self, num_active: int) -> list[dict[str, Any]] | None:
        if self._suggested:
            return None
        self._suggested = True
        out = [sample(self.space, self.rng) for _ in range(self.population_size)]
        self._pending = len(out)
        return out

    def on_model_added(self, model_id: str, params: Mapping[str, Any]) -> None:
        self._pending = max(self._pending - 1, 0)
        self._models[model_id] = {"params": {k: _json_value(v) for k, v in params.items()},
                                  "status": "training", "score": None, "epoch": 0}

    def on_model_failed(self, model_id: str | None, params: Mapping[str, Any], error: str) -> list[Action]:
        """A failed member leaves the population (never ranked, never a source, no longer
        waited for); when that completes the barrier, the actions for the paused members."""
        if model_id is None:
            self._pending = max(self._pending - 1, 0)
        elif model_id in self._models:
            self._leave(model_id, "failed")
        return self._release()

    def on_model_stopped(self, model_id: str, epoch: int, metrics: Mapping[str, float], reason: str) -> list[Action]:
        """Someone else (an early-stopping wrapper) ended ``model_id``: it leaves the barrier
        (not ranked there, even if it already reported); when that completes the barrier, the
        actions for the paused members."""
        if model_id in self._models and self._models[model_id]["status"] == "training":
            self._leave(model_id, "stopped")
        return self._release()

    def on_epoch_end(self, model_id: str, epoch: int, metrics: Mapping[str, float]) -> Action | list[Action]:
        model = self._models.get(model_id)
        if model is None:
            raise ValueError(f"PBTDriver was told about the epoch of unknown model {model_id!r}")
        epoch = int(epoch)
        model["score"] = score(metrics, self.metric)
        model["epoch"] = epoch
        if epoch >= self.num_epochs:
            self._leave(model_id, "done")
            released = self._release()   # [] (a barrier epoch is always before the last)
            return [Stop("finished", model_id=model_id), *released] if released else Stop("finished")
        if epoch % self.perturbation_interval != 0:
            return Continue()
        if self._barrier is not None and self._barrier != epoch:
            raise ValueError(f"PBTDriver: {model_id} reported epoch {epoch} while the population waits at the barrier "
                             f"of epoch {self._barrier} ({self._waiting}); every member must reach a barrier before "
                             "any member passes it")
        self._barrier = epoch
        if model_id not in self._waiting:
            self._waiting.append(model_id)
        return self._release() or Pause()

    def total_sub_epochs(self, num_partitions: int) -> int | None:
        return self.population_size * self.num_epochs * num_partitions

    # ------------------------------------------------------------------ state

    def get_state(self) -> dict[str, Any]:
        return {
            **super().get_state(),
            "suggested": self._suggested,
            "pending": self._pending,
            "models": {mid: _copy_model(m) for mid, m in self._models.items()},
            "order": list(self._models),   # insertion order (ties), whatever the key order of a journal
            "exploits": [_copy_exploit(e) for e in self._exploits],
            "waiting": list(self._waiting),
            "barrier": self._barrier,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self._suggested = bool(state["suggested"])
        self._pending = int(state["pending"])
        models = state["models"]
        order = [str(mid) for mid in state.get("order", models)]
        self._models = {mid: _copy_model(models[mid]) for mid in order}
        self._exploits = [_copy_exploit(e) for e in state["exploits"]]
        self._waiting = [str(mid) for mid in state.get("waiting", [])]
        barrier = state.get("barrier")
        self._barrier = None if barrier is None else int(barrier)
