"""TrainedModel.transform on Spark DataFrames (cerebro.transform_spark), on a real local[2] Spark.

The models are real compiled Keras models built from a KerasEstimator's spec
(its initial weights stand in for trained ones: transform only predicts), so
no training run is needed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import cerebro.transform_spark as ts
from cerebro import CerebroError, KerasEstimator, ModelSelectionResult, TrainedModel, load_model
from cerebro.frameworks.keras import export_model

pytestmark = pytest.mark.slow

log = logging.getLogger(__name__)


def trained_model(features: tuple[str, ...], width: int, two_outputs: bool = False, seed: int = 0) -> TrainedModel:
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((width,))
    hidden = keras.layers.Dense(16, activation="relu")(inp)
    outputs = [keras.layers.Dense(1)(hidden)]
    losses: list[str] = ["mse"]
    labels = ("y",)
    if two_outputs:
        outputs.append(keras.layers.Dense(3, activation="softmax")(hidden))
        losses.append("sparse_categorical_crossentropy")
        labels = ("y", "c")
    model = keras.Model(inp, outputs if two_outputs else outputs[0])
    spec = KerasEstimator(model, "adam", losses if two_outputs else losses[0]).make_spec([(width,)])
    return TrainedModel(
        "m", {}, pd.DataFrame(), features, labels, _spec=spec, _model=export_model(spec, spec.initial_state)
    )


def rows(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": np.arange(n, dtype=np.int64),
            "f": list(rng.standard_normal((n, 4)).astype(np.float32)),
            "x": rng.standard_normal(n),
            "k": rng.integers(0, 5, n).astype(np.int32),
            "name": [f"r{i}" for i in range(n)],
        }
    )


def to_spark(spark: Any, pdf: pd.DataFrame, vector: bool = False) -> Any:
    from pyspark.ml.linalg import Vectors

    data = [
        (int(i), Vectors.dense(f.tolist()) if vector else f.tolist(), float(x), int(k), name)
        for i, f, x, k, name in pdf.itertuples(index=False)
    ]
    schema = "id long, f {}, x double, k int, name string".format("array<float>" if not vector else "vector")
    if vector:
        from pyspark.ml.linalg import VectorUDT
        from pyspark.sql import types as T

        schema = T.StructType([
            T.StructField("id", T.LongType()), T.StructField("f", VectorUDT()), T.StructField("x", T.DoubleType()),
            T.StructField("k", T.IntegerType()), T.StructField("name", T.StringType()),
        ])
    return spark.createDataFrame(data, schema)


def assert_matches_pandas(out: Any, model: TrainedModel, pdf: pd.DataFrame) -> None:
    got = out.orderBy("id").toPandas()  # small test frames only
    want = model.transform(pdf)
    assert list(got.columns) == list(want.columns)
    for label in model.label_columns:
        a, b = got[f"{label}__output"], want[f"{label}__output"]
        if isinstance(b.iloc[0], np.ndarray):
            np.testing.assert_allclose(np.stack(a.to_list()), np.stack(b.to_list()), rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["x"].to_numpy(), want["x"].to_numpy())
    assert got["name"].to_list() == want["name"].to_list()


def test_spark_transform_equals_pandas_transform(spark: Any) -> None:
    from pyspark.sql import types as T

    model = trained_model(("f", "x", "k"), 6, two_outputs=True)
    pdf = rows(500)
    out = model.transform(to_spark(spark, pdf))
    fields = {f.name: f.dataType for f in out.schema.fields}
    assert fields["y__output"] == T.DoubleType()
    assert fields["c__output"] == T.ArrayType(T.FloatType())
    # One UDF evaluation feeds both output columns.
    plan = out._jdf.queryExecution().executedPlan().toString()
    assert plan.count("ArrowEvalPython") == 1, plan
    assert_matches_pandas(out, model, pdf)


def test_more_partitions_than_workers(spark: Any) -> None:
    model = trained_model(("f", "x"), 5)
    pdf = rows(800, seed=1)
    sdf = to_spark(spark, pdf).repartition(8)
    assert sdf.rdd.getNumPartitions() == 8
    assert_matches_pandas(model.transform(sdf), model, pdf)


def test_vector_features_and_a_saved_model(spark: Any, tmp_path: Path) -> None:
    model = load_model(trained_model(("f", "x"), 5, seed=3).save(tmp_path / "m"))
    pdf = rows(300, seed=2)
    assert_matches_pandas(model.transform(to_spark(spark, pdf, vector=True)), model, pdf)


def test_pandas_udf_fallback(spark: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ts, "_USE_ARROW_UDF", False)
    model = trained_model(("f", "x", "k"), 6, two_outputs=True)
    pdf = rows(200, seed=4)
    assert_matches_pandas(model.transform(to_spark(spark, pdf)), model, pdf)


def test_model_selection_result_transform_delegates_to_the_best_model(spark: Any) -> None:
    best, other = trained_model(("f", "x"), 5, seed=1), trained_model(("f", "x"), 5, seed=2)
    result = ModelSelectionResult(
        best_model_id="best", best_params={}, best_score=0.0, models={"best": best, "other": other},
        history=pd.DataFrame(), visits=pd.DataFrame(), failures={}, experiment_dir="unused",
    )
    pdf = rows(100)
    assert_matches_pandas(result.transform(to_spark(spark, pdf)), best, pdf)


def test_bad_feature_columns_are_refused(spark: Any) -> None:
    sdf = to_spark(spark, rows(10))
    with pytest.raises(ValueError, match=r"\['nope'\] not found.*\['id', 'f', 'x', 'k', 'name'\]"):
        trained_model(("f", "nope"), 5).transform(sdf)
    with pytest.raises(ValueError, match="feature column 'name'.*string"):
        trained_model(("f", "name"), 5).transform(sdf)
    with pytest.raises(TypeError, match="pandas or a Spark DataFrame"):
        trained_model(("f", "x"), 5).transform([[1.0]])


def test_the_model_is_built_once_per_worker_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Executor side, run in this process: a second batch reuses the cached model."""
    import pickle

    import pyarrow as pa

    import cerebro.frameworks.keras as kf

    model = trained_model(("x",), 1)
    data = pickle.dumps((model.spec(), kf.state_to_bytes(model.keras())))
    import hashlib

    job = ts._Job(("x",), (1,), hashlib.sha256(data).hexdigest(), data)
    builds = []
    real = kf.FRAMEWORK.export
    monkeypatch.setattr(kf.FRAMEWORK, "export", lambda *a: builds.append(1) or real(*a))
    monkeypatch.setattr(ts, "_MODELS", ts.OrderedDict())
    batch = [pa.array(np.linspace(-1, 1, 50))]
    first = ts._predict(batch, job)
    second = ts._predict(batch, job)
    assert len(builds) == 1
    assert first.equals(second)
    np.testing.assert_allclose(
        first.field(0).to_numpy(), model.predict({"x": np.linspace(-1, 1, 50)})[:, 0], rtol=1e-5, atol=1e-6
    )
    bad = ts._Job(("x",), (1,), "0" * 64, data)
    with pytest.raises(CerebroError, match="corrupted"):
        ts._predict(batch, bad)


