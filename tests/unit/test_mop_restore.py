"""ModelRestored: the scheduler picks up models where the experiment journal left them."""

from __future__ import annotations

import numpy as np
import pytest

from cerebro.core.events import (
    EndEpoch, ModelContinued, ModelRestored, SubEpochFinished, TrainSubEpoch, WorkerJoined,
)
from cerebro.core.mop import MOPScheduler, SchedulerError


def test_restored_running_model_needs_only_the_missing_partitions():
    s = MOPScheduler(3, mode="dynamic")
    s.handle(ModelRestored("m", 0, 2, "running", trained=(2, 0)))
    s.validate()
    cmds = s.handle(*(WorkerJoined(w) for w in range(3)))
    assert cmds == [TrainSubEpoch("m", 1, 2, 1, 0)]
    assert s.epoch_of("m") == 2
    s.validate()


def test_restored_model_whose_epoch_is_complete_gets_its_end_epoch_at_once():
    s = MOPScheduler(2)
    cmds = s.handle(ModelRestored("m", 4, 3, "running", trained=(0, 1), evaluated=(1, 0)))
    assert cmds == [EndEpoch("m", 3)]
    assert s.status("m") == "awaiting"
    s.handle(ModelContinued("m"))
    assert s.epoch_of("m") == 4 and s.status("m") == "running"
    s.validate()


def test_restored_eval_phase_and_ended_and_failed_models():
    s = MOPScheduler(2)
    s.handle(ModelRestored("a", 0, 1, "running", trained=(0, 1), evaluated=(0,)),
             ModelRestored("b", 1, 2, "ended"), ModelRestored("c", 2, 1, "failed"),
             ModelRestored("d", 3, 1, "awaiting"))
    s.validate()
    assert [s.status(m) for m in "abcd"] == ["running", "ended", "failed", "awaiting"]
    cmds = s.handle(WorkerJoined(0), WorkerJoined(1))
    assert [(c.model_id, c.partition, type(c).__name__) for c in cmds] == [("a", 1, "EvaluateSubEpoch")]
    s.validate()


def test_deterministic_restore_must_follow_the_order_and_index_stays_unique():
    s = MOPScheduler(4, mode="deterministic", seed=3)
    base = np.random.default_rng([3, 2]).permutation(4)
    order = tuple(int(base[(1 + k) % 4]) for k in range(4))
    cmds = s.handle(ModelRestored("y", 1, 2, "running", trained=order[:2]),
                    *(WorkerJoined(w) for w in range(4)))
    assert cmds == [TrainSubEpoch("y", order[2], 2, order[2], 0)]
    s.validate()
    with pytest.raises(SchedulerError, match="prefix"):
        s.handle(ModelRestored("z", 5, 2, "running", trained=(order[1],)))
    with pytest.raises(SchedulerError, match="index"):
        s.handle(ModelRestored("w", 1, 1, "ended"))
    with pytest.raises(SchedulerError, match="epoch"):
        s.handle(ModelRestored("v", 7, 0, "ended"))
    s.validate()


def test_restored_then_finished_continues_normally():
    s = MOPScheduler(2, mode="dynamic")
    s.handle(ModelRestored("m", 0, 1, "running", trained=(1,)))
    (cmd,) = s.handle(WorkerJoined(0), WorkerJoined(1))
    assert cmd == TrainSubEpoch("m", 0, 1, 0, 0)
    cmds = s.handle(SubEpochFinished("m", 0, 1, 0, "train"))
    # training complete: evaluation starts, the affine worker 0 first
    assert [(type(c).__name__, c.partition) for c in cmds] == [("EvaluateSubEpoch", 0)]
    s.validate()
