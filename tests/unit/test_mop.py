"""Hand-written cases for the pure MOP scheduler (cerebro.core.mop)."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from cerebro.core.events import (
    AbandonModel,
    EndEpoch,
    EvaluateSubEpoch,
    ModelAdded,
    ModelContinued,
    ModelStopped,
    SubEpochFailed,
    SubEpochFinished,
    TrainSubEpoch,
    WorkerJoined,
    WorkerLost,
)
from cerebro.core.mop import MOPScheduler, SchedulerError

# --------------------------------------------------------------------------- helpers


def step(s: MOPScheduler, *events):
    """handle() then validate(): every test checks the invariants after every step."""
    out = s.handle(*events)
    s.validate()
    return out


def kind_of(cmd) -> str:
    return "train" if isinstance(cmd, TrainSubEpoch) else "eval"


def done(cmd) -> SubEpochFinished:
    return SubEpochFinished(cmd.model_id, cmd.worker, cmd.epoch, cmd.partition, kind_of(cmd))


def failed(cmd, error: str = "boom") -> SubEpochFailed:
    return SubEpochFailed(cmd.model_id, cmd.worker, cmd.epoch, cmd.partition, kind_of(cmd), error)


def T(model, w, epoch=1, attempt=0) -> TrainSubEpoch:
    return TrainSubEpoch(model, w, epoch, w, attempt)


def E(model, w, epoch=1, attempt=0) -> EvaluateSubEpoch:
    return EvaluateSubEpoch(model, w, epoch, w, attempt)


def started(s: MOPScheduler, *workers: int) -> MOPScheduler:
    step(s, *[WorkerJoined(w) for w in workers])
    return s


def drain(s: MOPScheduler, answer=None, max_steps: int = 10_000):
    """Finish in-flight visits (lowest worker first) until nothing runs.

    ``answer(end_epoch)`` returns the event to send back for a non-final EndEpoch (or None).
    Returns every command seen, in order.
    """
    seen = []
    for _ in range(max_steps):
        fl = s.in_flight
        if not fl:
            return seen
        out = step(s, done(fl[min(fl)]))
        seen.extend(out)
        replies = [answer(c) for c in out if isinstance(c, EndEpoch) and not c.final and answer]
        replies = [r for r in replies if r is not None]
        if replies:
            seen.extend(step(s, *replies))
    raise AssertionError("did not drain")


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize(
    "args, kwargs",
    [((0,), {}), ((-1,), {}), ((2.0,), {}), ((2,), {"mode": "random"}), ((2,), {"max_retries": -1}), ((2,), {"seed": -3})],
)
def test_constructor_rejects_bad_arguments(args, kwargs):
    with pytest.raises(ValueError):
        MOPScheduler(*args, **kwargs)


def test_fresh_scheduler_is_idle_and_valid():
    s = MOPScheduler(3)
    s.validate()
    assert s.idle
    assert s.in_flight == {}
    assert s.handle() == []


# --------------------------------------------------------------------------- basic flow


def test_single_worker_single_model_two_epochs():
    s = started(MOPScheduler(1), 0)
    assert step(s, ModelAdded("a", 0)) == [T("a", 0)]
    assert s.status("a") == "running" and s.epoch_of("a") == 1 and not s.idle
    assert step(s, done(T("a", 0))) == [E("a", 0)]
    assert step(s, done(E("a", 0))) == [EndEpoch("a", 1)]
    assert s.status("a") == "awaiting" and not s.idle and s.in_flight == {}
    assert step(s) == []  # an awaiting model is never assigned
    assert step(s, ModelContinued("a")) == [T("a", 0, epoch=2)]
    assert s.epoch_of("a") == 2
    assert step(s, done(T("a", 0, 2))) == [E("a", 0, 2)]
    assert step(s, done(E("a", 0, 2))) == [EndEpoch("a", 2)]
    assert step(s, ModelStopped("a")) == []
    assert s.status("a") == "ended" and s.idle and s.epoch_of("a") == 2


def test_three_workers_two_models_full_epochs():
    s = started(MOPScheduler(3), 0, 1, 2)
    first = step(s, ModelAdded("a", 0), ModelAdded("b", 1))
    assert len(first) == 2 and all(isinstance(c, TrainSubEpoch) for c in first)
    epochs = {"a": 0, "b": 0}

    def answer(end: EndEpoch):
        epochs[end.model_id] = end.epoch
        return ModelContinued(end.model_id) if end.epoch < 2 else ModelStopped(end.model_id)

    seen = first + drain(s, answer)
    assert s.idle and epochs == {"a": 2, "b": 2}
    for m in "ab":
        for e in (1, 2):
            mine = [c for c in seen if c.model_id == m and getattr(c, "epoch", None) == e]
            visits = [c for c in mine if not isinstance(c, EndEpoch)]
            train = [c.partition for c in visits if isinstance(c, TrainSubEpoch)]
            evals = [c.partition for c in visits if isinstance(c, EvaluateSubEpoch)]
            assert sorted(train) == [0, 1, 2] and sorted(evals) == [0, 1, 2]
            # eval only after every train visit, EndEpoch last
            kinds = [kind_of(c) for c in visits]
            assert kinds == ["train"] * 3 + ["eval"] * 3
            assert mine[-1] == EndEpoch(m, e)
            assert all(c.worker == c.partition for c in visits)


def test_eval_phase_starts_only_after_all_train_visits():
    s = started(MOPScheduler(2), 0, 1)
    (c1,) = step(s, ModelAdded("a", 0))
    assert c1 == T("a", 0)
    (c2,) = step(s, done(c1))
    assert c2 == T("a", 1)  # still training: partition 1 left, even though w0 is free
    out = step(s, done(c2))
    # Now in eval phase: w1 gets it (affinity: state is still on w1), w0 stays idle.
    assert out == [E("a", 1)]
    assert step(s, done(out[0])) == [E("a", 0)]
    assert step(s, done(E("a", 0))) == [EndEpoch("a", 1)]


def test_commands_from_events_come_first_then_assignments_by_worker():
    s = started(MOPScheduler(2), 0, 1)
    step(s, ModelAdded("a", 0))
    step(s, done(T("a", 0)))
    step(s, done(T("a", 1)))
    step(s, done(E("a", 1)))
    out = step(s, done(E("a", 0)), ModelAdded("b", 1), ModelAdded("c", 2))
    assert out == [EndEpoch("a", 1), T("b", 0), T("c", 1)]


# --------------------------------------------------------------------------- EndEpoch / continue / stop


def test_stop_while_awaiting_ends_at_once():
    s = started(MOPScheduler(1), 0)
    step(s, ModelAdded("a", 0))
    step(s, done(T("a", 0)))
    assert step(s, done(E("a", 0))) == [EndEpoch("a", 1)]
    assert step(s, ModelStopped("a")) == []
    assert s.status("a") == "ended" and s.idle
    assert step(s, ModelStopped("a")) == []  # stopping an ended model is a no-op
    with pytest.raises(SchedulerError):
        s.handle(ModelContinued("a"))


def test_stop_mid_epoch_finishes_the_epoch_then_final_end_epoch():
    s = started(MOPScheduler(2), 0, 1)
    step(s, ModelAdded("a", 0))
    assert step(s, ModelStopped("a")) == []  # mid-train: keeps going
    assert s.status("a") == "running"
    step(s, done(T("a", 0)))
    step(s, done(T("a", 1)))  # -> eval on w1
    assert step(s, ModelStopped("a")) == []  # a second stop is harmless
    step(s, done(E("a", 1)))
    assert step(s, done(E("a", 0))) == [EndEpoch("a", 1, final=True)]
    assert s.status("a") == "ended" and s.idle
    with pytest.raises(SchedulerError):
        s.handle(ModelContinued("a"))  # no answer is expected after a final EndEpoch


def test_continue_only_when_awaiting():
    s = started(MOPScheduler(1), 0)
    step(s, ModelAdded("a", 0))
    with pytest.raises(SchedulerError):
        s.handle(ModelContinued("a"))
    s.validate()


# --------------------------------------------------------------------------- dynamic arrivals


def test_model_added_mid_run_takes_a_free_worker():
    s = started(MOPScheduler(2), 0, 1)
    assert step(s, ModelAdded("a", 0)) == [T("a", 0)]
    assert step(s, ModelAdded("b", 1)) == [T("b", 1)]
    out = step(s, done(T("a", 0)), done(T("b", 1)))
    assert sorted(out, key=lambda c: c.worker) == out
    assert set(out) == {T("a", 1), T("b", 0)}


def test_workers_joining_late_get_work():
    s = MOPScheduler(3)
    assert step(s, ModelAdded("a", 0), ModelAdded("b", 1)) == []  # no worker yet
    assert step(s, WorkerJoined(2)) == [T("a", 2)]
    assert step(s, WorkerJoined(0)) == [T("b", 0)]


# --------------------------------------------------------------------------- failures


def test_failure_is_retried_then_model_abandoned():
    s = started(MOPScheduler(1, max_retries=2), 0)
    step(s, ModelAdded("a", 0))
    assert step(s, failed(T("a", 0))) == [T("a", 0, attempt=1)]
    assert step(s, failed(T("a", 0, attempt=1))) == [T("a", 0, attempt=2)]
    assert step(s, failed(T("a", 0, attempt=2), "oom")) == [AbandonModel("a", 1, 0, "train", "oom")]
    assert s.status("a") == "failed" and s.idle
    assert step(s, ModelStopped("a")) == []  # stop crossing an abandon: no-op


def test_eval_failure_abandons_with_kind_eval_and_free_worker_moves_on():
    s = started(MOPScheduler(1, max_retries=0), 0)
    step(s, ModelAdded("a", 0), ModelAdded("b", 1))
    step(s, done(T("a", 0)))  # a -> eval on w0 (affinity)
    out = step(s, failed(E("a", 0), "nan"))
    assert out == [AbandonModel("a", 1, 0, "eval", "nan"), T("b", 0)]


def test_success_after_retry_resets_nothing_else():
    s = started(MOPScheduler(2, max_retries=1), 0, 1)
    step(s, ModelAdded("a", 0))
    # No affinity after a failure (the worker's memory holds uncommitted state): both free
    # workers have one candidate, the tie goes to w0, which retries.
    assert step(s, failed(T("a", 0))) == [T("a", 0, attempt=1)]
    assert step(s, done(T("a", 0, attempt=1))) == [T("a", 1)]
    assert step(s, done(T("a", 1))) == [E("a", 1)]  # affinity: a's state is on w1


def test_attempts_are_per_epoch():
    s = started(MOPScheduler(1, max_retries=1), 0)
    step(s, ModelAdded("a", 0))
    step(s, failed(T("a", 0)))
    step(s, done(T("a", 0, attempt=1)))
    step(s, done(E("a", 0)))
    assert step(s, ModelContinued("a")) == [T("a", 0, epoch=2, attempt=0)]


def test_worker_lost_mid_visit_and_rejoined():
    s = started(MOPScheduler(2, max_retries=2), 0, 1)
    assert step(s, ModelAdded("a", 0)) == [T("a", 0)]
    # Losing w0 fails a's visit; a goes on with partition 1 on the other worker.
    assert step(s, WorkerLost(0, "preempted")) == [T("a", 1)]
    assert s.in_flight == {1: T("a", 1)}
    assert step(s, done(T("a", 1))) == []  # needs partition 0, whose worker is gone
    assert s.status("a") == "running"
    assert step(s, WorkerJoined(0)) == [T("a", 0, attempt=1)]  # the loss counted as a failure
    step(s, done(T("a", 0, attempt=1)))
    assert s.in_flight == {0: E("a", 0)}


def test_worker_lost_too_often_abandons_with_reason():
    s = started(MOPScheduler(1, max_retries=0), 0)
    step(s, ModelAdded("a", 0))
    assert step(s, WorkerLost(0, "node died")) == [AbandonModel("a", 1, 0, "train", "node died")]
    assert s.status("a") == "failed"
    s2 = started(MOPScheduler(1, max_retries=0), 0)
    step(s2, ModelAdded("a", 0))
    (abandon,) = step(s2, WorkerLost(0))
    assert abandon.error  # a default message, never empty


def test_idle_worker_lost_and_rejoined():
    s = started(MOPScheduler(2), 0, 1)
    assert step(s, WorkerLost(1)) == []
    assert step(s, ModelAdded("a", 0)) == [T("a", 0)]
    assert step(s, done(T("a", 0))) == []
    assert step(s, WorkerJoined(1)) == [T("a", 1)]


# --------------------------------------------------------------------------- deterministic mode


def test_epoch_order_is_the_documented_permutation():
    s = MOPScheduler(7, mode="deterministic", seed=11)
    step(s, ModelAdded("a", 5))
    for e in (1, 2, 3):
        base = np.random.default_rng([11, e]).permutation(7)
        expected = tuple(base[(5 + k) % 7] for k in range(7))
        assert s.epoch_order("a", e) == expected
        assert all(type(x) is int for x in s.epoch_order("a", e))
    # models added together (consecutive indices) start on different partitions
    step(s, ModelAdded("b", 6))
    assert s.epoch_order("b", 1)[0] == s.epoch_order("a", 1)[1]
    with pytest.raises(SchedulerError):
        s.epoch_order("nope", 1)
    with pytest.raises(SchedulerError):
        s.epoch_order("a", 0)


def test_deterministic_mode_follows_epoch_order_and_waits_for_its_worker():
    p = 4
    s = started(MOPScheduler(p, mode="deterministic", seed=3), *range(p))
    step(s, ModelAdded("a", 0))
    trained = []
    for e in (1, 2):
        order = s.epoch_order("a", e)
        for i, part in enumerate(order):
            # only the next partition of the order, even though every worker is free
            assert s.in_flight == {part: T("a", part, epoch=e)}
            trained.append(part)
            out = step(s, done(T("a", part, epoch=e)))
        evals = []
        while not any(isinstance(c, EndEpoch) for c in out):
            (c,) = out
            assert isinstance(c, EvaluateSubEpoch)
            evals.append(c.partition)
            out = step(s, done(c))
        assert sorted(evals) == list(range(p))
        if e == 1:
            step(s, ModelContinued("a"))
    assert trained == list(s.epoch_order("a", 1) + s.epoch_order("a", 2))


def test_deterministic_mode_does_not_depend_on_timing():
    """Different completion orders and worker losses: the same per-model partition orders."""

    def run(rng: random.Random):
        s = started(MOPScheduler(5, mode="deterministic", seed=9, max_retries=10), *range(5))
        step(s, *[ModelAdded(f"m{i}", i) for i in range(6)])
        trained: dict[tuple[str, int], list[int]] = {}
        for _ in range(10_000):
            fl = s.in_flight
            if not fl:
                break
            w = rng.choice(sorted(fl))
            c = fl[w]
            if rng.random() < 0.1:
                out = step(s, WorkerLost(w))
                out += step(s, WorkerJoined(w))
                continue
            if isinstance(c, TrainSubEpoch):
                trained.setdefault((c.model_id, c.epoch), []).append(c.partition)
            out = step(s, done(c))
            answers = [ModelContinued(x.model_id) if x.epoch < 2 else ModelStopped(x.model_id) for x in out if isinstance(x, EndEpoch)]
            if answers:
                step(s, *answers)
        assert s.idle
        return trained, s

    a, s = run(random.Random(1))
    b, _ = run(random.Random(2))
    assert a == b
    for (m, e), parts in a.items():
        assert tuple(parts) == s.epoch_order(m, e)


# --------------------------------------------------------------------------- preferences


def test_affinity_beats_more_visits_left():
    s = started(MOPScheduler(1), 0)
    assert step(s, ModelAdded("a", 0), ModelAdded("b", 1)) == [T("a", 0)]  # tie -> lower index
    # a (1 visit left, state still on w0) is preferred over b (2 visits left).
    assert step(s, done(T("a", 0))) == [E("a", 0)]
    assert step(s, done(E("a", 0))) == [EndEpoch("a", 1), T("b", 0)]


def test_more_visits_left_beats_lower_index():
    s = started(MOPScheduler(2), 0)
    assert step(s, ModelAdded("a", 0)) == [T("a", 0)]
    # w0 goes away (and with it a's cached state); w1 joins: a has 3 visits left, c has 4.
    out = step(s, done(T("a", 0)), WorkerLost(0), ModelAdded("c", 2), WorkerJoined(1))
    assert out == [T("c", 1)]


def test_lower_epoch_beats_lower_index_and_affinity_beats_epoch():
    def setup():
        s = started(MOPScheduler(1), 0)
        step(s, ModelAdded("a", 0))
        step(s, done(T("a", 0)))
        assert step(s, done(E("a", 0))) == [EndEpoch("a", 1)]
        return s

    s = setup()  # a's state is on w0: affinity wins over c's lower epoch
    assert step(s, ModelContinued("a"), ModelAdded("c", 1)) == [T("a", 0, epoch=2)]
    s = setup()  # replaced worker: no affinity; same visits left, c has the lower epoch
    assert step(s, WorkerLost(0), WorkerJoined(0), ModelContinued("a"), ModelAdded("c", 1)) == [T("c", 0)]


def test_fewest_candidates_first_matches_more_pairs():
    s = MOPScheduler(2)
    step(s, WorkerJoined(1))
    assert step(s, ModelAdded("b", 1)) == [T("b", 1)]
    # b needs only partition 0; a needs 0 and 1.  w0 = {a, b}, w1 = {a}.  Serving w0 first
    # would give it a (more visits left) and leave w1 idle; fewest-first serves w1 first.
    out = step(s, done(T("b", 1)), ModelAdded("a", 0), WorkerJoined(0))
    assert out == [T("b", 0), T("a", 1)]


# --------------------------------------------------------------------------- nonsense events


def _busy() -> MOPScheduler:
    s = started(MOPScheduler(3, max_retries=1), 0, 1, 2)
    step(s, ModelAdded("a", 0), ModelAdded("b", 1))
    assert s.in_flight == {0: T("a", 0), 1: T("b", 1)}
    return s


@pytest.mark.parametrize(
    "event",
    [
        WorkerJoined(3),
        WorkerJoined(-1),
        WorkerJoined(0),  # already alive
        WorkerLost(7),
        ModelAdded("a", 5),  # duplicate id
        ModelAdded("c", 1),  # duplicate index
        ModelAdded("c", -1),
        ModelContinued("zzz"),
        ModelContinued("a"),  # running, not awaiting
        ModelStopped("zzz"),
        SubEpochFinished("a", 2, 1, 2),  # worker 2 runs nothing
        SubEpochFinished("b", 0, 1, 0),  # worker 0 runs a, not b
        SubEpochFinished("a", 0, 2, 0),  # wrong epoch
        SubEpochFinished("a", 0, 1, 1),  # wrong partition
        SubEpochFinished("a", 0, 1, 0, "eval"),  # wrong kind
        SubEpochFinished("a", 9, 1, 9),  # worker out of range
        SubEpochFailed("a", 2, 1, 2),
        SubEpochFailed("a", 0, 1, 0, "eval"),
        "not an event",
    ],
)
def test_nonsense_events_raise_and_change_nothing(event):
    s = _busy()
    before = s.in_flight
    with pytest.raises(SchedulerError):
        s.handle(event)
    s.validate()
    assert s.in_flight == before
    assert s.status("a") == s.status("b") == "running"
    # and the scheduler still works
    assert step(s, done(T("a", 0))) != []


def test_events_after_a_model_failed_or_a_worker_was_lost_raise():
    s = started(MOPScheduler(2, max_retries=0), 0, 1)
    step(s, ModelAdded("a", 0))
    step(s, failed(T("a", 0)))
    with pytest.raises(SchedulerError):
        s.handle(done(T("a", 0)))  # that visit is over
    with pytest.raises(SchedulerError):
        s.handle(WorkerLost(0), WorkerLost(0))  # lost twice
    with pytest.raises(SchedulerError):
        s.status("nope")
    with pytest.raises(SchedulerError):
        s.epoch_of("nope")


def test_validate_detects_a_broken_state():
    s = _busy()
    s._in_flight[2] = T("a", 2)  # a in two visits at once
    with pytest.raises(SchedulerError):
        s.validate()
    s = _busy()
    s._free_workers.add(0)  # a busy worker claimed free
    with pytest.raises(SchedulerError):
        s.validate()
    s = _busy()
    s._need[2].add("a")  # a running model indexed as a candidate
    with pytest.raises(SchedulerError):
        s.validate()
    s = _busy()
    s._models["a"].committed_train.append(0)  # committed and still remaining / running
    with pytest.raises(SchedulerError):
        s.validate()


# --------------------------------------------------------------------------- decision cost


def test_decision_cost_sanity_1000_models_64_workers():
    """Sanity bound only (the real number is far lower): < 20 ms per handle on average."""
    p, n = 64, 1000
    s = started(MOPScheduler(p), *range(p))
    s.handle(*[ModelAdded(f"m{i}", i) for i in range(n)])
    rng = random.Random(0)
    total, steps = 0.0, 3000
    for _ in range(steps):
        fl = s._in_flight
        c = fl[rng.choice(list(fl))]
        t0 = time.perf_counter()
        out = s.handle(done(c))
        total += time.perf_counter() - t0
        assert len(s._in_flight) == p  # 1000 models keep all 64 workers busy
        answers = [ModelContinued(x.model_id) for x in out if isinstance(x, EndEpoch)]
        if answers:
            s.handle(*answers)
    s.validate()
    assert total / steps < 0.020


def test_deterministic_mode_prefers_the_model_whose_report_is_due_first():
    from cerebro.core.events import ModelAdded as Added, ModelContinued as Continued, WorkerJoined as Joined

    for mode, first in (("deterministic", "b"), ("dynamic", "a")):
        s = MOPScheduler(1, mode=mode)
        s.handle(Added("a", 0, due=5), Added("b", 1, due=2))
        (cmd,) = s.handle(Joined(0))
        assert cmd.model_id == first, mode
        s.validate()
    s = MOPScheduler(1, mode="deterministic")
    with pytest.raises(SchedulerError, match="due must be an integer >= 0"):
        s.handle(Added("a", 0, due=-1))
    assert not s.in_flight and s.idle   # refused before anything changed
    s.handle(Added("a", 0, due=1))
    with pytest.raises(SchedulerError, match="not awaiting"):
        s.handle(Continued("a", due=2))
