"""Preparing a Spark DataFrame with Spark (cerebro.data.spark) against the pandas path, on a real local[2] Spark.

The contract: for the same rows, in any order and any Spark partitioning, the
Spark path gives the pandas path's PreparedData and byte-identical partition
files, refuses bad input with the pandas path's messages, and reuses a
prepared copy without writing anything.
"""

from __future__ import annotations

import random
from decimal import Decimal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cerebro.data.prepared as cdata
from cerebro.data import PreparedData, load_partition, prepare_data
from cerebro.storage import LocalStore, layout

pytestmark = pytest.mark.slow

ARGS: dict[str, Any] = dict(num_partitions=3, seed=7)


def spark_frame(spark: Any, pdf: pd.DataFrame, ddl: str, vectors: tuple[str, ...] = ()) -> Any:
    """The rows of ``pdf`` as a Spark DataFrame of schema ``ddl`` (numpy arrays as lists, ``vectors`` as ML vectors)."""
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql import types as T

    schema = spark._parse_ddl(ddl) if isinstance(ddl, str) else ddl
    fields = []
    for f in schema.fields:
        fields.append(T.StructField(f.name, VectorUDT()) if f.name in vectors else f)
    rows = []
    for rec in pdf.itertuples(index=False):
        row = []
        for name, value in zip(pdf.columns, rec):
            if name in vectors:
                value = None if value is None else Vectors.dense([float(v) for v in value])
            elif isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, np.generic):
                value = value.item()
            row.append(value)
        rows.append(tuple(row))
    return spark.createDataFrame(rows, T.StructType(fields))


def shuffled(sdf: Any, parts: int = 7, seed: int = 3) -> Any:
    """The same rows in another order and partitioning."""
    from pyspark.sql import functions as F

    return sdf.orderBy(F.rand(seed)).repartition(parts)


def assert_identical(store_a: LocalStore, a: PreparedData, store_b: LocalStore, b: PreparedData) -> None:
    """Same PreparedData, and the same partition files: equal tables and equal bytes."""
    assert a == b
    for split in layout.SPLITS:
        for p in range(a.num_partitions):
            path = layout.data_part(a.key, split, p)
            ta = pq.read_table(store_a.local_path(path))
            tb = pq.read_table(store_b.local_path(path))
            assert ta.schema.equals(tb.schema)
            assert ta.equals(tb), (split, p)
            assert store_a.read_bytes(path) == store_b.read_bytes(path), (split, p)


def make_rows(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "pixels": list(rng.standard_normal((n, 6)).astype(np.float32)),
            "vec": list(rng.standard_normal((n, 3))),
            "x": rng.standard_normal(n),
            "k": rng.integers(-5, 5, n).astype(np.int32),
            "flag": rng.random(n) < 0.5,
            "rid": np.arange(n, dtype=np.int64),
            "y": rng.standard_normal(n),
            "ivec": list(rng.integers(0, 9, (n, 2))),
            "is_val": rng.random(n) < 0.3,
            "name": ["abc"] * n,
        }
    )


DDL = (
    "pixels array<float>, vec array<double>, x double, k int, flag boolean, rid long, y double, "
    "ivec array<bigint>, is_val boolean, name string"
)

SHAPES = [
    ("scalars", dict(feature_columns=["x", "k", "flag"], label_columns="rid")),
    ("array<float> and scalar", dict(feature_columns=["pixels", "x"], label_columns="rid")),
    ("vector, float label", dict(feature_columns=["vec", "k"], label_columns="y")),
    ("validation column", dict(feature_columns=["pixels"], label_columns="rid", validation="is_val")),
    ("several labels", dict(feature_columns=["x", "vec"], label_columns=["rid", "y", "ivec", "flag"])),
]


@pytest.fixture(scope="module")
def frames(spark: Any) -> tuple[pd.DataFrame, Any]:
    pdf = make_rows(600)
    return pdf, spark_frame(spark, pdf, DDL, vectors=("vec",))


@pytest.mark.parametrize("case", SHAPES, ids=[c[0] for c in SHAPES])
def test_spark_path_equals_pandas_path(case: tuple[str, dict[str, Any]], frames: Any, tmp_path: Path) -> None:
    _, kw = case
    pdf, sdf = frames
    pstore, sstore = LocalStore(tmp_path / "p"), LocalStore(tmp_path / "s")
    expected = prepare_data(pdf, pstore, **ARGS, **kw)
    got = prepare_data(shuffled(sdf), sstore, **ARGS, **kw)
    assert not got.reused
    assert_identical(pstore, expected, sstore, got)
    # The workers' view is the same too.
    for split in layout.SPLITS:
        a = load_partition(pstore, expected, split, 1)
        b = load_partition(sstore, got, split, 1)
        for name in a.features:
            np.testing.assert_array_equal(a.features[name], b.features[name])
        for name in a.labels:
            np.testing.assert_array_equal(a.labels[name], b.labels[name])


