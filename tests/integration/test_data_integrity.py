"""Prepared data is verified, not trusted: the manifest's checksums and label statistics, corruption
found by ``load_partition`` (changed labels, dropped rows, a truncated file), and re-preparation.

Tampering rewrites a partition file as valid Parquet, padded to its original size where said, so
that only the checksum (not the driver's cheap size check) can tell.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cerebro.data import PreparedData, PreparedDataCorrupted, load_partition, prepare_data
from cerebro.datasets import digits_frame
from cerebro.errors import CerebroError
from cerebro.storage import LocalStore, layout

P = 2
ARGS: dict[str, Any] = dict(feature_columns="features", label_columns="label", num_partitions=P, seed=7)


@pytest.fixture(scope="module")
def digits() -> pd.DataFrame:
    return digits_frame()


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def sha256_of(store: LocalStore, path: str) -> str:
    return hashlib.sha256(store.read_bytes(path)).hexdigest()


def load_all(store: LocalStore, p: PreparedData) -> dict[tuple[str, int], Any]:
    return {(s, i): load_partition(store, p, s, i) for s in layout.SPLITS for i in range(p.num_partitions)}


def assert_files_match_manifest(store: LocalStore, p: PreparedData) -> None:
    manifest = PreparedData.from_dict(store.read_json(layout.data_manifest(p.key)))
    assert manifest.files == p.files
    expected = {layout.data_part(p.key, s, i) for s in layout.SPLITS for i in range(p.num_partitions)}
    assert set(p.files) == expected
    for split in layout.SPLITS:
        for i in range(p.num_partitions):
            path = layout.data_part(p.key, split, i)
            info = p.files[path]
            assert info["sha256"] == sha256_of(store, path)
            assert info["bytes"] == store.file_size(path)
            assert info["rows"] == (p.train_rows if split == "train" else p.val_rows)[i]
            assert info["rows"] == pq.ParquetFile(store.local_path(path)).metadata.num_rows


def _encode(table: pa.Table, pad: int) -> bytes:
    out = pa.BufferOutputStream()
    writer = pq.ParquetWriter(out, table.schema, compression="zstd")
    writer.write_table(table)
    if pad:
        writer.add_key_value_metadata({"pad": "x" * pad})
    writer.close()
    return out.getvalue().to_pybytes()


def rewrite(store: LocalStore, path: str, table: pa.Table, same_size: bool = True) -> None:
    """Replace the file at ``path`` by ``table`` as valid Parquet, padded to the file's size if ``same_size``."""
    full = store.local_path(path)
    size = os.path.getsize(full)
    data = _encode(table, 0)
    if same_size:
        assert len(data) < size, "the zstd rewrite is expected to be smaller than the original"
        pad = size - len(data)
        for _ in range(10):
            data = _encode(table, pad)
            if len(data) == size:
                break
            pad += size - len(data)
        assert len(data) == size
    with open(full, "wb") as fh:
        fh.write(data)
    # Still valid Parquet of the same schema: the old loader read it without a word.
    assert pq.read_table(pa.BufferReader(data)).schema.equals(table.schema)


def flip_labels(store: LocalStore, path: str, count: int = 50, same_size: bool = True) -> None:
    table = pq.read_table(store.local_path(path))
    labels = table.column("label").to_numpy().copy()
    labels[:count] = (labels[:count] + 1) % 10
    index = table.schema.get_field_index("label")
    rewrite(store, path, table.set_column(index, table.schema.field("label"), pa.array(labels)), same_size)


