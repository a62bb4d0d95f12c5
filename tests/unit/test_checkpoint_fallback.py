"""A lost (deleted or corrupted) latest checkpoint rolls the model back to the state its epoch
started from; the epoch is trained again and the model ends as if nothing happened.

Pure reducer and scheduler cases first, then the engine with the inline backend and a fake,
TensorFlow-free worker that checks checkpoints exactly as the real one does (missing file:
:class:`CheckpointUnusable`; sha256 mismatch: :class:`CheckpointCorrupted`).
"""

from __future__ import annotations

import hashlib
import json

import pytest
from visit_counts import ok_once

from cerebro.backends.base import WorkerSetup
from cerebro.backends.inline import InlineBackend
from cerebro.core.events import (
    AbandonModel, EndEpoch, ModelAdded, ModelRestored, ModelRolledBack, SubEpochFailed, SubEpochFinished,
    TrainSubEpoch, WorkerJoined,
)
from cerebro.core.mop import MOPScheduler, SchedulerError
from cerebro.core.records import EpochResult, ModelCreation, Rollback, Visit, record_from_dict
from cerebro.core.seeds import driver_rng
from cerebro.core.state import ExperimentState
from cerebro.drivers.grid import GridDriver
from cerebro.errors import CerebroError
from cerebro.experiment.engine import Engine, ModelInit
from cerebro.experiment.tasks import TaskResult
from cerebro.space import hp_choice
from cerebro.worker import CheckpointCorrupted, CheckpointUnusable, failure_cause


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- reducer


def visit(mid, epoch, partition, ckpt, kind="train", status="ok"):
    return Visit(kind, mid, epoch, partition, partition, 0.0, 1.0, 10, status, metrics={"loss": 1.0},
                 checkpoint=ckpt if kind == "train" else None, checksum=sha(ckpt) if kind == "train" else None)


def test_a_rollback_undoes_the_epochs_visits_and_resets_the_model_to_its_start():
    s = ExperimentState()
    s.apply(ModelCreation("m", 0, {}, "m/spec", "m/init", sha("m/init")))
    assert s.models["m"].start_checkpoint == "m/init"
    assert "m/init" in s.kept_checkpoints()             # epoch 1 keeps the initial state
    s.apply(visit("m", 1, 0, "m/e1-h1"))
    assert s.kept_checkpoints() == {"m/init", "m/e1-h1"}
    s.apply(visit("m", 1, 1, "m/e1-h2"))
    s.apply(visit("m", 1, 0, "", kind="eval"))
    s.apply(Rollback("m", 1, "m/e1-h2", "m/init", sha("m/init"), "checkpoint m/e1-h2 is corrupted"))
    m = s.models["m"]
    assert (m.checkpoint, m.checksum, m.hops, m.trained, m.evaluated) == ("m/init", sha("m/init"), 0, [], [])
    assert m.rollbacks == 1 and m.lost == ["m/e1-h2"]
    assert s.epoch_metrics("m", 1) == {}
    assert [v["status"] for v in s.visits] == ["failed", "failed"]   # undone: not part of the model
    assert [v["status"] for v in s.evaluations] == ["failed"]
    assert s.kept_checkpoints() == {"m/init"}
    s.apply(visit("m", 1, 0, "m/e1-h1-a3"))
    assert s.models["m"].hops == 1 and [v["status"] for v in s.visits] == ["failed", "failed", "ok"]


def test_a_rollback_round_trips_through_the_journal_format():
    r = Rollback("m", 2, "m/e2-h1", "m/e1-h2", "abc", "missing", time=3.0)
    assert record_from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert r.to_dict()["type"] == "rollback"


def test_a_rollback_of_a_model_that_is_not_in_that_epoch_is_refused():
    s = ExperimentState()
    s.apply(ModelCreation("m", 0, {}, "m/spec", "m/init"))
    with pytest.raises(CerebroError, match="rolls back epoch 2"):
        s.apply(Rollback("m", 2, "x", "m/init", None))


# --------------------------------------------------------------------------- scheduler


def step(s, *events):
    out = s.handle(*events)
    s.validate()
    return out