def test_many_batches_row_groups_and_partitionings_give_the_same_files(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small Arrow batches (bucket runs cut across batches), several row groups per file, any partitioning."""
    pdf = make_rows(3000, seed=1)
    sdf = spark_frame(spark, pdf, DDL, vectors=("vec",))
    # Row groups of 100 rows (a function of the schema, computed on the driver for both paths).
    monkeypatch.setattr(cdata, "_MIN_GROUP_ROWS", 1)
    monkeypatch.setattr(cdata, "_ROW_GROUP_BYTES", 100 * (6 * 4 + 4 + 8))
    kw = dict(feature_columns=["pixels", "x"], label_columns="rid", num_partitions=4, seed=11)
    pstore = LocalStore(tmp_path / "p")
    expected = prepare_data(pdf, pstore, **kw)
    path = layout.data_part(expected.key, "train", 0)
    assert pq.ParquetFile(pstore.local_path(path)).num_row_groups > 3
    old = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "37")
    try:
        for i, frame in enumerate((sdf.coalesce(1), shuffled(sdf, parts=5, seed=4))):
            sstore = LocalStore(tmp_path / f"s{i}")
            assert_identical(pstore, expected, sstore, prepare_data(frame, sstore, **kw))
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", old)


def test_empty_validation_partitions_are_written_like_the_pandas_path(frames: Any, tmp_path: Path) -> None:
    pdf, sdf = frames
    kw = dict(feature_columns=["x"], label_columns="rid", validation=0.002, num_partitions=4, seed=1)
    pstore, sstore = LocalStore(tmp_path / "p"), LocalStore(tmp_path / "s")
    expected = prepare_data(pdf, pstore, **kw)
    assert 0 in expected.val_rows
    assert_identical(pstore, expected, sstore, prepare_data(shuffled(sdf), sstore, **kw))


def files_with_mtimes(root: Path) -> dict[str, int]:
    return {str(f.relative_to(root)): f.stat().st_mtime_ns for f in root.rglob("*")}


def test_prepared_data_is_reused_without_a_write_job(
    spark: Any, frames: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cerebro.data.spark as ds

    pdf, sdf = frames
    kw = dict(feature_columns=["pixels", "x"], label_columns="rid", **ARGS)
    store = LocalStore(tmp_path / "s")
    first = prepare_data(sdf, store, **kw)
    before = files_with_mtimes(tmp_path / "s")
    time.sleep(0.01)

    def no_write(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the second prepare must not run the writing pass")

    monkeypatch.setattr(ds, "_write", no_write)
    sc = spark.sparkContext
    sc.setJobGroup("cerebro-reuse-test", "second prepare")
    try:
        second = prepare_data(sdf.repartition(3), store, **kw)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    jobs = sc.statusTracker().getJobIdsForGroup("cerebro-reuse-test")
    assert second.reused and not first.reused
    assert second.key == first.key
    assert files_with_mtimes(tmp_path / "s") == before
    # The validation scan only (AQE may run its shuffle as a job of its own).
    assert 1 <= len(jobs) <= 2, jobs
    # The pandas path finds the Spark path's copy too: same content key.
    assert prepare_data(pdf, store, **kw).reused


def test_a_dataframe_that_changes_between_passes_is_refused(spark: Any, tmp_path: Path) -> None:
    from pyspark.sql import functions as F

    noise = F.udf(lambda: random.random(), "double").asNondeterministic()
    sdf = spark.range(400).select(noise().alias("x"), F.col("id").alias("y"))
    store = LocalStore(tmp_path / "s")
    with pytest.raises(Exception, match="changed between the two passes"):
        prepare_data(sdf, store, feature_columns="x", label_columns="y", **ARGS)
    assert store.listdir("data") == []
    assert list((tmp_path / "s" / "data").iterdir()) == []


# ----------------------------------------------------------------- bad input: the pandas path's messages


def _with(pdf: pd.DataFrame, **cols: Any) -> pd.DataFrame:
    out = pdf.copy()
    for k, v in cols.items():
        out[k] = v
    return out


BASE = make_rows(40, seed=5)
NAN_X = BASE["x"].to_numpy().copy()
NAN_X[[1, 5, 9]] = np.nan
INF_PIXELS = [p.copy() for p in BASE["pixels"]]
INF_PIXELS[0][2] = np.inf
INF_PIXELS[3][0] = -np.inf
NULL_ELEMENT = [p.tolist() for p in BASE["pixels"]]
NULL_ELEMENT[7][1] = None
RAGGED = [p if i % 10 else p[:5] for i, p in enumerate(BASE["pixels"])]
NONE_ROWS = [None if i in (2, 4) else p for i, p in enumerate(BASE["pixels"])]
NONE_VEC = [None if i in (0, 3, 8) else v for i, v in enumerate(BASE["vec"])]
EMPTY = [np.zeros(0, np.float32)] * 40
# object columns: pandas would turn None into NaN in a float column; these are real nulls.
X_NULLS = pd.Series([None if i in (4, 6) else v for i, v in enumerate(BASE["x"])], dtype=object)
RID_NULL = pd.Series([None if i == 3 else i for i in range(40)], dtype=object)
FLAG_NULLS = [None if i % 2 else bool(v) for i, v in enumerate(BASE["is_val"])]

# (id, pandas frame, Spark DDL (None: DDL), prepare arguments). The reference message is the
# pandas path's on the same rows as a pyarrow Table (Arrow names types as Spark's Arrow does).
BAD: list[tuple[str, pd.DataFrame, str | None, dict[str, Any]]] = [
    ("unknown feature", BASE, None, dict(feature_columns=["x", "nope"])),
    ("unknown validation column", BASE, None, dict(validation="held_out")),
    ("string feature", BASE, None, dict(feature_columns=["name"])),
    ("decimal feature", _with(BASE, x=[Decimal("1.25")] * 40), DDL.replace("x double", "x decimal(10,2)"),
     dict(feature_columns=["x"])),
    ("NaN scalar", _with(BASE, x=NAN_X), None, {}),
    ("null scalars", _with(BASE, x=X_NULLS), None, {}),
    ("NaN before a string column", _with(BASE, x=NAN_X), None, dict(feature_columns=["x", "name"])),
    ("inf in arrays", _with(BASE, pixels=INF_PIXELS), None, {}),
    ("null array element", _with(BASE, pixels=NULL_ELEMENT), None, {}),
    ("null array rows", _with(BASE, pixels=NONE_ROWS), None, {}),
    ("null vectors", _with(BASE, vec=NONE_VEC), None, dict(feature_columns=["vec"])),
    ("ragged arrays", _with(BASE, pixels=RAGGED), None, {}),
    ("empty arrays", _with(BASE, pixels=EMPTY), None, {}),
    ("null label", _with(BASE, rid=RID_NULL), None, {}),
    ("validation column not boolean", BASE, None, dict(validation="y")),
    ("validation column int", BASE, None, dict(validation="k")),
    ("validation column nulls", _with(BASE, is_val=FLAG_NULLS), None, dict(validation="is_val")),
    ("validation column no True", _with(BASE, is_val=[False] * 40), None, dict(validation="is_val")),
    ("too few training rows", BASE.iloc[:10], None, dict(num_partitions=9)),
    ("no rows", BASE.iloc[:0], None, {}),
    ("no rows, string column", BASE.iloc[:0], None, dict(feature_columns=["name"])),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_gives_the_pandas_paths_message(case: Any, spark: Any, tmp_path: Path) -> None:
    from pyspark.sql.pandas.types import to_arrow_schema

    _, pdf, ddl, kw = case
    ddl = ddl or DDL
    args = dict(feature_columns=["pixels", "x"], label_columns="rid", **ARGS)
    args.update(kw)
    schema = spark._parse_ddl(ddl)
    vectors = ("vec",) if "vec" in list(args["feature_columns"]) else ()
    sdf = spark_frame(spark, pdf, schema, vectors=vectors)
    # The reference: the same rows as an Arrow table of the Spark schema (vectors as float64 arrays).
    table = pa.Table.from_pandas(pdf, schema=to_arrow_schema(schema), preserve_index=False)
    with pytest.raises(ValueError) as expected:
        prepare_data(table, LocalStore(tmp_path / "ref"), **args)
    store_dir = tmp_path / "s"
    with pytest.raises(ValueError) as got:
        prepare_data(shuffled(sdf, parts=3), LocalStore(store_dir), **args)
    assert str(got.value) == str(expected.value)
    assert list(store_dir.rglob("*")) == []


def test_duplicate_columns_are_refused_like_the_pandas_path(spark: Any, tmp_path: Path) -> None:
    pdf = BASE[["x", "rid", "k"]].set_axis(["x", "rid", "x"], axis=1)
    rows = [(float(x), int(r), int(k)) for x, r, k in BASE[["x", "rid", "k"]].itertuples(index=False)]
    sdf = spark.createDataFrame(rows, "x double, rid long, x int")
    kw = dict(feature_columns="x", label_columns="rid", **ARGS)
    with pytest.raises(ValueError) as expected:
        prepare_data(pdf, LocalStore(tmp_path / "p"), **kw)
    with pytest.raises(ValueError) as got:
        prepare_data(sdf, LocalStore(tmp_path / "s"), **kw)
    assert str(got.value) == str(expected.value)