def drop_half(store: LocalStore, path: str) -> None:
    table = pq.read_table(store.local_path(path))
    rewrite(store, path, table.slice(0, table.num_rows // 2))


def truncate(store: LocalStore, path: str) -> None:
    full = store.local_path(path)
    with open(full, "r+b") as fh:
        fh.truncate(os.path.getsize(full) // 2)


def corruption(store: LocalStore, p: PreparedData, split: str, partition: int, **kw: Any) -> str:
    with pytest.raises(PreparedDataCorrupted) as info:
        load_partition(store, p, split, partition, **kw)
    message = str(info.value)
    path = layout.data_part(p.key, split, partition)
    assert f"{store.url}/{path}" in message
    assert "prepares it again" in message
    return message


# ----------------------------------------------------------------- the manifest


def test_manifest_records_checksums_and_label_stats_on_digits(store: LocalStore, digits: pd.DataFrame) -> None:
    p = prepare_data(digits, store, **ARGS)
    assert p.label_stats == {"label": {"min": 0.0, "max": 9.0, "integral": True, "width": 1}}
    assert_files_match_manifest(store, p)
    raw = store.read_json(layout.data_manifest(p.key))
    assert raw["label_stats"] == {"label": {"min": 0.0, "max": 9.0, "integral": True, "width": 1}}
    back = PreparedData.from_dict(json.loads(json.dumps(p.to_dict())))
    assert back == p
    assert type(back.label_stats["label"]["min"]) is float and type(back.label_stats["label"]["width"]) is int
    again = prepare_data(digits.sample(frac=1.0, random_state=3), store, **ARGS)
    assert again.reused and again.files == p.files and again.label_stats == p.label_stats


def test_label_stats_of_float_array_and_boolean_labels(store: LocalStore) -> None:
    n = 60
    rng = np.random.default_rng(0)
    df = pd.DataFrame({
        "x": rng.standard_normal(n),
        "y": np.linspace(-1.5, 2.25, n),
        "whole": np.arange(n, dtype=np.float64) - 7.0,
        "pair": list(np.stack([np.arange(n), -np.arange(n)], axis=1)),
        "flag": np.arange(n) % 3 == 0,
    })
    p = prepare_data(df, store, feature_columns="x", label_columns=["y", "whole", "pair", "flag"],
                     num_partitions=3, seed=1)
    assert p.label_stats == {
        "y": {"min": -1.5, "max": 2.25, "integral": False, "width": 1},
        "whole": {"min": -7.0, "max": float(n - 8), "integral": True, "width": 1},
        "pair": {"min": float(-(n - 1)), "max": float(n - 1), "integral": True, "width": 2},
        "flag": {"min": 0.0, "max": 1.0, "integral": True, "width": 1},
    }
    assert list(p.to_dict()["label_stats"]) == ["y", "whole", "pair", "flag"]
    assert PreparedData.from_dict(p.to_dict()) == p


def test_an_old_manifest_reads_with_empty_files_and_stats_and_is_prepared_again(
    store: LocalStore, digits: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    p = prepare_data(digits, store, **ARGS)
    old = p.to_dict()
    del old["files"], old["label_stats"]
    parsed = PreparedData.from_dict(old)
    assert parsed.files == {} and parsed.label_stats == {}
    store.write_json(layout.data_manifest(p.key), old)
    # A worker given such a description still checks the row counts.
    assert load_partition(store, parsed, "train", 0).num_rows == p.train_rows[0]
    with caplog.at_level(logging.WARNING, logger="cerebro.data.prepared"):
        again = prepare_data(digits, store, **ARGS)
    assert not again.reused
    assert "records no checksums" in caplog.text
    assert again == p
    assert_files_match_manifest(store, again)


# ----------------------------------------------------------------- load_partition refuses what does not match


def test_changed_labels_are_refused(store: LocalStore, digits: pd.DataFrame) -> None:
    p = prepare_data(digits, store, **ARGS)
    path = layout.data_part(p.key, "train", 1)
    expected = p.files[path]
    flip_labels(store, path)
    assert store.file_size(path) == expected["bytes"]  # only the checksum can tell
    message = corruption(store, p, "train", 1)
    assert f"sha256 {expected['sha256'][:16]}" in message
    assert f"sha256 {sha256_of(store, path)[:16]}" in message
    assert f"{expected['rows']} rows" in message
    # The copy is marked: every partition of it is refused from now on, naming the file found changed.
    message = corruption(store, p, "train", 1)
    with pytest.raises(PreparedDataCorrupted, match="train/part-00001.parquet"):
        load_partition(store, p, "val", 0)
    assert not store.exists(layout.data_manifest(p.key))


def test_dropped_rows_are_refused(store: LocalStore, digits: pd.DataFrame) -> None:
    p = prepare_data(digits, store, **ARGS)
    path = layout.data_part(p.key, "val", 0)
    rows = p.val_rows[0]
    drop_half(store, path)
    assert store.file_size(path) == p.files[path]["bytes"]
    message = corruption(store, p, "val", 0)
    assert f"expected sha256 {p.files[path]['sha256'][:16]}..., {rows} rows" in message
    assert f"{rows // 2} rows" in message


def test_dropped_rows_are_refused_without_checksums_too(store: LocalStore, digits: pd.DataFrame) -> None:
    p = prepare_data(digits, store, **ARGS)
    old = PreparedData.from_dict({k: v for k, v in p.to_dict().items() if k != "files"})
    drop_half(store, layout.data_part(p.key, "train", 0))
    message = corruption(store, old, "train", 0)
    assert f"expected {p.train_rows[0]} rows" in message and f", {p.train_rows[0] // 2} rows" in message


def test_a_truncated_file_is_a_clear_error_not_a_raw_arrow_error(store: LocalStore, digits: pd.DataFrame) -> None:
    p = prepare_data(digits, store, **ARGS)
    path = layout.data_part(p.key, "train", 0)
    truncate(store, path)
    # The driver's sample read (first rows only): the size does not match.
    message = corruption(store, p, "train", 0, max_rows=8)
    assert f"{p.files[path]['bytes']} bytes" in message and f"{p.files[path]['bytes'] // 2} bytes" in message
    try:
        load_partition(store, p, "train", 0)
    except PreparedDataCorrupted as exc:
        assert not isinstance(exc, pa.ArrowException)
    else:  # pragma: no cover - the failure being tested for
        pytest.fail("a truncated partition was loaded")


def test_a_truncated_file_without_checksums_is_a_clear_error(store: LocalStore, digits: pd.DataFrame) -> None:
    p = prepare_data(digits, store, **ARGS)
    old = PreparedData.from_dict({k: v for k, v in p.to_dict().items() if k != "files"})
    truncate(store, layout.data_part(p.key, "val", 1))
    message = corruption(store, old, "val", 1)
    assert "not readable" in message and "ArrowInvalid" in message


def test_the_sample_read_still_works_and_matches_the_full_read(store: LocalStore, digits: pd.DataFrame) -> None:
    p = prepare_data(digits, store, **ARGS)
    sample = load_partition(store, p, "train", 0, max_rows=8)
    full = load_partition(store, p, "train", 0)
    assert sample.num_rows == 8
    np.testing.assert_array_equal(sample.features["features"], full.features["features"][:8])
    np.testing.assert_array_equal(sample.labels["label"], full.labels["label"][:8])


# ----------------------------------------------------------------- re-preparation


@pytest.mark.parametrize("tamper", ["labels-same-size", "labels-other-size", "rows-same-size", "truncated", "deleted"])
def test_a_new_prepare_replaces_a_corrupted_copy(
    tamper: str, store: LocalStore, digits: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    p = prepare_data(digits, store, **ARGS)
    original = load_all(store, p)
    path = layout.data_part(p.key, "train", 1)
    if tamper == "labels-same-size":
        flip_labels(store, path)
        corruption(store, p, "train", 1)  # a worker found it: the copy is marked
    elif tamper == "labels-other-size":
        flip_labels(store, path, same_size=False)  # the driver's size check finds it
    elif tamper == "rows-same-size":
        drop_half(store, path)
        corruption(store, p, "train", 1)
    elif tamper == "truncated":
        truncate(store, path)
    else:
        os.remove(store.local_path(path))
    with caplog.at_level(logging.WARNING, logger="cerebro.data.prepared"):
        again = prepare_data(digits, store, **ARGS)
    assert not again.reused
    assert "train/part-00001.parquet" in caplog.text
    assert again == p
    assert_files_match_manifest(store, again)
    assert not store.exists(f"{layout.data_dir(p.key)}/_corrupted.json")
    assert store.listdir("data") == [p.key]
    assert [n for n in os.listdir(store.local_path("data")) if n.startswith(".")] == []
    for key, part in load_all(store, again).items():
        for name in part.features:
            np.testing.assert_array_equal(part.features[name], original[key].features[name])
        for name in part.labels:
            np.testing.assert_array_equal(part.labels[name], original[key].labels[name])
    assert prepare_data(digits, store, **ARGS).reused


def test_a_dead_writers_copy_is_kept_only_if_it_is_the_same_bytes(store: LocalStore, digits: pd.DataFrame) -> None:
    p = prepare_data(digits, store, **ARGS)
    path = layout.data_part(p.key, "val", 1)
    store.delete(layout.data_manifest(p.key))  # a writer that renamed its directory, then died
    flip_labels(store, path)  # ... and a file that is not what it would have written
    again = prepare_data(digits, store, **ARGS)
    assert not again.reused and again == p
    assert_files_match_manifest(store, again)


# ----------------------------------------------------------------- Spark


@pytest.mark.slow
def test_the_spark_path_records_the_same_checksums_and_label_stats(
    spark: Any, digits: pd.DataFrame, tmp_path: Path
) -> None:
    rows = [(f.tolist(), int(label)) for f, label in zip(digits["features"], digits["label"])]
    sdf = spark.createDataFrame(rows, "features array<float>, label long").repartition(3)
    pstore, sstore = LocalStore(tmp_path / "p"), LocalStore(tmp_path / "s")
    expected = prepare_data(digits, pstore, **ARGS)
    got = prepare_data(sdf, sstore, **ARGS)
    assert not got.reused
    assert got.label_stats == {"label": {"min": 0.0, "max": 9.0, "integral": True, "width": 1}}
    assert got == expected  # files (same bytes, so the same sha256) and label_stats included
    assert_files_match_manifest(sstore, got)
    path = layout.data_part(got.key, "val", 1)
    flip_labels(sstore, path)
    corruption(sstore, got, "val", 1)
    again = prepare_data(sdf, sstore, **ARGS)
    assert not again.reused and again == expected
    assert_files_match_manifest(sstore, again)


# ----------------------------------------------------------------- end to end


@pytest.mark.parametrize("backend", ["inline", pytest.param("local", marks=pytest.mark.slow)])
def test_a_fit_over_tampered_data_fails_naming_the_file(backend: str, store: LocalStore, digits: pd.DataFrame) -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    import cerebro
    from cerebro import GridSearch, LocalBackend, hp_choice
    from cerebro.backends.inline import InlineBackend

    def gen(params: dict) -> Any:
        model = nn.Sequential(nn.Linear(64, 10))
        return cerebro.TorchEstimator(model, torch.optim.SGD(model.parameters(), lr=params["lr"]), "cross_entropy",
                                      metrics=["accuracy"], batch_size=64)

    # LocalBackend: one backend for both fits (its workers died and are started afresh). A fresh
    # InlineBackend per fit: it keeps the ready events of a start that failed.
    local = LocalBackend(2, threads_per_worker=1) if backend == "local" else None

    def search(name: str) -> GridSearch:
        return GridSearch(local or InlineBackend(2), store, gen, {"lr": hp_choice([0.1])}, num_epochs=1,
                          evaluation_metric="accuracy", experiment_name=name, verbose=0)

    # What fit() prepares: the default columns, validation, seed, one partition per worker.
    p = prepare_data(digits, store, feature_columns="features", label_columns="label", validation=0.25,
                     num_partitions=2, seed=2020)
    path = layout.data_part(p.key, "train", 1)
    flip_labels(store, path)
    try:
        with pytest.raises(CerebroError) as info:  # inline: the worker's error; local: the worker died of it
            search("tampered").fit(digits)
        assert f"{store.url}/{path}" in str(info.value)
        assert "does not match its manifest" in str(info.value)
        # The next fit prepares the data again and trains.
        result = search("again").fit(digits)
    finally:
        if local is not None:
            local.close()
    assert result.best_model_id == "model_000"
    assert_files_match_manifest(store, p)