def test_a_rolled_back_model_redoes_its_whole_epoch_in_the_same_order():
    s = MOPScheduler(3, mode="deterministic", seed=5)
    step(s, *[WorkerJoined(w) for w in range(3)])
    (cmd,) = step(s, ModelAdded("a", 0))
    order = s.epoch_order("a", 1)
    trained = []
    while len(trained) < 2:
        trained.append(cmd.partition)
        (cmd,) = step(s, SubEpochFinished("a", cmd.worker, 1, cmd.partition))
    assert tuple(trained) == order[:2]
    # The third hop cannot read the state the second committed: back to the epoch's start.
    out = step(s, ModelRolledBack("a", cmd.worker, 1, cmd.partition))
    assert out == [TrainSubEpoch("a", order[0], 1, order[0], 0)]   # attempt 0: not a failed retry
    cmd = out[0]
    seen = []
    while True:
        out = step(s, SubEpochFinished("a", cmd.worker, 1, cmd.partition, "train" if isinstance(cmd, TrainSubEpoch) else "eval"))
        seen.append((type(cmd).__name__, cmd.partition))
        if any(isinstance(c, EndEpoch) for c in out):
            break
        (cmd,) = out
    assert [q for k, q in seen if k == "TrainSubEpoch"] == list(order)
    assert sorted(q for k, q in seen if k != "TrainSubEpoch") == [0, 1, 2]


def test_a_rollback_during_evaluation_trains_the_epoch_again_first():
    s = MOPScheduler(2, mode="dynamic")
    step(s, WorkerJoined(0), WorkerJoined(1))
    (cmd,) = step(s, ModelRestored("a", 0, 1, "running", trained=(0, 1), evaluated=(1,)))
    assert cmd.partition == 0 and type(cmd).__name__ == "EvaluateSubEpoch"
    (cmd,) = step(s, ModelRolledBack("a", cmd.worker, 1, 0, "eval"))
    assert isinstance(cmd, TrainSubEpoch) and cmd.epoch == 1


def test_a_rollback_does_not_count_as_a_failed_attempt():
    s = MOPScheduler(2, mode="deterministic", max_retries=0)
    step(s, WorkerJoined(0), WorkerJoined(1))
    (cmd,) = step(s, ModelAdded("a", 0))
    for _ in range(3):
        (cmd,) = step(s, ModelRolledBack("a", cmd.worker, 1, cmd.partition))
        assert cmd.attempt == 0 and s.status("a") == "running"
    out = step(s, SubEpochFailed("a", cmd.worker, 1, cmd.partition, "train", "boom"))
    assert out == [AbandonModel("a", 1, cmd.partition, "train", "boom")]


def test_rolling_back_a_visit_that_is_not_running_is_refused():
    s = MOPScheduler(2)
    step(s, WorkerJoined(0), WorkerJoined(1))
    (cmd,) = step(s, ModelAdded("a", 0))
    with pytest.raises(SchedulerError):
        s.handle(ModelRolledBack("a", cmd.worker, 1, 1 - cmd.partition))


def test_the_worker_classifies_an_unusable_input_checkpoint():
    assert failure_cause(CheckpointCorrupted("checkpoint x is corrupted")) == "checkpoint"
    assert failure_cause(CheckpointUnusable("checkpoint x is missing")) == "checkpoint"
    assert failure_cause(FileNotFoundError("some other file")) is None
    assert isinstance(CheckpointCorrupted("x"), CerebroError)


def test_read_checkpoint_refuses_corrupt_bytes_as_a_structured_error():
    from cerebro.worker import read_checkpoint

    class Bytes:
        def read_bytes(self, path):
            return b"truncated"

    with pytest.raises(CheckpointCorrupted, match="checkpoint m/e1-h1 is corrupted") as info:
        read_checkpoint(Bytes(), "m/e1-h1", sha("the real bytes"))
    assert info.value.path == "m/e1-h1"


# --------------------------------------------------------------------------- engine


class Store:
    url = "memory://"

    def __init__(self):
        self.files: dict[str, str] = {}
        self.written: list[str] = []


ROWS = {0: 10, 1: 30, 2: 20}


class Runtime:
    """Checks its input checkpoint as the real worker does, then "trains" deterministically."""

    def __init__(self, store: Store, worker: int):
        self.store, self.worker = store, worker

    def run(self, task):
        if task.checkpoint not in self.store.files:
            raise CheckpointUnusable(f"checkpoint {task.checkpoint} of {task.model_id} is missing from the store",
                                     task.checkpoint)
        state = self.store.files[task.checkpoint]
        if task.checksum is not None and sha(state) != task.checksum:
            raise CheckpointCorrupted(f"checkpoint {task.checkpoint} is corrupted", task.checkpoint)
        rows = ROWS[task.partition]
        if task.kind == "train":
            new = sha(f"{state}|{task.partition}|{task.seed}|{task.epoch_end}")[:16]
            self.store.files[task.out] = new
            self.store.written.append(task.out)
            return TaskResult(rows, {"loss": int(new[:4], 16) / 65536}, task.out, sha(new))
        return TaskResult(rows, {"loss": int(sha(state)[:4], 16) / 65536})


