"""SparkBackend on a real Spark ``local[2]``: same models as LocalBackend, slots check, the
driver's authenticated server, reuse of Python workers between fits."""

from __future__ import annotations

import multiprocessing.connection as mpc
import pickle
import socket
import struct
import time

import pytest

pytest.importorskip("pyspark")

from cerebro import GridSearch, LocalBackend, LocalStore, hp_choice  # noqa: E402
from cerebro.backends.base import WorkerReady, WorkerSetup  # noqa: E402
from cerebro.backends.spark import SparkBackend  # noqa: E402
from cerebro.data import prepare_data  # noqa: E402
from spark_helpers import assert_exactly_once, assert_same_models, make_frame, make_gen  # noqa: E402

SPACE = {"lr": hp_choice([1e-3, 1e-2])}


def _fit(backend, store_dir, frame, epochs=2):
    return GridSearch(backend, LocalStore(store_dir), make_gen(), SPACE, epochs, scheduler="deterministic",
                      seed=7, verbose=0).fit(frame)


@pytest.mark.slow
def test_spark_dataframe_on_spark_backend_gives_the_local_backend_models(spark, tmp_path):
    frame = make_frame(3000)
    with LocalBackend(2) as local:
        expected = _fit(local, tmp_path / "local", frame)
    with SparkBackend(spark, 2) as backend:
        # The same rows as a Spark DataFrame (prepared by Spark, in another order): same models.
        sdf = spark.createDataFrame(frame.sample(frac=1.0, random_state=3)).repartition(3)
        got = _fit(backend, tmp_path / "spark", sdf)
        assert_same_models(expected, got)
        assert_exactly_once(got, 2, 2, 2)
        assert set(got.visits.worker) == {0, 1}
        # The stage ends with the fit (Spark gets its slots back: a plain job runs now) ...
        assert spark.range(100).count() == 100
        # ... and a second fit (prepared data reused) relaunches it.
        again = _fit(backend, tmp_path / "spark", frame, epochs=1)
        assert backend.launches == 2
        assert again.history.epoch.max() == 1
        assert_exactly_once(again, 2, 1, 2)


def test_defaults_come_from_the_active_context(spark):
    backend = SparkBackend()
    assert backend.num_workers == spark.sparkContext.defaultParallelism == 2
    assert backend.sc is spark.sparkContext
    backend.close()


def test_more_workers_than_slots_is_refused_at_once(spark):
    t0 = time.time()
    with pytest.raises(ValueError) as err:
        SparkBackend(spark.sparkContext, 3)
    assert "3 task slots" in str(err.value) and "has 2" in str(err.value)
    assert time.time() - t0 < 5


@pytest.mark.parametrize("bad,kind", [(0, ValueError), (2.5, ValueError), ("x", ValueError)])
def test_bad_num_workers(spark, bad, kind):
    with pytest.raises(kind, match="num_workers"):
        SparkBackend(spark, bad)


def test_bad_spark_context():
    pytest.importorskip("pyspark")
    with pytest.raises(TypeError, match="spark_context"):
        SparkBackend("local[2]", 2)


class _Evil:
    """Unpickling this creates a file: proof that the server unpickled what a stranger sent."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.slow
def test_server_refuses_unauthenticated_clients(spark, tmp_path):
    store = LocalStore(tmp_path / "store")
    prepared = prepare_data(make_frame(400), store, feature_columns="features", label_columns="label",
                            num_partitions=2, seed=1)
    backend = SparkBackend(spark, 2, start_timeout=120)
    try:
        backend.start(WorkerSetup(store, prepared.to_dict()))
        ready = set()
        deadline = time.time() + 120
        while len(ready) < 2 and time.time() < deadline:
            ready |= {e.worker for e in backend.wait(1.0) if isinstance(e, WorkerReady)}
        assert ready == {0, 1}
        address = backend._address

        # A client with the wrong key is told so and dropped.
        with pytest.raises(mpc.AuthenticationError):
            mpc.Client(address, family="AF_INET", authkey=b"not the secret")

        # A raw client that sends a pickle instead of the HMAC answer: never unpickled.
        marker = tmp_path / "pwned"
        payload = pickle.dumps(("hello", backend._generation, 0, "x", 1, _Evil(str(marker))))
        with socket.create_connection(address) as s:
            s.recv(4096)   # the challenge
            s.sendall(struct.pack("!i", len(payload)) + payload)
            s.settimeout(10)
            try:
                s.recv(4096)
            except (ConnectionError, socket.timeout):
                pass
        deadline = time.time() + 10
        while backend.refused_connections < 2 and time.time() < deadline:
            backend.wait(0.2)
        assert backend.refused_connections == 2
        assert not marker.exists()
        # The real workers are unaffected and still take work.
        assert sorted(backend._ch.ready) == [0, 1] and backend._stage_alive
    finally:
        backend.close()


def test_startup_problem_names_the_slots(spark):
    backend = SparkBackend(spark, 2)
    backend._short_of_slots = 1
    assert "needs 2 task slots" in backend.startup_problem() and "only 1" in backend.startup_problem()
    backend.close()


def test_no_active_context_is_a_clear_error(monkeypatch):
    pyspark = pytest.importorskip("pyspark")
    monkeypatch.setattr(pyspark.SparkContext, "_active_spark_context", None)
    with pytest.raises(ValueError, match="no active SparkContext"):
        SparkBackend()


def make_torch_gen(dim: int = 16, batch_size: int = 32):
    def gen(params):
        import torch
        from torch import nn

        from cerebro import TorchEstimator

        model = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 5))
        return TorchEstimator(model, torch.optim.Adam(model.parameters(), lr=params["lr"]), "cross_entropy",
                              metrics=["accuracy"], batch_size=batch_size)
    return gen


@pytest.mark.slow
def test_torch_models_on_spark_backend_equal_local_backend_and_transform_in_executors(spark, tmp_path):
    import numpy as np
    import pandas as pd

    pytest.importorskip("torch")
    frame = make_frame(2000)

    def fit(backend, store_dir, data):
        return GridSearch(backend, LocalStore(store_dir), make_torch_gen(), SPACE, 2, scheduler="deterministic",
                          evaluation_metric="accuracy", seed=7, verbose=0).fit(data)

    with LocalBackend(2) as local:
        expected = fit(local, tmp_path / "local", frame)
    with SparkBackend(spark, 2) as backend:
        got = fit(backend, tmp_path / "spark", spark.createDataFrame(frame.sample(frac=1.0, random_state=3)))
    assert_exactly_once(got, 2, 2, 2)
    cols = [c for c in expected.history.columns if c.startswith(("train_", "val_"))]
    pd.testing.assert_frame_equal(expected.history[["model_id", "epoch", *cols]], got.history[["model_id", "epoch", *cols]])
    for mid, model in expected.models.items():
        want, have = model.torch().state_dict(), got.models[mid].torch().state_dict()
        for k in want:
            np.testing.assert_array_equal(want[k].numpy(), have[k].numpy(), err_msg=f"{mid} {k}")
    # transform on a Spark DataFrame predicts in the executors (torch loaded there) what pandas predicts here
    head = frame.head(300)
    sdf = spark.createDataFrame(head.assign(row=np.arange(len(head))))
    out = got.transform(sdf).orderBy("row").toPandas()
    local_out = got.transform(head)
    np.testing.assert_allclose(np.stack(out["label__output"]), np.stack(local_out["label__output"]), atol=1e-5)
