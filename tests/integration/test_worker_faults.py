"""Worker and checkpoint faults end to end: real worker processes, real Keras training on digits.

* A worker that dies at every start (here: its log file cannot be opened, which kills the
  process before it reads anything) is retired; the other worker serves its partition and the
  deterministic models are bit for bit those of a run with every worker.
* A model's latest checkpoint deleted, or corrupted, mid-run: the model rolls back to the state
  its epoch started from, trains the epoch again and ends bit for bit as in the fault-free run;
  ``visits`` records the failed read and the undone visits.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

import cerebro
from cerebro import GridSearch, LocalBackend, LocalStore, hp_choice
from cerebro.core.records import Visit
from cerebro.datasets import digits_frame
from cerebro.experiment.journal import read_journal
from cerebro.frameworks.keras import limit_threads
from cerebro.storage import layout

pytestmark = pytest.mark.slow

limit_threads(1)


def tiny(params):
    import keras

    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    return cerebro.KerasEstimator(model, keras.optimizers.Adam(params["lr"]), "sparse_categorical_crossentropy",
                                  metrics=["accuracy"], batch_size=64)


def search(backend, store, name):
    return GridSearch(backend, store, tiny, {"lr": hp_choice([3e-3, 1e-2])}, num_epochs=2, evaluation_metric="accuracy",
                      scheduler="deterministic", experiment_name=name, verbose=0, tensorboard=False)


def weights(result) -> dict:
    return {f"{m}/{i}": w for m, model in sorted(result.models.items()) for i, w in enumerate(model.keras().get_weights())}


def assert_same_models(result, reference) -> None:
    assert all(m.status == "completed" for m in result.models.values())
    got, want = weights(result), weights(reference)
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    pd.testing.assert_frame_equal(result.history.reset_index(drop=True), reference.history.reset_index(drop=True))


def assert_exactly_once(visits: pd.DataFrame, models: int = 2, epochs: int = 2, partitions: int = 2) -> None:
    ok = visits[visits.status == "ok"].groupby(["model_id", "epoch", "partition"]).size()
    assert len(ok) == models * epochs * partitions and set(ok) == {1}


@pytest.fixture(scope="module")
def data():
    return digits_frame()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return LocalStore(str(tmp_path_factory.mktemp("faults-store")))


@pytest.fixture(scope="module")
def backend():
    with LocalBackend(2) as b:
        yield b


@pytest.fixture(scope="module")
def reference(backend, store, data):
    return search(backend, store, "reference").fit(data)


def test_a_worker_that_dies_at_every_start_is_retired_and_the_models_equal_a_full_pool(reference, data, tmp_path,
                                                                                       caplog):
    store = LocalStore(str(tmp_path / "store"))
    # Worker 1's log file is a directory: its process dies opening it, at every start.
    os.makedirs(store.local_path(layout.worker_log(1)))
    with caplog.at_level("WARNING", logger="cerebro.experiment.engine"), LocalBackend(2) as backend:
        result = search(backend, store, "degraded").fit(data)
    assert "experiment degraded: worker 1 retired after 4 failed starts; partition 1 is served by worker 0" in caplog.text
    assert_same_models(result, reference)
    assert_exactly_once(result.visits)
    assert set(zip(result.visits.partition, result.visits.worker)) == {(0, 0), (1, 0)}
    assert set(zip(result.evaluations.partition, result.evaluations.worker)) == {(0, 0), (1, 0)}
    retired = [r for r in read_journal(store, "degraded") if r["type"] == "worker_retired"]
    assert [(r["worker"], r["deaths"], r["moved"]) for r in retired] == [(1, 4, [[1, 0]])]
    assert "exited with code 1" in retired[0]["reason"]


def inject(monkeypatch, fault) -> None:
    """Run ``fault(record, state)`` after every record the engine commits."""
    import cerebro.selection as selection

    class Faulty(selection.Engine):
        def __init__(self, **kwargs):
            super().__init__(**kwargs, after_commit=fault)

    monkeypatch.setattr(selection, "Engine", Faulty)


def lose_checkpoint(store, how, model, epoch, hops):
    """A fault: once ``model``'s train visit number ``hops`` of ``epoch`` commits, its checkpoint
    is deleted from the store or truncated (what a crash of the disk, or a person, might do)."""
    lost = []

    def fault(record, state):
        if (not lost and isinstance(record, Visit) and record.kind == "train" and record.status == "ok"
                and record.model_id == model and record.epoch == epoch and state.models[model].hops == hops):
            path = store.local_path(record.checkpoint)
            if how == "delete":
                os.remove(path)
            else:
                with open(path, "r+b") as fh:
                    fh.truncate(100)
            lost.append(record.checkpoint)

    fault.lost = lost
    return fault


@pytest.mark.parametrize("how,epoch,hops,failed", [
    # The next train visit, on the other worker, cannot read it: that hop undone + the failed read.
    ("delete", 2, 1, {"train": 2, "eval": 0}),
    # The epoch's last state: the worker that wrote it evaluates it from memory, the other finds
    # it corrupted: two hops and one evaluation undone + the failed read.
    ("corrupt", 1, 2, {"train": 2, "eval": 2}),
])
def test_a_lost_latest_checkpoint_rolls_back_and_the_model_equals_the_fault_free_run(
        reference, backend, store, data, monkeypatch, how, epoch, hops, failed):
    name = f"lost-{how}"
    fault = lose_checkpoint(store, how, "model_001", epoch, hops)
    inject(monkeypatch, fault)
    result = search(backend, store, name).fit(data)
    assert fault.lost
    assert_same_models(result, reference)
    assert_exactly_once(result.visits)
    # visits: the epoch's undone visits and the failed read are "failed", then the redone ones "ok"
    for kind, table in (("train", result.visits), ("eval", result.evaluations)):
        mine = table[(table.model_id == "model_001") & (table.epoch == epoch)]
        assert (mine.status == "failed").sum() == failed[kind], kind
        assert (mine.status == "ok").sum() == 2, kind
        if failed[kind]:
            assert mine.index[mine.status == "ok"].min() > mine.index[mine.status == "failed"].max(), kind   # redone after
    journal = read_journal(store, name)
    rollbacks = [r for r in journal if r["type"] == "rollback"]
    assert len(rollbacks) == 1
    rb = rollbacks[0]
    assert rb["model_id"] == "model_001" and rb["epoch"] == epoch and rb["from_checkpoint"] == fault.lost[0]
    assert ("missing" if how == "delete" else "corrupted") in rb["reason"]
    # Back to the state the epoch started from: the initial state in epoch 1 (kept by retention
    # until the first epoch ends), else the previous epoch's last state.
    start = layout.checkpoint(name, "model_001", 0, 0) if epoch == 1 else next(
        r["checkpoint"] for r in journal if r["type"] == "epoch" and r["model_id"] == "model_001" and r["epoch"] == epoch - 1)
    assert rb["to_checkpoint"] == start
    assert not store.exists(fault.lost[0])   # the unusable checkpoint is not kept