class Workspace:
    def __init__(self, store: Store, journal: list, keep_all: bool = False):
        self.store, self.sink, self.keep_all = store, journal, keep_all

    def create_model(self, model_id, index, params):
        init = f"init-{model_id}-{params['a']}"
        self.store.files[f"{model_id}/init"] = init
        return ModelInit(f"{model_id}/spec", f"{model_id}/init", sha(init))

    def exploit(self, plan, params):  # pragma: no cover - grid never exploits
        raise AssertionError

    def checkpoint_path(self, m, e, h, a):
        return f"{m}/e{e}-h{h}-a{a}"

    def delete_checkpoint(self, path):
        if not self.keep_all:
            self.store.files.pop(path, None)

    def journal(self, record):
        self.sink.append(record)


def run(num_workers=3, fault=None, records=None, store=None, epochs=2, keep_all=False, **engine_args):
    """``fault(record, state, store)`` is called after every commit (the engine's after_commit)."""
    store = store or Store()
    journal: list[dict] = []
    events: list[tuple[str, dict]] = []
    backend = InlineBackend(num_workers, runtime_factory=lambda setup, w: Runtime(store, w))
    driver = GridDriver(epochs)
    driver.bind({"a": hp_choice([1, 2, 3])}, driver_rng(7), num_workers)
    engine = Engine(backend=backend, setup=WorkerSetup(store, {"key": "k"}),
                    scheduler=MOPScheduler(num_workers, mode="deterministic", seed=7), driver=driver,
                    workspace=Workspace(store, journal, keep_all), seed=7, listener=lambda e, i: events.append((e, dict(i))),
                    after_commit=(lambda r, s: fault(r, s, store)) if fault else None, **engine_args)
    if records is not None:
        engine.restore(records)
    outcome = engine.run()
    finals = {m: store.files.get(r.checkpoint) for m, r in outcome.models.items()}
    history = sorted((h["model_id"], h["epoch"], h["train_loss"], h["val_loss"]) for h in outcome.history)
    return outcome, finals, history, journal, events, store


def lose(model, epoch, hops, how="delete", kind="train", times=1):
    """A fault: after ``model``'s ``hops``-th train visit of ``epoch`` commits, lose its checkpoint."""
    done = []

    def fault(record, state, store):
        if (isinstance(record, Visit) and record.kind == "train" and record.status == "ok" and record.model_id == model
                and record.epoch == epoch and state.models[model].hops == hops and len(done) < times):
            done.append(record.checkpoint)
            if how == "delete":
                del store.files[record.checkpoint]
            else:
                store.files[record.checkpoint] = store.files[record.checkpoint][:5]   # truncated
    fault.done = done
    return fault


@pytest.fixture(scope="module")
def clean():
    return run()


@pytest.mark.parametrize("how", ["delete", "corrupt"])
@pytest.mark.parametrize("epoch,hops", [(1, 1), (2, 2), (2, 3)])
def test_a_lost_latest_checkpoint_rolls_back_and_the_model_equals_the_fault_free_run(clean, how, epoch, hops):
    _, ref_finals, ref_history, *_ = clean
    fault = lose("model_001", epoch, hops, how)
    outcome, finals, history, journal, events, store = run(fault=fault)
    assert fault.done
    assert finals == ref_finals and history == ref_history
    assert all(r.status == "completed" for r in outcome.models.values())
    assert set(ok_once(outcome.visits).values()) == {1} and len(ok_once(outcome.visits)) == 3 * 2 * 3
    rollbacks = [r for r in journal if r["type"] == "rollback"]
    assert len(rollbacks) == 1
    rb = rollbacks[0]
    start = "model_001/init" if epoch == 1 else journal_epoch_checkpoint(journal, "model_001", epoch - 1)
    assert (rb["model_id"], rb["epoch"], rb["from_checkpoint"], rb["to_checkpoint"]) == (
        "model_001", epoch, fault.done[0], start)
    assert ("missing" if how == "delete" else "corrupted") in rb["reason"]
    # visits: the undone visits and the failed read are "failed", then the epoch again, "ok"
    mine = [v for v in outcome.visits + outcome.evaluations if v["model_id"] == "model_001" and v["epoch"] == epoch]
    failed = [v for v in mine if v["status"] == "failed"]
    assert len(failed) == hops + 1                      # the undone train visits, then the failed read
    assert sum(1 for v in mine if v["status"] == "ok") == 3 + 3
    assert [e for e, _ in events].count("rollback") == 1
    # Every checkpoint name was written once (a worker's cache knows a state by its name); what
    # was lost is gone.
    assert len(store.written) == len(set(store.written))
    assert fault.done[0] not in store.files


