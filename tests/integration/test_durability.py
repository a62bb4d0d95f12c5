"""Tracking, retention and saved models, end to end on digits with real worker processes."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

import cerebro
from cerebro.datasets import digits_frame
from cerebro import GridSearch, LocalBackend, LocalStore, hp_choice
from cerebro.frameworks.keras import limit_threads
from cerebro.storage import layout

pytestmark = pytest.mark.slow

limit_threads(1)



def tiny(params):
    import keras

    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(params["width"], activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    return cerebro.KerasEstimator(model, keras.optimizers.Adam(params["lr"]), "sparse_categorical_crossentropy",
                                  metrics=["accuracy"], batch_size=64)


@pytest.fixture(scope="module")
def backend():
    with LocalBackend(2) as b:
        yield b


def test_tensorboard_and_mlflow_hold_the_history(backend, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    import tensorflow as tf
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = LocalStore(str(tmp_path / "store"))
    r = GridSearch(backend, store, tiny, {"lr": hp_choice([1e-3, 1e-2]), "width": hp_choice([16])}, num_epochs=2,
                   evaluation_metric="accuracy", experiment_name="tracked", mlflow_tracking_uri=uri, verbose=0).fit(digits_frame())
    tb_dir = os.path.join(r.experiment_dir, "tensorboard")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tracked")
    runs = client.search_runs([exp.experiment_id])
    children = {run.data.tags["mlflow.runName"]: run for run in runs if "mlflow.parentRunId" in run.data.tags}
    assert set(children) == set(r.models)
    for mid in r.models:
        acc = EventAccumulator(os.path.join(tb_dir, mid), size_guidance={"tensors": 0})
        acc.Reload()
        run = children[mid]
        assert run.info.status == "FINISHED"
        assert float(run.data.params["lr"]) == r.models[mid].params["lr"]
        h = r.history[r.history.model_id == mid].set_index("epoch")
        for metric in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
            tb = {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(metric)}
            ml = {m.step: m.value for m in client.get_metric_history(run.info.run_id, metric)}
            expected = h[metric].to_dict()
            assert tb == pytest.approx(expected, rel=1e-6)
            assert ml == pytest.approx(expected, rel=1e-6)


def test_retention_keeps_disk_bounded_over_a_20_configuration_grid(backend, tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    space = {"lr": hp_choice([1e-3, 2e-3, 3e-3, 5e-3, 1e-2]), "width": hp_choice([8, 16, 24, 32])}
    r = GridSearch(backend, store, tiny, space, num_epochs=3, evaluation_metric="accuracy",
                   experiment_name="retention", verbose=0, tensorboard=False).fit(digits_frame())
    assert len(r.models) == 20
    files = {m: store.listdir(layout.checkpoint_dir("retention", m)) for m in r.models}
    best = r.best_checkpoint
    for mid, names in files.items():
        # the latest checkpoint of every model, plus the best (model, epoch)'s when that is an older one
        extra = 1 if best and best["model_id"] == mid and not best["checkpoint"].endswith(names[-1]) else 0
        assert len(names) == 1 + extra, (mid, names)
    largest = max(store.file_size(f"{layout.checkpoint_dir('retention', m)}/{n}") for m, ns in files.items() for n in ns)
    assert 0 < r.checkpoint_bytes <= 20 * largest * 2
    # every checkpoint the run wrote beyond those was deleted: 20 models x 3 epochs x 2 hops + initial ones
    written = sum(1 for line in open(os.path.join(r.experiment_dir, "journal.jsonl")) if '"checkpoint"' in line)
    assert written > 20 * 3 * 2


def test_saved_model_keeps_provenance(backend, tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    df = digits_frame()
    r = GridSearch(backend, store, tiny, {"lr": hp_choice([1e-2]), "width": hp_choice([32])}, num_epochs=2,
                   evaluation_metric="accuracy", experiment_name="prov", verbose=0, tensorboard=False).fit(df)
    path = r.best_model.save(tmp_path / "saved")
    loaded = cerebro.load_model(path)
    meta = json.load(open(os.path.join(path, "cerebro.json")))
    prov = meta["provenance"]
    assert prov["experiment"] == "prov" and prov["data_hash"] == json.load(
        open(os.path.join(r.experiment_dir, "experiment.json")))["data_hash"]
    mine = r.visits[(r.visits.model_id == r.best_model_id) & (r.visits.status == "ok")]
    assert [tuple(v) for v in prov["visit_order"]] == list(zip(mine.epoch, mine.partition))
    assert sorted(prov["visit_order"]) == [[1, 0], [1, 1], [2, 0], [2, 1]]
    assert {"keras", "numpy", "python"} <= set(prov)
    assert loaded.params == {"lr": 1e-2, "width": 32}
    pd.testing.assert_frame_equal(loaded.history.reset_index(drop=True), r.best_model.history.reset_index(drop=True),
                                  check_dtype=False)
    np.testing.assert_allclose(loaded.predict(df.head(20)), r.best_model.predict(df.head(20)), atol=1e-6)
