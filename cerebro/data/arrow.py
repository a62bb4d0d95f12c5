"""Data preparation: a DataFrame or Parquet data set -> validated, split, partitioned Parquet in a Store.

Model hopper parallelism moves models, never data: :func:`prepare_data` is
called once per experiment (by the driver, before any worker starts), splits
the rows into one training and one validation partition per worker and writes
them to the store; each worker then calls
:func:`cerebro.data.prepared.load_partition` once for its own partitions and
keeps them in memory for the whole experiment.

This module is the pandas / pyarrow / Parquet path, computed in this process:
the columns are validated and converted (:mod:`cerebro.data.columns`), every
row is hashed (:func:`cerebro.data.hashing.hash_pair`), the rows are sorted by
hash, split and dealt round-robin to the partitions, and the files are
published (:mod:`cerebro.data.prepared`). A Spark DataFrame is handed to
:mod:`cerebro.data.spark`, which applies the same rules in Spark's executors
and writes the same output, byte for byte.

Everything is validated before anything is written: a bad argument or bad
column raises ``ValueError`` naming it and saying what was expected, and the
store is left untouched.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from cerebro.storage import layout
from cerebro.storage.base import Store

from .columns import Column, column_from_arrow, column_from_pandas, flags_from_arrow
from .hashing import hash_pair, multiset_digest, multiset_lanes
from .prepared import (
    PreparedData,
    canonical_table,
    describe_prepared,
    find_existing,
    label_stats,
    label_summary,
    part_path,
    publish,
    row_group_rows,
    write_partition_file,
)
from .rules import (
    check_known,
    check_request,
    check_split,
    duplicate_column_error,
    flags_type_error,
    is_spark_dataframe,
    no_rows_error,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow as pa

__all__ = ["prepare_data"]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- the input


class _Source:
    """Uniform access to the input's columns: a pandas DataFrame or an Arrow table."""

    def __init__(self, kind: str, obj: Any, names: list[Any]) -> None:
        self.kind = kind
        self.obj = obj
        self.names = names

    @property
    def num_rows(self) -> int:
        return len(self.obj) if self.kind == "pandas" else self.obj.num_rows

    def _check_unique(self, name: str, role: str) -> None:
        if sum(1 for c in self.names if c == name) > 1:
            raise duplicate_column_error(name, role)

    def column(self, name: str, role: str) -> Column:
        self._check_unique(name, role)
        if self.kind == "pandas":
            return column_from_pandas(self.obj[name], name, role)
        return column_from_arrow(self.obj.column(name), name, role, str(self.obj.schema.field(name).type))

    def flags(self, name: str) -> np.ndarray:
        self._check_unique(name, "validation")
        if self.kind == "pandas":
            series = self.obj[name]
            if isinstance(series.dtype, np.dtype):
                if series.dtype.kind == "b":
                    return series.to_numpy()
                raise flags_type_error(name, str(series.dtype))
            import pyarrow as pa

            try:
                arr = pa.array(series, from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
                raise flags_type_error(name, str(series.dtype)) from None
            return flags_from_arrow(arr, name, str(series.dtype))
        return flags_from_arrow(self.obj.column(name), name, str(self.obj.schema.field(name).type))


def _open_source(data: Any, wanted: dict[str, list[str]]) -> _Source:
    """Wrap ``data`` and check that the ``wanted`` columns exist. Reads a Parquet path (only those columns)."""
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(data, pd.DataFrame):
        return _Source("pandas", data, list(data.columns))
    pa = sys.modules.get("pyarrow")
    if pa is not None and isinstance(data, pa.Table):
        return _Source("arrow", data, list(data.column_names))
    if isinstance(data, (str, os.PathLike)):
        return _read_parquet(os.fspath(data), wanted)
    raise TypeError(
        "data must be a pandas DataFrame, a pyarrow Table, or a path (str or os.PathLike) to a Parquet file or "
        f"directory; got {type(data).__module__}.{type(data).__name__}"
    )


def _read_parquet(path: str, wanted: dict[str, list[str]]) -> _Source:
    import pyarrow as pa
    import pyarrow.dataset as ds

    if path.startswith("file://"):
        from urllib.parse import unquote, urlsplit

        path = unquote(urlsplit(path).path)
    if not os.path.exists(path):
        raise ValueError(f"data path {path!r} does not exist; pass a Parquet file or a directory of Parquet files")
    try:
        dataset = ds.dataset(path, format="parquet", partitioning="hive")
        names = list(dataset.schema.names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"data path {path!r} could not be read as Parquet: {exc}") from exc
    check_known(names, wanted)
    table = dataset.to_table(columns=[c for cols in wanted.values() for c in cols])
    return _Source("arrow", table, names)


# ---------------------------------------------------------------------------- prepare


def prepare_data(
    data: Any,
    store: Store,
    *,
    feature_columns: str | Sequence[str],
    label_columns: str | Sequence[str],
    validation: float | str = 0.25,
    num_partitions: int,
    seed: int,
) -> PreparedData:
    """Validate, split and partition ``data`` into ``store``; return its description.

    Called once per experiment by the driver before workers start. Blocks on
    reading the input and writing Parquet. Idempotent and safe to run
    concurrently: the result is keyed by content, a data set whose manifest
    exists is reused without writing anything (``reused=True``), and a new one
    is written under a temporary directory, renamed into place, and its
    manifest written last, so a crash never leaves a copy that looks complete.

    ``data``: a pandas DataFrame, a pyarrow Table, a path to a Parquet file
    or directory, or a Spark DataFrame (prepared by Spark itself in its
    executors, see :mod:`cerebro.data.spark`; the result is identical to the
    pandas path's for the same rows). ``validation``: the fraction of rows
    held out (Python's ``round(validation * n)`` rows, at least 1) or the name
    of a boolean column whose True rows are the validation set.

    Raises ``ValueError`` (naming the argument or column) for bad input before
    anything is written, ``TypeError`` for an unsupported ``data`` or ``store``.
    """
    t0 = time.perf_counter()
    req = check_request(store, feature_columns, label_columns, validation, num_partitions, seed)
    if is_spark_dataframe(data):
        from .spark import prepare_spark_data

        return prepare_spark_data(data, store, req)

    source = _open_source(data, req.wanted)
    check_known(source.names, req.wanted)
    n = source.num_rows
    if n == 0:
        raise no_rows_error()

    columns = [source.column(c, "feature") for c in req.features] + [source.column(c, "label") for c in req.labels]
    flags = source.flags(req.val_column) if req.val_column is not None else None

    # --- content hash, order, split
    hash_inputs = [c.values for c in columns] + ([flags] if flags is not None else [])
    h1, h2 = hash_pair(hash_inputs, req.seed)
    order = np.lexsort((h2, h1))
    if flags is None:
        n_val = req.num_val_rows(n)
        val_idx, train_idx = order[:n_val], order[n_val:]
    else:
        in_val = flags[order]
        val_idx, train_idx = order[in_val], order[~in_val]
    check_split(req, n, len(val_idx))

    data_hash = multiset_digest(multiset_lanes(h1, h2), n)
    described = [(c.name, c.role, c.shape, c.is_integer) for c in columns]
    labels = {c.name: label_summary(c.values, c.is_integer) for c in columns if c.role == "label"}
    stats = label_stats({c.name: c.shape for c in columns if c.role == "label"}, labels)
    prepared = describe_prepared(req, described, n, len(val_idx), data_hash, stats)
    t_hash = time.perf_counter()

    existing = find_existing(store, prepared, n)
    if existing is not None:
        return existing

    P = req.num_partitions
    parts = {"train": [train_idx[p::P] for p in range(P)], "val": [val_idx[p::P] for p in range(P)]}

    def write_files(tmp_dir: str) -> dict[str, dict[str, Any]]:
        files = {}
        for split in layout.SPLITS:
            store.makedirs(f"{tmp_dir}/{split}")
            for p, rows in enumerate(parts[split]):
                table = _partition_table(prepared, columns, rows)
                files[layout.data_part(prepared.key, split, p)] = write_partition_file(
                    store, part_path(tmp_dir, prepared.key, split, p), table, row_group_rows(prepared))
        return files

    prepared = publish(store, prepared, write_files)
    logger.info(
        "prepared data %s in %s: %d training rows in %d partitions, %d validation rows "
        "(validate+hash %.2fs, write %.2fs)",
        prepared.key, store.url, len(train_idx), P, len(val_idx), t_hash - t0, time.perf_counter() - t_hash,
    )
    return prepared


def _partition_table(prepared: PreparedData, columns: list[Column], rows: np.ndarray) -> "pa.Table":
    """The Arrow table of one partition: the given ``rows`` of the validated ``columns``."""
    return canonical_table(prepared, {c.name: c.values[rows] for c in columns})
