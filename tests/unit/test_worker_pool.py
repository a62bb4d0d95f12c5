"""A worker that keeps dying is retired and its partitions are served by the others.

Pure scheduler cases first (milliseconds), then the engine with the inline backend and a fake,
TensorFlow-free runtime whose "training" folds (partition, seed) into a string, so a model's
final state records exactly which sub-epochs it saw, in which order, with which shuffles.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time

import pytest
from visit_counts import ok_once

from cerebro.backends.base import WorkerSetup
from cerebro.backends.inline import InlineBackend
from cerebro.core.events import (
    EndEpoch, ModelAdded, ModelContinued, ModelStopped, SubEpochFailed, SubEpochFinished, TrainSubEpoch, WorkerJoined,
    WorkerLost, WorkerRetired,
)
from cerebro.core.mop import MOPScheduler, SchedulerError
from cerebro.core.records import record_from_dict
from cerebro.core.seeds import driver_rng
from cerebro.core.state import ExperimentState
from cerebro.drivers.grid import GridDriver
from cerebro.errors import CerebroError
from cerebro.experiment.engine import Engine, ModelInit
from cerebro.experiment.tasks import TaskResult
from cerebro.space import hp_choice

# --------------------------------------------------------------------------- scheduler


def kind_of(cmd) -> str:
    return "train" if isinstance(cmd, TrainSubEpoch) else "eval"


def done(cmd) -> SubEpochFinished:
    return SubEpochFinished(cmd.model_id, cmd.worker, cmd.epoch, cmd.partition, kind_of(cmd))


def step(s: MOPScheduler, *events):
    out = s.handle(*events)
    s.validate()
    return out


def answer(s: MOPScheduler, commands, epochs: int) -> None:
    """Continue every model that ended an epoch before ``epochs``, stop it at ``epochs``."""
    for out in commands:
        if isinstance(out, EndEpoch) and not out.final:
            step(s, ModelContinued(out.model_id) if out.epoch < epochs else ModelStopped(out.model_id))


def drive(s: MOPScheduler, epochs: int, rng: random.Random, on_step=None):
    """Finish random in-flight visits until the scheduler is idle; return the committed visits
    as (model, epoch, kind, partition, worker) in commit order."""
    log = []
    n = 0
    while not s.idle:
        flight = s.in_flight
        assert flight, "nothing in flight but the scheduler is not idle"
        cmd = flight[rng.choice(sorted(flight))]
        log.append((cmd.model_id, cmd.epoch, kind_of(cmd), cmd.partition, cmd.worker))
        answer(s, step(s, done(cmd)), epochs)
        n += 1
        if on_step is not None:
            on_step(s, n)
    return log


@pytest.mark.parametrize("mode", ["deterministic", "dynamic"])
@pytest.mark.parametrize("seed", range(6))
def test_a_retired_workers_partition_is_still_visited_by_every_model_every_epoch(mode, seed):
    p, models, epochs = 4, 5, 3
    s = MOPScheduler(p, mode=mode, seed=seed)
    step(s, *[WorkerJoined(w) for w in range(p)])
    step(s, *[ModelAdded(f"m{i}", i) for i in range(models)])
    rng = random.Random(seed)
    retire_at = rng.randint(3, 20)

    def on_step(s, n):
        if n == retire_at:
            lost = s.in_flight.get(2)
            step(s, WorkerLost(2, "dies at every start"))
            step(s, WorkerRetired(2, "dies at every start"))
            assert s.servers == {0: 0, 1: 1, 2: 0, 3: 3}   # fewest partitions, then the lower number
            assert s.retired == {2}
            # A visit lost with the worker is retried on the partition's new server.
            if lost is not None:
                again = [c for c in s.in_flight.values() if c.model_id == lost.model_id]
                assert not again or again[0].worker == s.servers[again[0].partition]

    log = drive(s, epochs, rng, on_step)
    for mid in (f"m{i}" for i in range(models)):
        for epoch in range(1, epochs + 1):
            for kind in ("train", "eval"):
                parts = [q for m, e, k, q, _ in log if (m, e, k) == (mid, epoch, kind)]
                assert sorted(parts) == list(range(p)), (mid, epoch, kind, parts)
            if mode == "deterministic":
                trained = tuple(q for m, e, k, q, _ in log if (m, e, k) == (mid, epoch, "train"))
                assert trained == s.epoch_order(mid, epoch)   # the same order, whoever serves
    before, after = log[:retire_at], log[retire_at:]
    assert all(w == q for *_, q, w in before)
    assert all(w == s.servers[q] for *_, q, w in after) and any(q == 2 for *_, q, _ in after)


def test_one_worker_serving_several_partitions_runs_one_visit_at_a_time():
    s = MOPScheduler(3, mode="dynamic")
    step(s, WorkerJoined(0))
    step(s, WorkerRetired(1), WorkerRetired(2))
    assert s.servers == {0: 0, 1: 0, 2: 0}
    out = step(s, ModelAdded("a", 0), ModelAdded("b", 1))
    assert len(out) == 1 and out[0].worker == 0          # never two models on one worker
    log = drive(s, 2, random.Random(0))
    assert {w for *_, w in log} == {0}
    assert len(log) == 2 * 2 * 3 * 2


def test_partitions_move_again_when_their_new_server_is_retired():
    s = MOPScheduler(4)
    step(s, *[WorkerJoined(w) for w in range(4)])
    step(s, WorkerLost(3), WorkerRetired(3))
    assert s.servers == {0: 0, 1: 1, 2: 2, 3: 0}
    step(s, WorkerLost(1))                               # restarting: not alive, not retired
    step(s, WorkerLost(0), WorkerRetired(0))
    # 0's partitions go one by one to the fewest-loaded, preferring an alive worker on a tie.
    assert s.servers == {0: 2, 1: 1, 2: 2, 3: 1}
    step(s, WorkerJoined(1))
    out = step(s, ModelAdded("a", 0))
    assert out and out[0].worker == s.servers[out[0].partition]


def test_retiring_is_refused_when_it_makes_no_sense():
    s = MOPScheduler(2)
    step(s, WorkerJoined(0), WorkerJoined(1))
    with pytest.raises(SchedulerError, match="alive"):
        s.handle(WorkerRetired(1))
    step(s, WorkerLost(1), WorkerRetired(1))
    with pytest.raises(SchedulerError, match="twice"):
        s.handle(WorkerRetired(1))
    with pytest.raises(SchedulerError, match="retired"):
        s.handle(WorkerJoined(1))
    step(s, WorkerLost(0))
    with pytest.raises(SchedulerError, match="last worker"):
        s.handle(WorkerRetired(0))
    s.validate()


def test_validate_catches_a_visit_on_a_partition_the_worker_does_not_serve():
    s = MOPScheduler(2)
    step(s, WorkerJoined(0), WorkerJoined(1), ModelAdded("a", 0))
    cmd = next(iter(s.in_flight.values()))
    s._in_flight[cmd.worker] = TrainSubEpoch("a", cmd.worker, 1, 1 - cmd.worker)
    with pytest.raises(SchedulerError, match="does not serve"):
        s.validate()


def test_random_losses_rejoins_and_retirements_keep_every_invariant():
    for seed in range(30):
        rng = random.Random(seed)
        p = rng.randint(2, 5)
        s = MOPScheduler(p, mode=rng.choice(["dynamic", "deterministic"]), seed=seed, max_retries=50)
        step(s, *[WorkerJoined(w) for w in range(p)])
        step(s, *[ModelAdded(f"m{i}", i) for i in range(rng.randint(1, 6))])
        down: set[int] = set()
        for _ in range(400):
            if s.idle:
                break
            r = rng.random()
            alive = [w for w in range(p) if w not in down and w not in s.retired]
            if r < 0.05 and len(alive) > 1:
                w = rng.choice(alive)
                step(s, WorkerLost(w))
                down.add(w)
            elif r < 0.10 and down:
                w = rng.choice(sorted(down))
                if rng.random() < 0.5 and len(set(range(p)) - s.retired) > 1:
                    step(s, WorkerRetired(w))
                else:
                    step(s, WorkerJoined(w))
                down.discard(w)
            elif s.in_flight:
                cmd = s.in_flight[rng.choice(sorted(s.in_flight))]
                event = done(cmd) if rng.random() < 0.9 else SubEpochFailed(
                    cmd.model_id, cmd.worker, cmd.epoch, cmd.partition, kind_of(cmd), "boom")
                answer(s, step(s, event), 2)
            else:
                # Nothing in flight: every server of a needed partition is down; bring one back.
                w = rng.choice(sorted(down))
                step(s, WorkerJoined(w))
                down.discard(w)
        for w in sorted(down):
            step(s, WorkerJoined(w))
        drive(s, 2, rng)
        assert s.idle, seed


# --------------------------------------------------------------------------- engine


class Store:
    url = "memory://"

    def __init__(self):
        self.files: dict[str, str] = {}


ROWS = {0: 10, 1: 30, 2: 20}


class Runtime:
    """A worker: trains on whatever partition a task names (any worker can serve any)."""

    def __init__(self, store: Store, worker: int, broken: set[int] = frozenset()):
        if worker in broken:
            raise RuntimeError(f"worker {worker} cannot start: its GPU is gone")
        self.store, self.worker = store, worker

    def run(self, task):
        state = self.store.files[task.checkpoint]
        rows = ROWS[task.partition]
        if task.kind == "train":
            new = hashlib.sha256(f"{state}|{task.partition}|{task.seed}|{task.epoch_end}".encode()).hexdigest()[:16]
            self.store.files[task.out] = new
            return TaskResult(rows, {"loss": int(new[:4], 16) / 65536}, task.out)
        return TaskResult(rows, {"loss": int(hashlib.sha256(state.encode()).hexdigest()[:4], 16) / 65536})


class Workspace:
    def __init__(self, store: Store, journal: list):
        self.store, self.sink = store, journal

    def create_model(self, model_id, index, params):
        self.store.files[f"{model_id}/init"] = f"init-{model_id}-{params['a']}"
        return ModelInit(f"{model_id}/spec", f"{model_id}/init")

    def exploit(self, plan, params):  # pragma: no cover - grid never exploits
        raise AssertionError

    def checkpoint_path(self, m, e, h, a):
        return f"{m}/e{e}-h{h}-a{a}"

    def delete_checkpoint(self, path):
        pass

    def journal(self, record):
        self.sink.append(record)


def run(num_workers=3, broken=frozenset(), faults=None, backend_cls=InlineBackend, records=None, store=None,
        max_retries=2, **engine_args):
    store = store or Store()
    journal: list[dict] = []
    events: list[tuple[str, dict]] = []
    backend = backend_cls(num_workers, runtime_factory=lambda setup, w: Runtime(store, w, broken), faults=faults)
    driver = GridDriver(2)
    driver.bind({"a": hp_choice([1, 2, 3])}, driver_rng(7), num_workers)
    engine = Engine(backend=backend, setup=WorkerSetup(store, {"key": "k"}),
                    scheduler=MOPScheduler(num_workers, mode="deterministic", seed=7, max_retries=max_retries),
                    driver=driver,
                    workspace=Workspace(store, journal), seed=7, listener=lambda e, i: events.append((e, dict(i))),
                    **{"restart_backoff": 0, **engine_args})
    if records is not None:
        engine.restore(records)
    outcome = engine.run()
    finals = {m: store.files[r.checkpoint] for m, r in outcome.models.items()}
    return outcome, finals, journal, events, backend, store


def test_a_worker_that_dies_at_every_start_is_retired_and_the_models_are_those_of_a_full_pool(caplog):
    _, clean, *_ = run()
    with caplog.at_level("WARNING", logger="cerebro.experiment.engine"):
        outcome, finals, journal, events, backend, _ = run(broken={2})
    assert finals == clean                                # the same data, seeds and order
    assert all(r.status == "completed" for r in outcome.models.values())
    assert set(ok_once(outcome.visits).values()) == {1} and len(ok_once(outcome.visits)) == 3 * 2 * 3
    assert backend.restarts == 3                          # 4 failed starts: the first and 3 restarts
    served = {(v["partition"], v["worker"]) for v in outcome.visits + outcome.evaluations}
    assert served == {(0, 0), (1, 1), (2, 0)}             # partition 2 by worker 0, never by 2
    retired = [r for r in journal if r["type"] == "worker_retired"]
    assert len(retired) == 1 and retired[0]["worker"] == 2 and retired[0]["moved"] == [[2, 0]]
    assert retired[0]["deaths"] == 4 and "its GPU is gone" in retired[0]["reason"]
    assert [i["moved"] for e, i in events if e == "worker_retired"] == [[[2, 0]]]
    assert "experiment degraded: worker 2 retired after 4 failed starts; partition 2 is served by worker 0" in caplog.text


def test_a_worker_that_dies_at_every_task_is_retired_and_the_run_finishes():
    _, clean, *_ = run()
    # (max_retries=4: four deaths cannot abandon a model, even if they all killed its one visit.)
    outcome, finals, _, _, backend, _ = run(faults=lambda w, t: "die" if w == 1 else None, max_retries=4)
    assert backend.restarts == 3
    # Four visits died with it; each was retried on the partition's server, worker 0 at the end.
    failed = [v for v in outcome.visits if v["status"] == "failed"]
    assert len(failed) == 4 and {v["worker"] for v in failed} == {1}
    assert all(r.status == "completed" for r in outcome.models.values())
    assert finals == clean


def test_only_when_no_worker_is_left_does_the_run_stop_naming_each_worker():
    with pytest.raises(CerebroError) as info:
        run(num_workers=2, broken={0, 1})
    text = str(info.value)
    assert "no worker is left" in text
    assert "worker 0: retired, 4 deaths in a row" in text and "worker 1: 4 deaths in a row" in text
    assert "its GPU is gone" in text


class BarrierLikeBackend(InlineBackend):
    """A backend that cannot leave a worker out (as Spark's barrier stage)."""

    can_retire_workers = False


def test_a_backend_that_cannot_retire_workers_stops_the_run_as_before():
    with pytest.raises(CerebroError, match=r"worker 1 died 4 times in a row .*BarrierLikeBackend cannot take a worker out"):
        run(broken={1}, backend_cls=BarrierLikeBackend)


def test_restarts_back_off_without_blocking_the_other_workers():
    stamps: list[tuple[str, int, float]] = []

    class Recording(InlineBackend):
        def restart(self, worker):
            stamps.append(("restart", worker, time.monotonic()))
            super().restart(worker)

        def wait(self, timeout):
            events = super().wait(timeout)
            stamps.extend((type(e).__name__, e.worker, time.monotonic()) for e in events)
            return events

    outcome, *_ = run(broken={1}, backend_cls=Recording, restart_backoff=0.1, restart_backoff_max=0.15)
    mine = [(what, t) for what, w, t in stamps if w == 1 and what in ("WorkerDied", "restart")]
    assert [what for what, _ in mine] == ["WorkerDied", "restart"] * 3 + ["WorkerDied"]
    delays = [mine[i + 1][1] - mine[i][1] for i in range(0, 6, 2)]
    # at once after the first death, then 0.1 s, then 0.15 s (0.2 capped)
    assert delays[0] < 0.05 and 0.1 <= delays[1] < 0.5 and 0.15 <= delays[2] < 0.6, delays
    # Meanwhile the other workers trained: the loop scheduled the restarts, it did not sleep them.
    first_death, last_restart = mine[2][1], mine[-2][1]
    assert any(what == "TaskDone" and w != 1 and first_death < t < last_restart for what, w, t in stamps)
    assert all(r.status == "completed" for r in outcome.models.values())


def test_backoff_doubles_from_the_second_death_and_is_capped():
    engine = Engine.__new__(Engine)
    engine.restart_backoff, engine.restart_backoff_max = 0.5, 3.0
    assert [engine._backoff(n) for n in range(1, 7)] == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_retirement_is_journaled_and_a_resumed_run_starts_a_full_pool():
    _, clean, *_ = run()
    outcome, finals, journal, _, _, store = run(broken={2})
    cut = next(i for i, r in enumerate(journal) if r["type"] == "worker_retired") + 3
    state = ExperimentState()
    for r in journal[:cut]:
        state.apply(record_from_dict(r))
    assert state.retirements[0]["worker"] == 2 and state.retirements[0]["moved"] == [[2, 0]]
    resumed, finals2, *_ = run(records=journal[:cut], store=store)
    assert finals2 == clean
    later = {(v["partition"], v["worker"]) for v in resumed.visits[sum(1 for r in journal[:cut] if r["type"] == "visit"
                                                                        and r["kind"] == "train"):]}
    assert (2, 2) in later                               # the resumed run's worker 2 serves its partition again


def test_the_engine_logs_each_restart(caplog):
    with caplog.at_level(logging.WARNING, logger="cerebro.experiment.engine"):
        run(broken={1}, restart_backoff=0.01)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("worker 1 died")]
    assert [ln.split("; ")[-1] for ln in lines] == ["restarting it", "restarting it in 0.01 s", "restarting it in 0.02 s",
                                                    "taking it out of the pool"]


def test_eval_visits_of_a_taken_over_partition_run_on_its_server():
    outcome, *_ = run(broken={0})
    evals = [(v["partition"], v["worker"]) for v in outcome.evaluations if v["status"] == "ok"]
    assert set(evals) == {(0, 1), (1, 1), (2, 2)}        # tie on partitions: the lower worker number
