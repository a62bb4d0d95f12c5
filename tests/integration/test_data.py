"""Integration tests of cerebro.data: real DataFrames, real Parquet files, a real LocalStore."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cerebro.data import PartitionData, PreparedData, load_partition, prepare_data, row_hashes
from cerebro.errors import CerebroError
from cerebro.storage import LocalStore, layout

FEATURES = ("pixels", "x", "rid_f")
LABELS = ("rid",)


def make_df(n: int = 200, d: int = 8, seed: int = 0) -> pd.DataFrame:
    """Rows identified by ``rid`` (a label) mirrored in ``rid_f`` (a feature) to check alignment."""
    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((n, d)).astype(np.float32)
    return pd.DataFrame(
        {
            "pixels": list(pixels),
            "x": rng.standard_normal(n),
            "rid_f": np.arange(n, dtype=np.float64),
            "rid": np.arange(n, dtype=np.int64),
            "is_val": rng.random(n) < 0.3,
            "name": [f"row{i}" for i in range(n)],
        }
    )


def prep(df: Any, store: LocalStore, **kw: Any) -> PreparedData:
    args: dict[str, Any] = dict(feature_columns=FEATURES, label_columns=LABELS, num_partitions=3, seed=7)
    args.update(kw)
    return prepare_data(df, store, **args)


def load_all(store: LocalStore, p: PreparedData) -> dict[tuple[str, int], PartitionData]:
    return {(s, i): load_partition(store, p, s, i) for s in ("train", "val") for i in range(p.num_partitions)}


def files_with_mtimes(root: Path) -> dict[str, int]:
    return {str(f.relative_to(root)): f.stat().st_mtime_ns for f in root.rglob("*")}


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def assert_same_partitions(a: dict[tuple[str, int], PartitionData], b: dict[tuple[str, int], PartitionData]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].num_rows == b[k].num_rows
        for name in a[k].features:
            np.testing.assert_array_equal(a[k].features[name], b[k].features[name])
        for name in a[k].labels:
            np.testing.assert_array_equal(a[k].labels[name], b[k].labels[name])


# ----------------------------------------------------------------- data identity


def test_same_rows_any_order_any_format_give_the_same_partitions(tmp_path: Path) -> None:
    df = make_df()
    stores = [LocalStore(tmp_path / f"s{i}") for i in range(5)]
    base = prep(df, stores[0])
    shuffled = df.sample(frac=1.0, random_state=1).reset_index(drop=True)
    other = prep(shuffled, stores[1])

    parquet_file = tmp_path / "in.parquet"
    df.sample(frac=1.0, random_state=2).to_parquet(parquet_file)
    from_file = prep(str(parquet_file), stores[2])

    # A directory of several Parquet files, as Spark writes it (with a _SUCCESS marker).
    parquet_dir = tmp_path / "in_dir"
    parquet_dir.mkdir()
    sh = df.sample(frac=1.0, random_state=3)
    sh.iloc[:77].to_parquet(parquet_dir / "part-0.parquet")
    sh.iloc[77:].to_parquet(parquet_dir / "part-1.parquet")
    (parquet_dir / "_SUCCESS").write_bytes(b"")
    from_dir = prep(parquet_dir, stores[3])

    from_arrow = prep(pa.Table.from_pandas(shuffled), stores[4])

    for p in (other, from_file, from_dir, from_arrow):
        assert p.key == base.key
        assert p.data_hash == base.data_hash
        assert p.train_rows == base.train_rows
        assert p.val_rows == base.val_rows
        assert not p.reused
    reference = load_all(stores[0], base)
    for s, p in zip(stores[1:], (other, from_file, from_dir, from_arrow)):
        assert_same_partitions(reference, load_all(s, p))


def test_partition_files_are_byte_identical_for_shuffled_input(tmp_path: Path) -> None:
    df = make_df(150)
    a, b = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    pa_ = prep(df, a)
    pb = prep(df.iloc[::-1], b)
    for split in ("train", "val"):
        for i in range(3):
            path = layout.data_part(pa_.key, split, i)
            assert a.read_bytes(path) == b.read_bytes(path)
    assert pb.key == pa_.key


def test_int_and_float_spellings_of_a_feature_hash_alike() -> None:
    ints = np.array([0, 1, -3, 7])
    floats = np.array([-0.0, 1.0, -3.0, 7.0])
    np.testing.assert_array_equal(row_hashes([ints], 5), row_hashes([floats], 5))
    assert not np.array_equal(row_hashes([ints], 5), row_hashes([ints], 6))


def test_row_hashes_depend_on_content_and_position_not_on_row_order() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((100, 4))
    b = rng.integers(0, 3, 100)
    h = row_hashes([a, b], 11)
    perm = rng.permutation(100)
    np.testing.assert_array_equal(row_hashes([a[perm], b[perm]], 11), h[perm])
    assert len(np.unique(h)) == 100
    # Swapping two values inside a row changes its hash.
    swapped = a.copy()
    swapped[:, [0, 1]] = swapped[:, [1, 0]]
    assert np.all(row_hashes([swapped, b], 11) != h)
    # The same values from an Arrow table (arrays as lists) give the same hashes.
    table = pa.table({"a": pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), 4), "b": pa.array(b)})
    np.testing.assert_array_equal(row_hashes(table, 11), h)
    chunked = pa.concat_tables([table.slice(0, 30), table.slice(30)])
    np.testing.assert_array_equal(row_hashes(chunked, 11), h)


# ----------------------------------------------------------------- reuse and keys


def test_second_call_reuses_and_writes_nothing(store: LocalStore, tmp_path: Path) -> None:
    df = make_df()
    first = prep(df, store)
    root = tmp_path / "store"
    before = files_with_mtimes(root)
    time.sleep(0.01)
    second = prep(df.sample(frac=1.0, random_state=5), store)
    assert second.reused and not first.reused
    assert files_with_mtimes(root) == before
    assert second.key == first.key
    assert PreparedData.from_dict(second.to_dict()) == second
    manifest = store.read_json(layout.data_manifest(first.key))
    assert PreparedData.from_dict(manifest).key == first.key


def test_different_seed_partitions_or_split_give_different_keys(store: LocalStore) -> None:
    df = make_df()
    base = prep(df, store)
    keys = {
        base.key,
        prep(df, store, seed=8).key,
        prep(df, store, num_partitions=4).key,
        prep(df, store, validation=0.3).key,
        prep(df, store, validation="is_val").key,
        prep(df, store, feature_columns=("x", "pixels", "rid_f")).key,
        prep(df.iloc[1:], store).key,
    }
    assert len(keys) == 7
    assert sorted(store.listdir("data")) == sorted(keys)


def test_seed_changes_the_order(store: LocalStore) -> None:
    df = make_df()
    a = load_partition(store, prep(df, store, seed=1), "train", 0).labels["rid"]
    b = load_partition(store, prep(df, store, seed=2), "train", 0).labels["rid"]
    assert not np.array_equal(a, b)


def test_lost_publish_race_discards_the_copy_and_completes_the_manifest(store: LocalStore) -> None:
    df = make_df()
    p = prep(df, store)
    # Simulate a writer that renamed its directory but died before writing the manifest.
    store.delete(layout.data_manifest(p.key))
    again = prep(df, store)
    assert not again.reused
    assert again.key == p.key
    assert store.exists(layout.data_manifest(p.key))
    assert store.listdir("data") == [p.key]
    assert [n for n in os.listdir(store.local_path("data")) if n.startswith(".")] == []


def test_concurrent_prepares_publish_one_copy(store: LocalStore) -> None:
    df = make_df(400)
    results: list[PreparedData] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(prep(df, store))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({r.key for r in results}) == 1
    assert os.listdir(store.local_path("data")) == [results[0].key]
    load_all(store, results[0])


def test_a_failed_write_leaves_nothing_behind(store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = pq.write_table

    def flaky(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        real(*args, **kwargs)

    monkeypatch.setattr(pq, "write_table", flaky)
    with pytest.raises(OSError, match="disk full"):
        prep(make_df(), store)
    monkeypatch.undo()
    assert os.listdir(store.local_path("data")) == []
    p = prep(make_df(), store)
    assert not p.reused


# ----------------------------------------------------------------- splitting


@pytest.mark.parametrize("n,parts", [(200, 3), (1000, 7), (31, 4), (5, 1)])
def test_partitions_are_balanced_and_cover_every_row_once(tmp_path: Path, n: int, parts: int) -> None:
    store = LocalStore(tmp_path / "s")
    df = make_df(n)
    p = prep(df, store, num_partitions=parts, validation=0.2)
    assert max(p.train_rows) - min(p.train_rows) <= 1
    assert max(p.val_rows) - min(p.val_rows) <= 1
    loaded = load_all(store, p)
    seen = np.concatenate([d.labels["rid"] for d in loaded.values()])
    assert sorted(seen.tolist()) == list(range(n))
    for (split, i), d in loaded.items():
        assert d.num_rows == (p.train_rows if split == "train" else p.val_rows)[i]


@pytest.mark.parametrize("n,fraction,expected", [(1000, 0.2, 200), (200, 0.25, 50), (10, 0.01, 1), (7, 0.5, 4)])
def test_validation_fraction_is_exact(tmp_path: Path, n: int, fraction: float, expected: int) -> None:
    store = LocalStore(tmp_path / "s")
    p = prep(make_df(n), store, validation=fraction, num_partitions=2)
    assert sum(p.val_rows) == expected
    assert sum(p.train_rows) == n - expected


def test_boolean_validation_column_is_honoured(store: LocalStore) -> None:
    df = make_df(300)
    p = prep(df, store, validation="is_val")
    loaded = load_all(store, p)
    val_ids = np.concatenate([loaded[("val", i)].labels["rid"] for i in range(3)])
    train_ids = np.concatenate([loaded[("train", i)].labels["rid"] for i in range(3)])
    assert set(val_ids.tolist()) == set(df.loc[df.is_val, "rid"].tolist())
    assert set(train_ids.tolist()) == set(df.loc[~df.is_val, "rid"].tolist())
    assert "is_val" not in loaded[("train", 0)].features


def test_nullable_boolean_validation_column(store: LocalStore) -> None:
    df = make_df(100)
    df["flag"] = df["is_val"].astype("boolean")
    a = prep(df, store, validation="flag")
    b = prep(df, store, validation="is_val")
    # Same rows, same flags: the hash and the split are the same, the key names the column.
    assert a.data_hash == b.data_hash
    assert a.val_rows == b.val_rows


def test_fewer_validation_rows_than_partitions_writes_empty_val_partitions(store: LocalStore) -> None:
    p = prep(make_df(20), store, validation=0.1, num_partitions=4)
    assert p.val_rows == (1, 1, 0, 0)
    empty = load_partition(store, p, "val", 3)
    assert empty.num_rows == 0
    assert empty.features["pixels"].shape == (0, 8)
    assert empty.features["pixels"].dtype == np.float32
    assert empty.features["x"].shape == (0,)
    assert empty.labels["rid"].dtype == np.int64


# ----------------------------------------------------------------- loading


def test_load_partition_dtypes_shapes_and_row_alignment(store: LocalStore) -> None:
    df = make_df(250, d=5)
    df["y_float"] = df["x"] * 2.0
    df["y_bool"] = df["rid"] % 2 == 0
    df["y_vec"] = [np.array([i, -i], dtype=np.int32) for i in range(250)]
    p = prep(df, store, label_columns=("rid", "y_float", "y_bool", "y_vec"))
    assert p.feature_shapes == {"pixels": (5,), "x": (), "rid_f": ()}
    assert p.label_shapes == {"rid": (), "y_float": (), "y_bool": (), "y_vec": (2,)}
    assert p.label_dtypes == {"rid": "int64", "y_float": "float32", "y_bool": "int64", "y_vec": "int64"}
    by_id = df.set_index("rid")
    for (split, i), d in load_all(store, p).items():
        n = d.num_rows
        assert d.features["pixels"].dtype == np.float32 and d.features["pixels"].shape == (n, 5)
        assert d.features["x"].dtype == np.float32 and d.features["x"].shape == (n,)
        assert d.labels["rid"].dtype == np.int64 and d.labels["rid"].shape == (n,)
        assert d.labels["y_float"].dtype == np.float32
        assert d.labels["y_vec"].shape == (n, 2) and d.labels["y_vec"].dtype == np.int64
        ids = d.labels["rid"]
        # Features and labels stay aligned row by row.
        np.testing.assert_array_equal(d.features["rid_f"], ids.astype(np.float32))
        np.testing.assert_array_equal(d.features["pixels"], np.stack(by_id.loc[ids, "pixels"].to_numpy()))
        np.testing.assert_array_equal(d.labels["y_bool"], (ids % 2 == 0).astype(np.int64))
        np.testing.assert_array_equal(d.labels["y_vec"][:, 1], -ids)
        d.features["pixels"][:] = 0  # plain writable arrays


def test_load_partition_rejects_bad_arguments_and_missing_data(store: LocalStore) -> None:
    p = prep(make_df(), store)
    with pytest.raises(ValueError, match="split"):
        load_partition(store, p, "test", 0)
    with pytest.raises(ValueError, match="partition"):
        load_partition(store, p, "train", 3)
    with pytest.raises(ValueError, match="partition"):
        load_partition(store, p, "train", -1)
    store.delete(layout.data_dir(p.key))
    with pytest.raises(CerebroError, match="prepare_data"):
        load_partition(store, p, "train", 0)


def test_load_partition_is_fast(store: LocalStore) -> None:
    rng = np.random.default_rng(1)
    n = 100_000
    df = pd.DataFrame({"f": list(rng.standard_normal((n, 64)).astype(np.float32)), "y": rng.integers(0, 10, n)})
    p = prepare_data(df, store, feature_columns="f", label_columns="y", num_partitions=2, seed=0, validation=0.01)
    assert p.train_rows[0] >= 49_000
    load_partition(store, p, "train", 0)  # warm the page cache
    t = time.perf_counter()
    d = load_partition(store, p, "train", 0)
    elapsed = time.perf_counter() - t
    assert d.features["f"].shape == (p.train_rows[0], 64)
    assert elapsed < 1.0, f"load_partition of 50k x 64 took {elapsed:.2f}s"


def test_digits_realistic(store: LocalStore) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    df = pd.DataFrame({"image": list(digits.data), "digit": digits.target})
    assert len(df) == 1797
    p = prepare_data(df, store, feature_columns=["image"], label_columns=["digit"], num_partitions=4, seed=2020)
    assert p.feature_shapes == {"image": (64,)}
    assert p.label_dtypes == {"digit": "int64"}
    assert sum(p.train_rows) + sum(p.val_rows) == 1797
    assert sum(p.val_rows) == round(0.25 * 1797)
    pairs = {(tuple(img), int(t)) for img, t in zip(digits.data, digits.target)}
    total = 0
    for (split, i), d in load_all(store, p).items():
        assert d.features["image"].shape == (d.num_rows, 64)
        assert d.features["image"].dtype == np.float32
        for img, label in zip(d.features["image"], d.labels["digit"]):
            assert (tuple(img.astype(np.float64)), int(label)) in pairs
        total += d.num_rows
    assert total == 1797
    again = prepare_data(
        df.sample(frac=1.0, random_state=0), store, feature_columns=["image"], label_columns=["digit"],
        num_partitions=4, seed=2020,
    )
    assert again.reused and again.key == p.key


def test_prepared_data_json_roundtrip(store: LocalStore) -> None:
    p = prep(make_df(), store)
    d = json.loads(json.dumps(p.to_dict()))
    assert PreparedData.from_dict(d) == p
    assert PreparedData.from_dict(d).feature_columns == FEATURES


# ----------------------------------------------------------------- bad input


def _with(df: pd.DataFrame, **cols: Any) -> pd.DataFrame:
    out = df.copy()
    for k, v in cols.items():
        out[k] = v
    return out


BASE = make_df(40)
NAN_X = BASE["x"].to_numpy().copy()
NAN_X[[1, 5, 9]] = np.nan
INF_PIXELS = [p.copy() for p in BASE["pixels"]]
INF_PIXELS[0][2] = np.inf
INF_PIXELS[3][0] = -np.inf
RAGGED = [p if i % 10 else p[:7] for i, p in enumerate(BASE["pixels"])]
NONE_ROWS = [None if i in (2, 4) else p for i, p in enumerate(BASE["pixels"])]
OBJ_LABEL = pd.Series([None if i == 3 else i for i in range(40)], dtype=object)

BAD_INPUTS: list[tuple[str, pd.DataFrame, dict[str, Any], list[str]]] = [
    ("empty features", BASE, dict(feature_columns=[]), ["feature_columns"]),
    ("non-str feature", BASE, dict(feature_columns=["x", 3]), ["feature_columns", "3"]),
    ("set of features", BASE, dict(feature_columns={"x", "rid_f"}), ["feature_columns", "set"]),
    ("duplicate feature", BASE, dict(feature_columns=["x", "x"]), ["feature_columns", "'x'", "more than once"]),
    ("empty labels", BASE, dict(label_columns=()), ["label_columns"]),
    ("overlap", BASE, dict(feature_columns=["x", "rid"]), ["'rid'", "feature_columns", "label_columns"]),
    ("unknown feature", BASE, dict(feature_columns=["x", "nope"]),
     ["feature_columns", "'nope'", "'pixels'", "'is_val'", "'name'"]),
    ("unknown label", BASE, dict(label_columns="target"), ["label_columns", "'target'", "'rid'"]),
    ("string feature", BASE, dict(feature_columns=["name"]), ["'name'", "object", "row0"]),
    ("datetime feature", _with(BASE, when=pd.date_range("2020-01-01", periods=40)),
     dict(feature_columns=["when"]), ["'when'", "datetime64"]),
    ("category feature", _with(BASE, cat=pd.Categorical(["a", "b"] * 20)), dict(feature_columns=["cat"]),
     ["'cat'", "category"]),
    ("ragged arrays", _with(BASE, pixels=RAGGED), {}, ["'pixels'", "different lengths", "8 (36 rows)", "7 (4 rows)"]),
    ("arrays of strings", _with(BASE, pixels=[["a", "b"]] * 40), {}, ["'pixels'"]),
    ("nested arrays", _with(BASE, pixels=[[[1.0, 2.0]]] * 40), {}, ["'pixels'"]),
    ("2-d array elements", _with(BASE, pixels=[np.zeros((2, 2))] * 40), {}, ["'pixels'"]),
    ("NaN scalar", _with(BASE, x=NAN_X), {}, ["feature column 'x'", "3 rows", "NaN"]),
    ("inf in arrays", _with(BASE, pixels=INF_PIXELS), {}, ["'pixels'", "2 rows", "infinite"]),
    ("None array rows", _with(BASE, pixels=NONE_ROWS), {}, ["'pixels'", "2 rows"]),
    ("None label", _with(BASE, rid=OBJ_LABEL), {}, ["label column 'rid'", "1 row "]),
    ("nullable int NA", _with(BASE, rid=pd.array([None] + list(range(1, 40)), dtype="Int64")), {},
     ["label column 'rid'", "1 row "]),
    ("validation zero", BASE, dict(validation=0.0), ["validation", "between 0 and 1"]),
    ("validation one", BASE, dict(validation=1), ["validation"]),
    ("validation bool", BASE, dict(validation=True), ["validation", "True"]),
    ("validation list", BASE, dict(validation=[0.2]), ["validation"]),
    ("validation unknown column", BASE, dict(validation="held_out"), ["validation", "'held_out'", "'is_val'"]),
    ("validation non-bool column", _with(BASE, w=BASE["x"] * 2), dict(validation="w"),
     ["validation column 'w'", "float64", "boolean"]),
    ("validation int column", _with(BASE, w=(BASE["rid"] % 2)), dict(validation="w"),
     ["validation column 'w'", "int64", "boolean"]),
    ("validation column is feature", BASE, dict(validation="x"), ["validation column 'x'", "feature_columns"]),
    ("validation column no True", _with(BASE, none=np.zeros(40, dtype=bool)), dict(validation="none"),
     ["'none'", "no True rows"]),
    ("validation column nulls", _with(BASE, f=pd.array([True, None] * 20, dtype="boolean")),
     dict(validation="f"), ["validation column 'f'", "20 rows"]),
    ("too few training rows", BASE.iloc[:10], dict(num_partitions=9), ["8 training rows", "num_partitions=9", "workers"]),
    ("num_partitions zero", BASE, dict(num_partitions=0), ["num_partitions", ">= 1"]),
    ("num_partitions str", BASE, dict(num_partitions="2"), ["num_partitions"]),
    ("num_partitions bool", BASE, dict(num_partitions=True), ["num_partitions"]),
    ("seed float", BASE, dict(seed=1.5), ["seed"]),
    ("no rows", BASE.iloc[:0], {}, ["no rows"]),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_refused_before_anything_is_written(
    case: tuple[str, pd.DataFrame, dict[str, Any], list[str]], tmp_path: Path
) -> None:
    _, df, kw, fragments = case
    store = LocalStore(tmp_path / "store")
    with pytest.raises(ValueError) as info:
        prep(df, store, **kw)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert list((tmp_path / "store").rglob("*")) == []


def test_nan_message_teaches(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    with pytest.raises(ValueError, match=r"feature column 'x' has 3 rows with NaN.*clean or drop them before fit\(\)"):
        prep(_with(BASE, x=NAN_X), store)


def test_bad_parquet_inputs(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    with pytest.raises(ValueError, match="does not exist"):
        prep(str(tmp_path / "missing.parquet"), store)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="Parquet"):
        prep(tmp_path / "junk.parquet", store)
    BASE.to_parquet(tmp_path / "ok.parquet")
    with pytest.raises(ValueError, match="'nope'.*'pixels'"):
        prep(tmp_path / "ok.parquet", store, feature_columns=["nope"])
    assert list((tmp_path / "s").rglob("*")) == []


def test_unsupported_data_and_store_types(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    with pytest.raises(TypeError, match="pandas DataFrame"):
        prep([[1, 2]], store)
    with pytest.raises(TypeError, match="Store"):
        prep(BASE, str(tmp_path))  # type: ignore[arg-type]


def test_bool_and_int_features_are_numeric(store: LocalStore) -> None:
    df = _with(BASE, flag=BASE["rid"] % 3 == 0, count=BASE["rid"].astype(np.uint16))
    p = prep(df, store, feature_columns=("flag", "count", "rid_f"))
    d = load_partition(store, p, "train", 0)
    np.testing.assert_array_equal(d.features["flag"], (d.labels["rid"] % 3 == 0).astype(np.float32))
    np.testing.assert_array_equal(d.features["count"], d.labels["rid"].astype(np.float32))


def test_hashing_is_fast() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200_000, 64))
    t = time.perf_counter()
    row_hashes([x], 1)
    assert time.perf_counter() - t < 2.0
