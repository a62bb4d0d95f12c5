"""Tree-structured Parzen Estimator search (hyperopt's TPE), asynchronous ask/tell.

Each configuration is one hyperopt trial.  Whenever the engine has room, :meth:`TPEDriver.suggest`
asks ``hyperopt.tpe.suggest`` for one trial at a time (the trials still running count as
infinitely bad, hyperopt's own asynchronous convention), inserts it as *running*, and hands the
sampled values back in the user's terms (an ``hp_choice`` gives the chosen value, not its index).
When a model ends its last epoch its trial is told the loss (the metric, negated for ``mode="max"``);
a configuration that fails is marked as an errored trial, which TPE ignores.

The driver is pure: hyperopt is imported lazily, every seed passed to it is drawn from
``self.rng``, and :meth:`get_state` is plain JSON (the trials column-wise, not a pickle).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from .._checks import check_int
from ..space import Choice, Dimension, LogUniform, QLogUniform, QUniform, RandInt, Uniform
from .base import Continue, Decision, SearchDriver, Stop

__all__ = ["TPEDriver", "hyperopt_space"]

_SEED_HIGH = 2**31 - 1


def hyperopt_space(space: Mapping[str, Dimension]) -> dict[str, Any]:
    """The hyperopt expression of a cerebro search space, one ``hp.*`` node per dimension.

    cerebro's log-uniform bounds are the values themselves; hyperopt's are their logarithms.
    """
    from hyperopt import hp

    out: dict[str, Any] = {}
    for label in sorted(space):
        dim = space[label]
        if isinstance(dim, Choice):
            out[label] = hp.choice(label, list(range(len(dim.values))))
        elif isinstance(dim, Uniform):
            out[label] = hp.uniform(label, dim.low, dim.high)
        elif isinstance(dim, LogUniform):
            out[label] = hp.loguniform(label, math.log(dim.low), math.log(dim.high))
        elif isinstance(dim, QUniform):
            out[label] = hp.quniform(label, dim.low, dim.high, dim.q)
        elif isinstance(dim, QLogUniform):
            out[label] = hp.qloguniform(label, math.log(dim.low), math.log(dim.high), dim.q)
        elif isinstance(dim, RandInt):
            out[label] = hp.randint(label, int(dim.low), int(dim.high))
        else:
            raise TypeError(f"TPEDriver cannot map search space dimension {label!r} ({type(dim).__name__}) to hyperopt.")
    return out


def _in_bounds(dim: Dimension, raw: Any) -> Any:
    """hyperopt's raw value (misc.vals) of one dimension, as a value inside cerebro's bounds.

    Returns the raw value unchanged when it is already valid; the q-variants can round outside
    [low, high] in hyperopt (``qloguniform(log 1, log 1000, 10)`` yields 0), and exp(log(high))
    can exceed ``high`` by one ulp: those are moved to the nearest valid value.  hyperopt's q
    values are floats: those of a q-dimension with int bounds and step come back as ints.
    """
    if isinstance(dim, Choice):
        return int(raw)
    if isinstance(dim, RandInt):
        return min(max(int(raw), int(dim.low)), int(dim.high) - 1)
    if isinstance(dim, (QUniform, QLogUniform)):
        return dim.snap(raw)   # hyperopt gives floats: an integral dimension's value is an int
    return min(max(float(raw), float(dim.low)), float(dim.high))


# -- JSON encoding of the trials' numbers: numpy scalars become Python numbers, and non-finite
#    floats (a diverged model's loss) a tagged object, so that the state is strict JSON.

def _encode(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"TPEDriver state holds a value that is not JSON-able: {obj!r}")


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__float__"}:
            return float(obj["__float__"])
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


class TPEDriver(SearchDriver):
    """hyperopt's TPE, asking for a new configuration whenever a slot frees.

    ``num_models`` configurations in all, each trained for ``num_epochs``; at most
    ``parallelism`` (default: the number of workers) run at once.  ``n_startup_jobs`` is the
    number of random trials before TPE models the losses (``None``: hyperopt's default, 20).
    """

    def __init__(self, num_models: int, num_epochs: int, parallelism: int | None = None, *,
                 n_startup_jobs: int | None = None) -> None:
        super().__init__()
        self.num_models = check_int("TPEDriver", "num_models", num_models, type_error=TypeError)
        self.num_epochs = check_int("TPEDriver", "num_epochs", num_epochs, type_error=TypeError)
        self.parallelism = None if parallelism is None else check_int("TPEDriver", "parallelism", parallelism, type_error=TypeError)
        if n_startup_jobs is not None:
            n_startup_jobs = check_int("TPEDriver", "n_startup_jobs", n_startup_jobs, minimum=0,
                                       expected="an int >= 0 or None")
        self.n_startup_jobs = n_startup_jobs
        self._domain: Any = None
        self._trials: Any = None
        self._num_tids = 0                       # trial ids handed out so far
        self._pending: list[int] = []            # suggested, not yet added nor failed (suggestion order)
        self._model_tids: dict[str, int] = {}    # model id -> trial id
        self._proposed = 0
        self._reported = 0
        self._failed = 0

    # ------------------------------------------------------------------ set-up

    def bind(self, space, rng, num_workers, metric="val_loss", mode="min") -> None:
        super().bind(space, rng, num_workers, metric, mode)
        from hyperopt import Domain, Trials

        self._domain = Domain(lambda params: 0.0, hyperopt_space(self.space))
        self._trials = Trials()

    def _require_bound(self) -> None:
        if self._trials is None:
            raise RuntimeError("TPEDriver.bind() must be called before the driver is used.")

    @property
    def max_active(self) -> int:
        return self.parallelism if self.parallelism is not None else max(1, int(self.num_workers))

    # ------------------------------------------------------------------ ask

    def suggest(self, num_active: int) -> list[dict[str, Any]] | None:
        self._require_bound()
        if self._proposed >= self.num_models and self._reported + self._failed >= self._proposed:
            return None
        room = min(self.max_active - num_active, self.num_models - self._proposed)
        return [self._ask() for _ in range(max(0, room))]

    def _ask(self) -> dict[str, Any]:
        from hyperopt import JOB_STATE_RUNNING, tpe

        tids = self._trials.new_trial_ids(1)
        self._num_tids = tids[-1] + 1
        seed = int(self.rng.integers(_SEED_HIGH))
        kwargs: dict[str, Any] = {"verbose": False}
        if self.n_startup_jobs is not None:
            kwargs["n_startup_jobs"] = self.n_startup_jobs
        docs = tpe.suggest(tids, self._domain, self._trials, seed, **kwargs)
        self._trials.insert_trial_docs(docs)
        self._trials.refresh()
        doc = self._doc(tids[0])
        doc["state"] = JOB_STATE_RUNNING
        params = {}
        vals = doc["misc"]["vals"]
        for label in sorted(self.space):
            dim = self.space[label]
            raw = vals[label][0]
            value = _in_bounds(dim, raw)
            if value != raw:
                vals[label] = [value]   # TPE learns from the value actually trained
            params[label] = dim.values[value] if isinstance(dim, Choice) else value
        self._pending.append(tids[0])
        self._proposed += 1
        return params

    # ------------------------------------------------------------------ tell

    def on_model_added(self, model_id: str, params: Mapping[str, Any]) -> None:
        self._require_bound()
        if model_id in self._model_tids:
            return
        if not self._pending:
            raise RuntimeError(f"TPEDriver was told about model {model_id!r}, but no suggestion is waiting for a model.")
        self._model_tids[model_id] = self._pending.pop(0)

    def on_epoch_end(self, model_id: str, epoch: int, metrics: Mapping[str, float]) -> Decision:
        self._require_bound()
        if epoch < self.num_epochs:
            return Continue()
        self._report(model_id, metrics)
        return Stop("finished")

    def on_model_stopped(self, model_id: str, epoch: int, metrics: Mapping[str, float], reason: str = "") -> None:
        """A wrapper (e.g. :class:`~cerebro.drivers.early_stopping.EarlyStoppingDriver`) ended the
        model before its last epoch: its trial is told the loss it had reached."""
        self._require_bound()
        self._report(model_id, metrics)

    def _report(self, model_id: str, metrics: Mapping[str, float]) -> None:
        from hyperopt import JOB_STATE_DONE, JOB_STATE_RUNNING, STATUS_OK

        tid = self._model_tids.get(model_id)
        if tid is None:
            raise KeyError(f"TPEDriver does not know model {model_id!r}.")
        doc = self._doc(tid)
        if doc is None or doc["state"] != JOB_STATE_RUNNING:
            return   # already told
        if self.metric not in metrics:
            raise KeyError(f"TPEDriver optimises {self.metric!r}, which the metrics of model {model_id!r} "
                           f"do not hold (they have {sorted(metrics)}).")
        value = float(metrics[self.metric])
        loss = value if self.mode == "min" else -value
        if not math.isfinite(loss):
            loss = math.inf   # a diverged model (NaN) is the worst possible trial
        doc["result"] = {"loss": loss, "status": STATUS_OK}
        doc["state"] = JOB_STATE_DONE
        self._trials.refresh()
        self._reported += 1

    def on_model_failed(self, model_id: str | None, params: Mapping[str, Any], error: str) -> None:
        self._require_bound()
        from hyperopt import JOB_STATE_ERROR, JOB_STATE_RUNNING, STATUS_FAIL

        if model_id is not None and model_id in self._model_tids:
            tid = self._model_tids[model_id]
        elif self._pending:
            # never built: the failed configuration is the oldest waiting one with these params
            tid = next((t for t in self._pending if self._params_of(t) == dict(params)), self._pending[0])
            self._pending.remove(tid)
            if model_id is not None:
                self._model_tids[model_id] = tid
        else:
            return
        doc = self._doc(tid)
        if doc is None or doc["state"] != JOB_STATE_RUNNING:
            return
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        doc["result"] = {"status": STATUS_FAIL}
        doc["misc"]["error"] = ["cerebro", (lines[-1] if lines else "")[:500]]
        doc["state"] = JOB_STATE_ERROR
        self._trials.refresh()   # errored trials leave trials.trials: TPE ignores them
        self._failed += 1

    # ------------------------------------------------------------------ helpers

    def _doc(self, tid: int) -> dict | None:
        for doc in self._trials._dynamic_trials:
            if doc["tid"] == tid:
                return doc
        return None

    def _params_of(self, tid: int) -> dict[str, Any]:
        doc = self._doc(tid)
        vals = doc["misc"]["vals"]
        return {label: (dim.values[int(vals[label][0])] if isinstance(dim, Choice) else vals[label][0])
                for label, dim in sorted(self.space.items())}

    @property
    def trials(self):
        """The hyperopt ``Trials`` (read it, do not change it)."""
        return self._trials

    def total_sub_epochs(self, num_partitions: int) -> int | None:
        return self.num_models * self.num_epochs * num_partitions

    # ------------------------------------------------------------------ state

    def get_state(self) -> dict[str, Any]:
        """JSON: the rng, the counters, the model -> trial map and the trials, column-wise
        (trial id, hyperopt job state, loss or None, and each dimension's raw value; hp_choice
        as its index).  Errored trials are left out: TPE ignores them, and ``num_tids`` keeps
        their ids from being handed out again."""
        self._require_bound()
        from hyperopt import JOB_STATE_ERROR

        docs = [doc for doc in self._trials._dynamic_trials if doc["state"] != JOB_STATE_ERROR]
        labels = sorted(self.space)
        trials = {
            "tid": [int(d["tid"]) for d in docs],
            "state": [int(d["state"]) for d in docs],
            "loss": [_encode(d["result"].get("loss")) for d in docs],
            "vals": {label: [_encode(d["misc"]["vals"][label][0]) for d in docs] for label in labels},
        }
        return {
            **super().get_state(),
            "num_tids": self._num_tids,
            "trials": trials,
            "pending": list(self._pending),
            "model_tids": dict(self._model_tids),
            "proposed": self._proposed,
            "reported": self._reported,
            "failed": self._failed,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._require_bound()
        from hyperopt import JOB_STATE_DONE, STATUS_OK, Trials

        super().set_state(state)
        trials = Trials()
        num_tids = int(state["num_tids"])
        if num_tids:
            trials.new_trial_ids(num_tids)   # reserve every id handed out, errored ones included
        columns = state["trials"]
        labels = sorted(self.space)
        if sorted(columns["vals"]) != labels:
            raise ValueError(f"TPEDriver state is for the dimensions {sorted(columns['vals'])}, "
                             f"but the search space has {labels}.")
        docs = []
        for i, tid in enumerate(columns["tid"]):
            tid = int(tid)
            loss = _decode(columns["loss"][i])
            job_state = int(columns["state"][i])
            result = ({"loss": loss, "status": STATUS_OK} if job_state == JOB_STATE_DONE else
                      self._domain.new_result())
            misc = {"tid": tid, "cmd": self._domain.cmd, "workdir": self._domain.workdir,
                    "idxs": {label: [tid] for label in labels},
                    "vals": {label: [_decode(columns["vals"][label][i])] for label in labels}}
            (doc,) = trials.new_trial_docs([tid], [None], [result], [misc])
            doc["state"] = job_state
            docs.append(doc)
        trials.insert_trial_docs(docs)
        trials.refresh()
        self._trials = trials
        self._num_tids = num_tids
        self._pending = [int(t) for t in state["pending"]]
        self._model_tids = {str(k): int(v) for k, v in state["model_tids"].items()}
        self._proposed = int(state["proposed"])
        self._reported = int(state["reported"])
        self._failed = int(state["failed"])
