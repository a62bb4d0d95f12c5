"""The canonical order of driver events (cerebro.core.order) under the deterministic scheduler.

The engine runs for real over the inline backend, whose tasks complete in a random order per
seed (as workers of different speeds finish them), with a fake runtime whose metrics depend on
the model's state (so adaptive drivers make real choices).  Under ``mode="deterministic"`` every
driver hears the same calls with the same arguments and answers the same way, whatever the
order; under ``mode="dynamic"`` it does not (which shows the test can fail).
"""

from __future__ import annotations

import hashlib
import random

import pytest
from test_engine import FakeStore, FakeWorkspace

from cerebro.backends.base import WorkerSetup
from cerebro.backends.inline import InlineBackend
from cerebro.core.mop import MOPScheduler
from cerebro.core.order import ReportQueue
from cerebro.core.records import ModelCreation, EpochResult, DriverUpdate, ModelFailure
from cerebro.core.seeds import driver_rng
from cerebro.core.state import ExperimentState
from cerebro.drivers.asha import ASHADriver
from cerebro.drivers.early_stopping import EarlyStoppingDriver, MedianStopping
from cerebro.drivers.hyperband import HyperbandDriver
from cerebro.drivers.pbt import PBTDriver
from cerebro.drivers.tpe import TPEDriver
from cerebro.experiment.engine import Engine
from cerebro.experiment.tasks import TaskResult
from cerebro.space import hp_uniform

WORKERS = 3


def _unit(*parts) -> float:
    """A number in [0, 1) that is a pure function of ``parts``."""
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16) / 2**32


class StateRuntime:
    """Trains by hashing; the metrics are functions of the model's state, so they differ per
    model and per epoch, and two runs agree exactly when the models saw the same sub-epochs."""

    def __init__(self, store, worker):
        self.store, self.worker = store, worker

    def run(self, task):
        state = self.store.files[task.checkpoint]
        if task.kind == "train":
            new = hashlib.sha256(f"{state}|{task.partition}|{task.seed}".encode()).hexdigest()[:16]
            self.store.files[task.out] = new
            return TaskResult(10, {"loss": _unit(new)}, task.out)
        return TaskResult(10, {"loss": _unit(state, task.partition), "accuracy": 1 - _unit(state, task.partition)})