def test_transform_a_million_rows(spark: Any) -> None:
    """1M rows generated in Spark: nothing collected but aggregates and a few sampled rows."""
    from pyspark.sql import functions as F

    n = 1_000_000
    model = trained_model(("f", "x"), 5, seed=5)
    sdf = spark.range(n).selectExpr(
        "id",
        "array(cast(sin(id) as float), cast(cos(id) as float), cast(sin(id * 0.5) as float), "
        "cast(cos(id * 0.25) as float)) AS f",
        "cast(id % 13 as double) / 13 AS x",
    )
    t = time.perf_counter()
    out = model.transform(sdf)
    agg = out.agg(F.count("*").alias("n"), F.sum("y__output").alias("s")).collect()[0]
    elapsed = time.perf_counter() - t
    log.info("transform of %d rows on Spark local[2]: %.1f s", n, elapsed)

    ids = np.arange(n)
    f = np.stack([np.sin(ids), np.cos(ids), np.sin(ids * 0.5), np.cos(ids * 0.25)], axis=1).astype(np.float32)
    x = (ids % 13) / 13
    expected = model.predict({"f": f, "x": x}, batch_size=8192)[:, 0].astype(np.float64)
    assert agg["n"] == n
    np.testing.assert_allclose(agg["s"], expected.sum(), rtol=1e-5)
    sample = out.where("id % 99991 = 0").select("id", "y__output").orderBy("id").collect()
    assert len(sample) == 11
    np.testing.assert_allclose(
        [r["y__output"] for r in sample], expected[[r["id"] for r in sample]], rtol=1e-4, atol=1e-5
    )