def journal_epoch_checkpoint(journal, model, epoch):
    return next(r["checkpoint"] for r in journal if r["type"] == "epoch" and r["model_id"] == model
                and r["epoch"] == epoch)


def test_the_start_state_lost_too_fails_the_model_saying_both_are_lost(clean):
    def fault(record, state, store):
        # After the second hop of epoch 2: the latest and the epoch's start state both vanish.
        if (isinstance(record, Visit) and record.kind == "train" and record.status == "ok"
                and record.model_id == "model_002" and record.epoch == 2 and state.models["model_002"].hops == 2):
            del store.files[record.checkpoint]
            del store.files[state.models["model_002"].start_checkpoint]

    outcome, finals, *_ = run(fault=fault)
    assert outcome.models["model_002"].status == "failed"
    error = outcome.failures["model_002"]
    assert "both its latest checkpoint" in error and "the state epoch 2 started from, are lost" in error
    assert finals["model_000"] == clean[1]["model_000"] and finals["model_001"] == clean[1]["model_001"]


def test_a_lost_start_state_with_nothing_older_fails_the_model_after_its_retries():
    def fault(record, state, store):
        if isinstance(record, EpochResult) and record.model_id == "model_000" and record.epoch == 1:
            del store.files[record.checkpoint]       # the state epoch 2 starts from

    outcome, *_ = run(fault=fault)
    assert outcome.models["model_000"].status == "failed"
    assert "the state epoch 2 started from, is lost" in outcome.failures["model_000"]
    attempts = [v for v in outcome.visits if v["model_id"] == "model_000" and v["epoch"] == 2]
    assert [v["status"] for v in attempts] == ["failed"] * 3   # the first try and max_retries=2 retries
    assert outcome.models["model_001"].status == outcome.models["model_002"].status == "completed"


def test_checkpoints_lost_again_and_again_fail_the_model_after_max_rollbacks():
    fault = lose("model_001", 2, 1, times=10)
    outcome, *_ = run(fault=fault, max_rollbacks=2)
    assert outcome.models["model_001"].status == "failed"
    assert len(fault.done) == 3
    assert "giving up after 2 rollbacks" in outcome.failures["model_001"]
    assert outcome.models["model_000"].status == "completed"


def test_a_resume_after_a_rollback_replays_it_and_finishes_identically(clean):
    _, ref_finals, ref_history, *_ = clean
    # (Nothing is deleted but the lost checkpoint, so every prefix's files are still there.)
    _, _, _, journal, _, store = run(fault=lose("model_000", 2, 1), keep_all=True)
    at = next(i for i, r in enumerate(journal) if r["type"] == "rollback")
    for cut in (at + 1, at + 2, at + 4):
        again = Store()
        again.files = dict(store.files)
        outcome, finals, history, *_ = run(records=journal[:cut], store=again, keep_all=True)
        assert finals == ref_finals and history == ref_history, cut
        assert set(ok_once(outcome.visits).values()) == {1}
        undone = [v for v in outcome.visits if v["model_id"] == "model_000" and v["epoch"] == 2 and v["status"] == "failed"]
        assert len(undone) == 2, cut                   # the undone hop and the failed read, replayed


def test_the_checkpoint_failure_is_logged_and_told_to_listeners(caplog):
    with caplog.at_level("WARNING", logger="cerebro.experiment.engine"):
        _, _, _, _, events, _ = run(fault=lose("model_002", 1, 2))
    assert "model_002: its latest checkpoint is unusable" in caplog.text
    info = next(i for e, i in events if e == "rollback")
    assert info["model_id"] == "model_002" and info["to_checkpoint"] == "model_002/init"