class Recording:
    """Logs every call the engine makes on the driver, with its arguments and its answer."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _log(self, name, args, out):
        self.calls.append((name, repr(args), repr(out)))
        return out

    def suggest(self, num_active):
        return self._log("suggest", (num_active,), self.inner.suggest(num_active))

    def on_model_added(self, model_id, params):
        return self._log("added", (model_id, params), self.inner.on_model_added(model_id, params))

    def on_epoch_end(self, model_id, epoch, metrics):
        return self._log("epoch", (model_id, epoch, metrics), self.inner.on_epoch_end(model_id, epoch, metrics))

    def on_model_failed(self, model_id, params, error):
        # (the error text names the worker that ran the visit: not part of the logical event)
        return self._log("failed", (model_id, params), self.inner.on_model_failed(model_id, params, error))


DRIVERS = {
    "asha": lambda: ASHADriver(num_models=8, max_epochs=4, grace_period=1, reduction_factor=2),
    "hyperband": lambda: HyperbandDriver(max_epochs=4, eta=2),
    "pbt": lambda: PBTDriver(population_size=5, num_epochs=4, perturbation_interval=1, quantile_fraction=0.25),
    "tpe": lambda: TPEDriver(num_models=7, num_epochs=2, n_startup_jobs=2),
    "median": lambda: EarlyStoppingDriver(ASHADriver(num_models=6, max_epochs=4, grace_period=2),
                                          MedianStopping(grace_epochs=1, min_models=2)),
}


def failing(task_model="model_000", epoch=2, worker_death_at=7):
    """Faults: every train visit of ``task_model`` in ``epoch`` fails (it is abandoned), and
    worker 1 dies at its ``worker_death_at``-th task (which task that is depends on the order)."""
    seen = {"n": 0}

    def faults(worker, task):
        if worker == 1:
            seen["n"] += 1
            if seen["n"] == worker_death_at:
                return "die"
        if task.model_id == task_model and task.kind == "train" and task.epoch == epoch:
            return "fail"
        return None

    return faults


def run(kind, mode, order_seed, faults=None):
    store = FakeStore()
    rng = random.Random(order_seed)
    backend = InlineBackend(WORKERS, runtime_factory=lambda setup, w: StateRuntime(store, w), faults=faults,
                            pick=lambda n: rng.randrange(n))
    driver = Recording(DRIVERS[kind]())
    driver.bind({"a": hp_uniform(0.1, 1.0)}, driver_rng(11), WORKERS, "val_loss", "min")
    journal: list[dict] = []
    engine = Engine(backend=backend, setup=WorkerSetup(store, {"key": "k"}),
                    scheduler=MOPScheduler(WORKERS, mode=mode, seed=5, max_retries=1),
                    driver=driver, workspace=FakeWorkspace(store, journal=journal), seed=5,
                    metric="val_loss", mode="min", restart_backoff=0)
    outcome = engine.run()
    finals = {m: store.files[r.checkpoint] for m, r in sorted(outcome.models.items()) if r.checkpoint}
    return driver.calls, outcome.history, finals, journal, driver.inner


@pytest.mark.parametrize("kind", sorted(DRIVERS))
def test_every_completion_order_gives_the_driver_the_same_events_and_the_same_answers(kind):
    reference = run(kind, "deterministic", 0)
    assert any(c[0] == "epoch" for c in reference[0])
    for order_seed in range(1, 13):
        calls, history, finals, _, _ = run(kind, "deterministic", order_seed)
        assert calls == reference[0], f"order {order_seed}: the driver heard another sequence"
        assert history == reference[1]
        assert finals == reference[2]


@pytest.mark.parametrize("kind", ["asha", "pbt", "tpe"])
def test_the_same_holds_with_failing_models_and_a_dying_worker(kind):
    reference = run(kind, "deterministic", 0, failing())
    assert any(c[0] == "failed" for c in reference[0]), "the failing model was never reported"
    for order_seed in range(1, 9):
        calls, history, finals, journal, _ = run(kind, "deterministic", order_seed, failing())
        assert any(r["type"] == "worker_died" or r.get("status") == "failed" for r in journal)
        assert (calls, history, finals) == reference[:3], f"order {order_seed}"


def test_the_dynamic_scheduler_delivers_as_results_arrive_so_orders_differ():
    # The contrast that shows the test above can fail: without the canonical order ASHA's
    # decisions follow the completion order.
    runs = {tuple(run("asha", "dynamic", s)[0]) for s in range(8)}
    assert len(runs) > 1


def test_reports_arrive_in_any_order_and_leave_in_key_order():
    awaited = {"a": (1, 0), "b": (1, 1), "c": (2, 2)}
    q: ReportQueue[str] = ReportQueue(canonical=True)
    q.add("c", "C")
    q.add("b", "B")
    assert q.pop(awaited) is None          # a's report is due first and has not arrived
    q.add("a", "A")
    out = []
    while (r := q.pop(awaited)) is not None:
        out.append(r)
        del awaited[r.lower()]
    assert out == ["A", "B", "C"]
    fifo: ReportQueue[str] = ReportQueue(canonical=False)
    fifo.add("c", "C")
    fifo.add("a", "A")
    assert [fifo.pop({}), fifo.pop({}), fifo.pop({})] == ["C", "A", None]
    with pytest.raises(ValueError, match="second report"):
        fifo.add("x", "X")
        fifo.add("x", "X")


def test_ticks_follow_the_journal():
    s = ExperimentState()
    for i in range(2):
        s.apply(ModelCreation(f"m{i}", i, {}, "spec", "init"))
    assert s.awaited() == {"m0": (1, 0), "m1": (1, 1)}
    cont = {"model_id": "m0", "action": "continue", "status": "running", "reason": ""}
    s.apply(EpochResult("m0", 1, {}, {}, False, [cont], "c", None, {}))
    assert s.clock == (1, 0) and s.awaited() == {"m0": (2, 0), "m1": (1, 1)}
    s.apply(EpochResult("m1", 1, {}, {}, False, [], "c", None, {}))     # paused
    assert s.awaited() == {"m0": (2, 0)}
    s.apply(ModelCreation("m2", 2, {}, "spec", "init"))                 # suggested at tick 1
    assert s.awaited()["m2"] == (2, 2)
    s.apply(ModelFailure("m0", 2, "boom"))
    assert s.clock == (2, 0) and "m0" not in s.awaited()
    promote = {"model_id": "m1", "action": "continue", "status": "running", "reason": ""}
    s.apply(DriverUpdate({}, [promote]))                                # decided at tick 2
    assert s.awaited() == {"m1": (3, 1), "m2": (2, 2)}


def test_the_journal_holds_driver_state_deltas_that_replay_to_the_driver_state():
    import json

    from cerebro.core import statediff
    from cerebro.core.records import record_from_dict

    *_, journal, driver = run("tpe", "deterministic", 3)
    journal = [json.loads(json.dumps(r, sort_keys=True)) for r in journal]   # as the journal file holds it
    payloads = [r["state"] for r in journal if "state" in r]
    assert any(statediff.is_delta(p) for p in payloads) and not statediff.is_delta(payloads[0])
    replayed = ExperimentState()
    for r in journal:
        replayed.apply(record_from_dict(r))
    assert statediff.same(replayed.driver_state, statediff.normalise(driver.get_state()))
