"""Preparing a Spark DataFrame with Spark itself: the pandas path's PreparedData and files, computed in executors.

:func:`cerebro.data.prepare_data` hands a Spark DataFrame to
:func:`prepare_spark_data`. The result is identical to what the pandas/Arrow
path gives for the same rows, in any order and any partitioning: the same
``key``, ``data_hash``, shapes, dtypes and row counts, and byte-identical
partition files. No row ever goes through the driver (no ``collect()`` of data,
no ``toPandas()``, no ``df.rdd``): executors read Arrow batches
(``mapInArrow``), hash them with the very functions of :mod:`cerebro.data.hashing`,
and write Parquet with pyarrow straight into the store (which every executor
must see: a shared directory or HDFS). The checks, messages, description and
publishing are the pandas path's own (:mod:`cerebro.data.rules`,
:mod:`cerebro.data.prepared`); this module never imports that path.

How (two passes, deterministic, no sampling, no global sort):

* Schema checks on the driver: unknown, duplicate and non-numeric columns, a
  validation column that is not boolean. Spark ML vectors become
  ``array<double>`` (``vector_to_array``).
* Pass A, one job: per partition, validation statistics of every column
  (rows, rows with NaN/null/inf, array lengths, nulls) and, for valid data, the
  rows' hash pairs (h1, h2) reduced to the multiset digest's partial sums and a
  histogram of rows per hash bucket (the top bits of h1), per split when a
  column marks the validation rows, and the labels' min, max and integrality
  (``PreparedData.label_stats``). Only these small summaries reach the
  driver, which raises the pandas path's error for bad data (same message,
  counts over the whole data), derives the split sizes, ``data_hash`` and the
  content key, and returns the stored copy if there is one (nothing written,
  no second job).
* Pass B, one job: rows are keyed by hash and bucket (each row's columns
  packed, in their stored dtypes, into one binary value: far cheaper to shuffle
  than arrays), shuffled by bucket and sorted by (h1, h2) within Spark partitions; a row's global rank is its
  bucket's offset (from pass A's histograms) plus its index within the bucket,
  which gives its split, worker partition (rank mod P) and position (rank div P).
  A second shuffle sends each of the 2P (split, partition) files to its own
  task, sorted by position, which writes it with pyarrow in the pandas path's
  row groups, under the data set's temporary directory, hashing the bytes as
  it writes them; the sha256, rows and size of each file come back to the
  driver with the job's result (``PreparedData.files``). The driver then
  publishes it as the pandas path does (rename, manifest last).

Memory per task is bounded by Spark's sort (which spills) and one Parquet row
group. The DataFrame is evaluated twice (once per pass): a non-deterministic
source (e.g. ``rand()`` columns) must be cached or checkpointed first; a change
between the passes is detected and refused.
"""

from __future__ import annotations

import functools
import logging
import math
import pickle
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from cerebro.errors import CerebroError
from cerebro.storage import layout
from cerebro.storage.base import Store

from .hashing import hash_pair, multiset_digest, multiset_lanes
from .prepared import (
    PartitionFileWriter,
    PreparedData,
    canonical_table,
    column_dtype,
    column_shape,
    describe_prepared,
    find_existing,
    label_stats,
    label_summary,
    merge_label_summaries,
    part_path,
    publish,
    row_group_rows,
    write_partition_file,
)
from .rules import (
    PrepareRequest,
    bad_rows_error,
    check_known,
    check_split,
    duplicate_column_error,
    empty_arrays_error,
    example,
    flags_null_error,
    flags_type_error,
    no_rows_error,
    non_numeric_error,
    ragged_error,
)

__all__ = ["is_vector", "numeric_type", "prepare_spark_data", "quoted", "type_label", "vector_as_array"]

logger = logging.getLogger(__name__)

#: Rows are bucketed by the top bits of h1: the unit of the rank computation and of the sort shuffle.
_BUCKET_BITS = 12
_NUM_BUCKETS = 1 << _BUCKET_BITS
#: Target rows per sort task of pass B (Spark spills beyond memory; this only sets the parallelism).
_ROWS_PER_SORT_TASK = 2_000_000
_SIGN = np.uint64(1 << 63)


# ---------------------------------------------------------------------------- the plan (driver)


@dataclass(frozen=True)
class _Item:
    """One input column as the schema shows it: how to read it, or why it is refused."""

    name: str
    role: str  # "feature" | "label" | "validation"
    kind: str  # "scalar" | "array" | "flags" | "refused"
    is_integer: bool = False
    vector: bool = False
    refusal: Callable[[], ValueError] | None = field(default=None, compare=False)


def quoted(name: str) -> Any:
    """The Spark column ``name``, quoted (names with dots, spaces or backticks are taken literally)."""
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


def type_label(dt: Any) -> str:
    """A Spark type as the Arrow path names it (``double``, ``string``...), else Spark's own name."""
    try:
        from pyspark.sql.pandas.types import to_arrow_type

        return str(to_arrow_type(dt))
    except Exception:  # noqa: BLE001 - only a label for a message
        return dt.simpleString()


def numeric_type(dt: Any) -> tuple[bool, bool]:
    """(is a numeric scalar type, is an integer or boolean type) for a Spark DataType."""
    from pyspark.sql import types as T

    if isinstance(dt, (T.FloatType, T.DoubleType)):
        return True, False
    if isinstance(dt, (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.BooleanType)):
        return True, True
    return False, False


def is_vector(dt: Any) -> bool:
    """Whether a Spark DataType is a Spark ML (or MLlib) vector, without importing pyspark.ml."""
    return type(dt).__name__ == "VectorUDT" and type(dt).__module__.startswith(("pyspark.ml", "pyspark.mllib"))


def _plan(df: Any, req: PrepareRequest) -> list[_Item]:
    """Classify the wanted columns from the schema: features, labels, then the validation column."""
    from pyspark.sql import types as T

    counts = Counter(df.columns)
    fields = {f.name: f.dataType for f in df.schema.fields}

    def refused(role: str, name: str, label: str, detail: str = "") -> _Item:
        def error() -> ValueError:
            # Five values of one column, only to show an example in the message.
            values = [row[0] for row in df.select(quoted(name)).limit(5).collect()]
            return non_numeric_error(role, name, label, example(values), detail)

        return _Item(name, role, "refused", refusal=error)

    items: list[_Item] = []
    for role, names in (("feature", req.features), ("label", req.labels)):
        for name in names:
            dt = fields[name]
            scalar, integer = numeric_type(dt)
            if counts[name] > 1:
                items.append(_Item(name, role, "refused", refusal=functools.partial(duplicate_column_error, name, role)))
            elif scalar:
                items.append(_Item(name, role, "scalar", is_integer=integer))
            elif is_vector(dt):
                items.append(_Item(name, role, "array", is_integer=False, vector=True))
            elif isinstance(dt, T.ArrayType):
                element, integer = numeric_type(dt.elementType)
                if element:
                    items.append(_Item(name, role, "array", is_integer=integer))
                else:
                    items.append(refused(role, name, type_label(dt), f"arrays of {type_label(dt.elementType)}"))
            else:
                items.append(refused(role, name, type_label(dt)))
    if req.val_column is not None:
        name = req.val_column
        if counts[name] > 1:
            items.append(_Item(name, "validation", "refused",
                               refusal=functools.partial(duplicate_column_error, name, "validation")))
        elif isinstance(fields[name], T.BooleanType):
            items.append(_Item(name, "validation", "flags"))
        else:
            items.append(_Item(name, "validation", "refused",
                               refusal=functools.partial(flags_type_error, name, type_label(fields[name]))))
    return items


def _select(df: Any, items: Sequence[_Item]) -> Any:
    """The columns of ``items`` as ``c0, c1, ...`` (``v`` for the validation flags), vectors as arrays."""
    cols = []
    for i, item in enumerate(items):
        col = vector_as_array(quoted(item.name)) if item.vector else quoted(item.name)
        cols.append(col.alias("v" if item.kind == "flags" else f"c{i}"))
    return df.select(*cols)


def vector_as_array(col: Any) -> Any:
    """A Spark ML vector column as ``array<double>`` (null vectors stay null: vector_to_array refuses them)."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    return F.when(col.isNull(), F.lit(None).cast("array<double>")).otherwise(vector_to_array(col, "float64"))


# ---------------------------------------------------------------------------- executor side


def _is_float(arr: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_floating(arr.type)


def _uniform_length(arr: Any) -> int | None:
    """The length of every list in ``arr`` if they are equal, non-null and not empty; else None."""
    import pyarrow.compute as pc

    if arr.null_count or len(arr) == 0:
        return None
    lengths = pc.min_max(pc.list_value_length(arr))
    lo, hi = lengths["min"].as_py(), lengths["max"].as_py()
    return int(lo) if lo == hi and lo > 0 else None


def _values(arr: Any, kind: str) -> np.ndarray:
    """A valid column as numpy, exactly as :mod:`cerebro.data.columns` converts it: (n,) scalars, (n, d) arrays."""
    if kind != "array":
        return arr.to_numpy(zero_copy_only=False)
    d = _uniform_length(arr)
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), d or 0)


@dataclass
class _Stats:
    """Pass A's summary of some rows (a partition, then the whole data set); summable."""

    rows: int
    bad: list[int]  # per column: rows with NaN/null/inf (scalars), or with such elements (arrays)
    nulls: list[int]  # per column: null rows (arrays)
    lengths: list[Counter]  # per column: rows per array length (arrays, non-null rows)
    flag_nulls: int = 0
    val_rows: int = 0
    hashed: bool = True  # every batch was valid and hashed
    hist: dict[str, np.ndarray] = field(default_factory=dict)  # "all" or "val"/"train": rows per bucket
    lanes: list[int] = field(default_factory=list)
    labels: dict[int, Any] = field(default_factory=dict)  # per label column: (min, max, integral) of hashed rows

    @classmethod
    def empty(cls, ncols: int) -> "_Stats":
        return cls(0, [0] * ncols, [0] * ncols, [Counter() for _ in range(ncols)])

    def add(self, other: "_Stats") -> None:
        self.rows += other.rows
        for i in range(len(self.bad)):
            self.bad[i] += other.bad[i]
            self.nulls[i] += other.nulls[i]
            self.lengths[i].update(other.lengths[i])
        self.flag_nulls += other.flag_nulls
        self.val_rows += other.val_rows
        self.hashed = self.hashed and other.hashed
        for name, h in other.hist.items():
            self.hist[name] = self.hist[name] + h if name in self.hist else h.copy()
        if other.lanes:
            self.lanes = [(a + b) & ((1 << 64) - 1) for a, b in zip(self.lanes or [0] * len(other.lanes), other.lanes)]
        for i, summary in other.labels.items():
            self.labels[i] = merge_label_summaries(self.labels.get(i), summary)


@dataclass(frozen=True)
class _ScanSpec:
    kinds: tuple[str, ...]  # per column c0..: "scalar" | "array"
    flags: bool  # a validation column "v" follows the columns
    hash: bool  # hash valid batches (every wanted column passed the schema checks)
    seed: int
    labels: tuple[bool | None, ...] = ()  # per column: None (a feature), else whether the label is integer


def _scan_batch(batch: Any, spec: _ScanSpec) -> _Stats:
    import pyarrow.compute as pc

    ncols = len(spec.kinds)
    st = _Stats.empty(ncols)
    st.rows = n = batch.num_rows
    valid = True
    for i, kind in enumerate(spec.kinds):
        arr = batch.column(i)
        if kind == "scalar":
            st.bad[i] = int(np.count_nonzero(~np.isfinite(arr.to_numpy(zero_copy_only=False)))) if _is_float(arr) \
                else arr.null_count
        else:
            st.nulls[i] = arr.null_count
            lengths = pc.list_value_length(arr).drop_null().to_numpy(zero_copy_only=False)
            found, counts = np.unique(lengths, return_counts=True)
            st.lengths[i] = Counter({int(k): int(c) for k, c in zip(found, counts)})
            d = _uniform_length(arr)
            if d is None:
                valid = valid and n == 0
                continue
            flat = arr.flatten()
            if _is_float(flat):
                bad = ~np.isfinite(flat.to_numpy(zero_copy_only=False).reshape(n, d))
            else:
                bad = flat.is_null().to_numpy(zero_copy_only=False).reshape(n, d)
            st.bad[i] = int(np.count_nonzero(bad.any(axis=1)))
        valid = valid and st.bad[i] == 0 and st.nulls[i] == 0
    flags = None
    if spec.flags:
        arr = batch.column(ncols)
        st.flag_nulls = arr.null_count
        valid = valid and st.flag_nulls == 0
        if st.flag_nulls == 0:
            flags = arr.to_numpy(zero_copy_only=False).astype(bool, copy=False)
            st.val_rows = int(np.count_nonzero(flags))
    st.hashed = spec.hash and valid
    if st.hashed and n:
        columns = [_values(batch.column(i), kind) for i, kind in enumerate(spec.kinds)]
        h1, h2 = hash_pair(columns + ([flags] if flags is not None else []), spec.seed)
        buckets = (h1 >> np.uint64(64 - _BUCKET_BITS)).astype(np.int64)
        if flags is None:
            st.hist["all"] = np.bincount(buckets, minlength=_NUM_BUCKETS)
        else:
            st.hist["val"] = np.bincount(buckets[flags], minlength=_NUM_BUCKETS)
            st.hist["train"] = np.bincount(buckets[~flags], minlength=_NUM_BUCKETS)
        st.lanes = multiset_lanes(h1, h2)
        for i, integer in enumerate(spec.labels):
            if integer is not None:
                st.labels[i] = label_summary(columns[i], integer)
    return st


def _scan_partition(batches: Iterator[Any], spec: _ScanSpec) -> Iterator[Any]:
    """Pass A (``mapInArrow``): one row per Spark partition, its :class:`_Stats` pickled and compressed."""
    import pyarrow as pa

    total = _Stats.empty(len(spec.kinds))
    total.hashed = spec.hash
    for batch in batches:
        total.add(_scan_batch(batch, spec))
    payload = zlib.compress(pickle.dumps(total, protocol=pickle.HIGHEST_PROTOCOL))
    yield pa.RecordBatch.from_arrays([pa.array([payload], type=pa.binary())], names=["stats"])


@dataclass(frozen=True)
class _KeySpec:
    kinds: tuple[str, ...]
    prepared: PreparedData
    flags: bool
    seed: int


def _row_layout(prepared: PreparedData) -> list[tuple[str, np.dtype, tuple[int, ...], int, int]]:
    """Where each column lies in a packed row: (name, stored dtype, shape, byte offset, byte count).

    Between the passes' steps a row travels as one binary value holding its
    columns in their stored dtypes: Spark shuffles and converts one byte string
    per row far faster than arrays of numbers element by element.
    """
    out, offset = [], 0
    for name in (*prepared.feature_columns, *prepared.label_columns):
        dtype, shape = column_dtype(prepared, name), column_shape(prepared, name)
        size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        out.append((name, dtype, shape, offset, size))
        offset += size
    return out


def _pack(columns: Sequence[np.ndarray], prepared: PreparedData) -> Any:
    """Rows of the columns (features then labels, any numeric dtype) as an Arrow binary array."""
    import pyarrow as pa

    n = len(columns[0])
    parts = [
        np.ascontiguousarray(values.astype(dtype, copy=False).reshape(n, -1)).view(np.uint8)
        for values, (_, dtype, _, _, _) in zip(columns, _row_layout(prepared))
    ]
    rows = np.ascontiguousarray(np.concatenate(parts, axis=1))
    width = rows.shape[1]
    offsets = np.arange(0, n * width + 1, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(rows)])


def _unpack(arr: Any, prepared: PreparedData) -> dict[str, np.ndarray]:
    """Inverse of :func:`_pack` on an Arrow binary array (a slice of one): columns in their stored dtypes."""
    n = len(arr)
    layout_ = _row_layout(prepared)
    width = sum(size for *_, size in layout_)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + n + 1]
    if n and (offsets[-1] - offsets[0] != n * width or arr.null_count):
        raise CerebroError(f"prepare_data: packed rows of {width} bytes expected; got a corrupt batch")
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[0] + n * width].reshape(n, width)
    return {
        name: np.ascontiguousarray(data[:, offset : offset + size]).view(dtype).reshape(n, *shape)
        for name, dtype, shape, offset, size in layout_
    }


def _ordered_key(h: np.ndarray) -> np.ndarray:
    """uint64 hashes as int64 whose signed order is the unsigned order (top bit flipped)."""
    return (h ^ _SIGN).view(np.int64)


def _key_partition(batches: Iterator[Any], spec: _KeySpec) -> Iterator[Any]:
    """Pass B, step 1 (``mapInArrow``): bucket, ordered hash keys, [flags], the packed row."""
    import pyarrow as pa

    ncols = len(spec.kinds)
    for batch in batches:
        if batch.num_rows == 0:
            continue
        columns = [_values(batch.column(i), kind) for i, kind in enumerate(spec.kinds)]
        flags = batch.column(ncols).to_numpy(zero_copy_only=False).astype(bool) if spec.flags else None
        h1, h2 = hash_pair(columns + ([flags] if flags is not None else []), spec.seed)
        out = [
            pa.array((h1 >> np.uint64(64 - _BUCKET_BITS)).astype(np.int32)),
            pa.array(_ordered_key(h1)),
            pa.array(_ordered_key(h2)),
        ]
        if flags is not None:
            out.append(pa.array(flags))
        out.append(_pack(columns, spec.prepared))
        yield pa.RecordBatch.from_arrays(out, names=["b", "k1", "k2"] + (["v"] if flags is not None else []) + ["r"])


class _RunIndex:
    """Index of each row within its bucket, over the consecutive bucket-sorted batches of one partition."""

    def __init__(self) -> None:
        self.bucket = -1
        self.count = 0

    def __call__(self, buckets: np.ndarray) -> np.ndarray:
        n = len(buckets)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        pos = np.arange(n, dtype=np.int64)
        start = np.ones(n, dtype=bool)
        start[1:] = buckets[1:] != buckets[:-1]
        run_start = np.maximum.accumulate(np.where(start, pos, 0))
        index = pos - run_start
        if buckets[0] == self.bucket:
            index[run_start == 0] += self.count
        self.bucket = int(buckets[-1])
        self.count = int(index[-1]) + 1
        return index


@dataclass(frozen=True)
class _RankSpec:
    num_partitions: int
    n_val: int  # fraction split: the first n_val ranks are validation rows
    offsets: dict[str, np.ndarray]  # "all" or "val"/"train": rank of each bucket's first row
    targets: np.ndarray  # per file key (split index * P + partition): its shuffle value


def _rank_partition(batches: Iterator[Any], spec: _RankSpec) -> Iterator[Any]:
    """Pass B, step 2 (``mapInArrow`` over partitions sorted by hash): each row's file and position in it.

    A bucket lives in one partition and is contiguous there, so a row's rank in
    its split is its bucket's offset plus its index within the bucket.
    """
    import pyarrow as pa

    P = spec.num_partitions
    flags = "all" not in spec.offsets
    counters = {name: _RunIndex() for name in spec.offsets}
    for batch in batches:
        n = batch.num_rows
        if n == 0:
            continue
        buckets = batch.column(0).to_numpy(zero_copy_only=False)
        if not flags:
            rank = spec.offsets["all"][buckets] + counters["all"](buckets)
            in_val = rank < spec.n_val
            rank = np.where(in_val, rank, rank - spec.n_val)
        else:
            in_val = batch.column(3).to_numpy(zero_copy_only=False).astype(bool)
            rank = np.empty(n, dtype=np.int64)
            for name, mask in (("val", in_val), ("train", ~in_val)):
                sub = buckets[mask]
                rank[mask] = spec.offsets[name][sub] + counters[name](sub)
        split = np.where(in_val, layout.SPLITS.index("val"), layout.SPLITS.index("train"))
        target = spec.targets[split * P + rank % P]
        out = [pa.array(target), pa.array(rank // P), batch.column(batch.num_columns - 1)]
        yield pa.RecordBatch.from_arrays(out, names=["t", "i", "r"])


@dataclass(frozen=True)
class _WriteSpec:
    store: Store
    prepared: PreparedData
    tmp_dir: str
    files: dict[int, tuple[str, int]]  # shuffle value -> (split, partition)
    row_group_rows: int


class _FileWriter:
    """Writes one partition file from position-ordered slices, in whole row groups, then publishes it."""

    def __init__(self, spec: _WriteSpec, split: str, partition: int) -> None:
        self.spec = spec
        self.split, self.partition = split, partition
        self.final = part_path(spec.tmp_dir, spec.prepared.key, split, partition)
        directory, name = self.final.rsplit("/", 1)
        # A hidden temporary name: a failed attempt never leaves a file that looks written.
        self.temp = f"{directory}/.tmp-{uuid.uuid4().hex}-{name}"
        # Hashes the bytes as they are written: the manifest's checksum, with nothing read back.
        self.file = PartitionFileWriter(spec.store, self.temp, _schema(spec.prepared), spec.row_group_rows)
        self.pending: list[Any] = []
        self.pending_rows = 0
        self.rows = 0  # positions handed over so far

    def append(self, table: Any, positions: np.ndarray) -> None:
        if positions[0] != self.rows or positions[-1] != self.rows + len(positions) - 1 or (
            len(positions) > 1 and np.any(np.diff(positions) != 1)
        ):
            raise CerebroError(
                f"prepare_data: rows of {self.split} partition {self.partition} arrived out of sequence "
                f"(expected position {self.rows}, got {int(positions[0])}); the DataFrame changed between "
                "the two passes over it (a non-deterministic source?): cache or checkpoint it first"
            )
        self.rows += len(positions)
        self.pending.append(table)
        self.pending_rows += table.num_rows
        while self.pending_rows >= self.spec.row_group_rows:
            self._flush(self.spec.row_group_rows)

    def _flush(self, rows: int) -> None:
        import pyarrow as pa

        table = pa.concat_tables(self.pending).combine_chunks()
        # One write per row group, of exactly the rows pq.write_table puts in it: identical bytes.
        self.file.write(table.slice(0, rows))
        rest = table.slice(rows)
        self.pending = [rest] if rest.num_rows else []
        self.pending_rows = rest.num_rows

    def close(self) -> dict[str, Any]:
        """Finish and publish the file; its ``PreparedData.files`` entry (sha256, rows, bytes)."""
        if self.pending_rows:
            self._flush(self.pending_rows)
        info = self.file.close()
        self.spec.store.rename(self.temp, self.final)
        return info


def _schema(prepared: PreparedData) -> Any:
    """The partition files' Arrow schema (as the pandas path writes it)."""
    values = {
        name: np.zeros((0, *column_shape(prepared, name)))
        for name in (*prepared.feature_columns, *prepared.label_columns)
    }
    return canonical_table(prepared, values).schema


def _write_partition(batches: Iterator[Any], spec: _WriteSpec) -> Iterator[Any]:
    """Pass B, step 3 (``mapInArrow`` over partitions sorted by (file, position)): write whole files.

    Yields one row per file written: its shuffle value, row count, sha256 and size in bytes
    (hashed while it was written).
    """
    import pyarrow as pa

    written: list[tuple[int, dict[str, Any]]] = []
    current: tuple[int, _FileWriter] | None = None
    try:
        for batch in batches:
            n = batch.num_rows
            if n == 0:
                continue
            targets = batch.column(0).to_numpy(zero_copy_only=False)
            positions = batch.column(1).to_numpy(zero_copy_only=False)
            cuts = np.flatnonzero(targets[1:] != targets[:-1]) + 1
            for start, stop in zip(np.r_[0, cuts], np.r_[cuts, n]):
                target = int(targets[start])
                if current is None or current[0] != target:
                    if current is not None:
                        written.append((current[0], current[1].close()))
                    split, partition = spec.files[target]
                    current = (target, _FileWriter(spec, split, partition))
                rows = _unpack(batch.column(2).slice(start, stop - start), spec.prepared)
                table = canonical_table(spec.prepared, rows)
                current[1].append(table, positions[start:stop])
        if current is not None:
            written.append((current[0], current[1].close()))
            current = None
    finally:
        if current is not None:  # an error: leave no temporary file behind
            try:
                current[1].file.abort()
            finally:
                spec.store.delete(current[1].temp)
    yield pa.RecordBatch.from_arrays(
        [
            pa.array([t for t, _ in written], type=pa.int64()),
            pa.array([info["rows"] for _, info in written], type=pa.int64()),
            pa.array([info["sha256"] for _, info in written], type=pa.string()),
            pa.array([info["bytes"] for _, info in written], type=pa.int64()),
        ],
        names=["t", "rows", "sha256", "bytes"],
    )


# ---------------------------------------------------------------------------- driver


def _default_parallelism(spark: Any) -> int:
    try:
        return int(spark.sparkContext.defaultParallelism)
    except Exception:  # noqa: BLE001 - Spark Connect has no SparkContext
        return int(spark.conf.get("spark.default.parallelism", "2"))


def _shuffle_values(spark: Any, count: int) -> np.ndarray:
    """For each Spark partition k in [0, count), a long value that ``repartition(count, col)`` sends to k.

    ``repartition(n, col)`` places a row by ``pmod(hash(col), n)`` (Spark's
    HashPartitioning); asking Spark for that expression on a few synthetic ids
    gives each output file a task of its own. (Correctness never depends on it:
    writers handle several files per task.)
    """
    values = np.full(count, -1, dtype=np.int64)
    start, width = 0, 64 * count
    while (values < 0).any():
        rows = spark.range(start, start + width).selectExpr("id", f"pmod(hash(id), {count}) AS p").collect()
        for row in rows:
            if values[row["p"]] < 0:
                values[row["p"]] = row["id"]
        start += width
    return values


class _JobDescription:
    """Names the Spark jobs of a block in the UI (best effort)."""

    def __init__(self, spark: Any, text: str) -> None:
        self.spark, self.text = spark, text

    def __enter__(self) -> None:
        try:
            self.spark.sparkContext.setJobDescription(self.text)
        except Exception:  # noqa: BLE001 - Spark Connect, or a stopped context
            pass

    def __exit__(self, *exc: Any) -> None:
        try:
            self.spark.sparkContext.setJobDescription(None)
        except Exception:  # noqa: BLE001
            pass


def _scan(df: Any, items: Sequence[_Item], req: PrepareRequest, hash_rows: bool) -> _Stats:
    """Pass A over the (non-refused) ``items``: their statistics summed over the whole DataFrame."""
    kinds = tuple(i.kind for i in items if i.kind != "flags")
    flags = any(i.kind == "flags" for i in items)
    total = _Stats.empty(len(kinds))
    if not items:
        total.rows = int(df.count())
        total.hashed = False
        return total
    labels = tuple(i.is_integer if i.role == "label" else None for i in items if i.kind != "flags")
    spec = _ScanSpec(kinds=kinds, flags=flags, hash=hash_rows, seed=req.seed, labels=labels)
    scanned = _select(df, items).mapInArrow(functools.partial(_scan_partition, spec=spec), "stats binary")
    for row in scanned.collect():  # one small summary per Spark partition
        total.add(pickle.loads(zlib.decompress(row["stats"])))
    return total


def _raise_for_bad_data(items: Sequence[_Item], refused: int | None, stats: _Stats) -> None:
    """Raise the pandas path's error for the first bad column, in the pandas path's order."""
    if stats.rows == 0:
        raise no_rows_error()
    for i, item in enumerate(items):
        if refused is not None and i == refused:
            assert item.refusal is not None
            raise item.refusal()
        if item.kind == "scalar" and stats.bad[i]:
            raise bad_rows_error(item.role, item.name, stats.bad[i])
        if item.kind == "array":
            if stats.nulls[i]:
                raise bad_rows_error(item.role, item.name, stats.nulls[i])
            found = sorted(stats.lengths[i])
            if len(found) > 1:
                raise ragged_error(item.role, item.name, found, [stats.lengths[i][k] for k in found])
            if not found or found[0] == 0:
                raise empty_arrays_error(item.role, item.name)
            if stats.bad[i]:
                raise bad_rows_error(item.role, item.name, stats.bad[i])
        if item.kind == "flags" and stats.flag_nulls:
            raise flags_null_error(item.name, stats.flag_nulls)


def _offsets(histogram: np.ndarray) -> np.ndarray:
    """Rank of each bucket's first row: the exclusive prefix sum of rows per bucket."""
    out = np.zeros(len(histogram), dtype=np.int64)
    np.cumsum(histogram[:-1], out=out[1:])
    return out


def prepare_spark_data(df: Any, store: Store, req: PrepareRequest) -> PreparedData:
    """:func:`cerebro.data.prepare_data` for a Spark DataFrame (arguments already checked in ``req``).

    Same contract, result and errors as the pandas path; runs Spark jobs (one
    when the prepared copy exists, two otherwise) and moves no row through the
    driver. Blocks until the data set is published.
    """
    t0 = time.perf_counter()
    check_known(list(df.columns), req.wanted)
    items = _plan(df, req)
    refused = next((i for i, item in enumerate(items) if item.kind == "refused"), None)
    spark = df.sparkSession
    with _JobDescription(spark, "cerebro: prepare data (validate and hash)"):
        stats = _scan(df, items[:refused], req, hash_rows=refused is None)
    _raise_for_bad_data(items, refused, stats)
    assert stats.hashed, "every batch of valid data is hashed"

    n = stats.rows
    n_val = req.num_val_rows(n) if req.fraction is not None else stats.val_rows
    check_split(req, n, n_val)
    columns = [it for it in items if it.kind in ("scalar", "array")]
    described = [
        (it.name, it.role, () if it.kind == "scalar" else (next(iter(stats.lengths[i])),), it.is_integer)
        for i, it in enumerate(columns)
    ]
    summaries = {it.name: stats.labels.get(i) for i, it in enumerate(columns) if it.role == "label"}
    shapes = {name: shape for name, role, shape, _ in described if role == "label"}
    prepared = describe_prepared(req, described, n, n_val, multiset_digest(stats.lanes, n),
                                 label_stats(shapes, summaries))
    t_scan = time.perf_counter()
    existing = find_existing(store, prepared, n)
    if existing is not None:
        return existing

    def write_files(tmp_dir: str) -> dict[str, dict[str, Any]]:
        with _JobDescription(spark, "cerebro: prepare data (split and write)"):
            return _write(df, store, prepared, req, items, stats, tmp_dir)

    prepared = publish(store, prepared, write_files)
    logger.info(
        "prepared data %s in %s with Spark: %d training rows in %d partitions, %d validation rows "
        "(validate+hash %.2fs, split+write %.2fs)",
        prepared.key, store.url, n - n_val, req.num_partitions, n_val, t_scan - t0, time.perf_counter() - t_scan,
    )
    return prepared


def _write(
    df: Any, store: Store, prepared: PreparedData, req: PrepareRequest, items: Sequence[_Item], stats: _Stats, tmp_dir: str
) -> dict[str, dict[str, Any]]:
    """Pass B: write every partition file of ``prepared`` under ``tmp_dir`` with one Spark job.

    Returns their ``PreparedData.files`` entries (by final store path), hashed by the executors
    that wrote them.
    """
    P = req.num_partitions
    spark = df.sparkSession
    columns = [it for it in items if it.kind in ("scalar", "array")]
    flags = req.val_column is not None
    keyed_schema = "b int, k1 long, k2 long, " + ("v boolean, " if flags else "") + "r binary"
    sort_tasks = max(1, min(_NUM_BUCKETS, max(_default_parallelism(spark), math.ceil(stats.rows / _ROWS_PER_SORT_TASK))))
    targets = _shuffle_values(spark, 2 * P)
    files = {
        int(targets[s * P + p]): (split, p) for s, split in enumerate(layout.SPLITS) for p in range(P)
    }
    offsets = {name: _offsets(h) for name, h in stats.hist.items()}
    n_val = stats.rows - prepared.num_train_rows

    key_spec = _KeySpec(kinds=tuple(it.kind for it in columns), prepared=prepared, flags=flags, seed=req.seed)
    rank_spec = _RankSpec(num_partitions=P, n_val=n_val, offsets=offsets, targets=targets)
    write_spec = _WriteSpec(store=store, prepared=prepared, tmp_dir=tmp_dir, files=files,
                            row_group_rows=row_group_rows(prepared))
    for split in layout.SPLITS:
        store.makedirs(f"{tmp_dir}/{split}")
    result = (
        _select(df, items)
        .mapInArrow(functools.partial(_key_partition, spec=key_spec), keyed_schema)
        .repartition(sort_tasks, "b")
        .sortWithinPartitions("k1", "k2")
        .mapInArrow(functools.partial(_rank_partition, spec=rank_spec), "t long, i long, r binary")
        .repartition(2 * P, "t")
        .sortWithinPartitions("t", "i")
        .mapInArrow(functools.partial(_write_partition, spec=write_spec), "t long, rows long, sha256 string, bytes long")
        .collect()  # one small row per file written
    )
    written = {files[row["t"]]: {"sha256": row["sha256"], "rows": int(row["rows"]), "bytes": int(row["bytes"])}
               for row in result}
    expected = {("train", p): r for p, r in enumerate(prepared.train_rows)}
    expected.update({("val", p): r for p, r in enumerate(prepared.val_rows)})
    out: dict[str, dict[str, Any]] = {}
    for (split, p), rows in expected.items():
        info = written.get((split, p))
        got = 0 if info is None else info["rows"]
        if got != rows:
            raise CerebroError(
                f"prepare_data: {split} partition {p} got {got} rows, expected {rows}; the DataFrame changed "
                "between the two passes over it (a non-deterministic source?): cache or checkpoint it first"
            )
        if rows == 0:  # no task saw this file: write it empty, as the pandas path does
            info = write_partition_file(store, part_path(tmp_dir, prepared.key, split, p), _schema(prepared).empty_table(),
                                        row_group_rows(prepared))
        out[layout.data_part(prepared.key, split, p)] = info
    _remove_temporaries(store, tmp_dir)
    return out


def _remove_temporaries(store: Store, tmp_dir: str) -> None:
    """Delete what failed task attempts may have left (hidden ``.tmp-`` files) before publishing."""
    from cerebro.storage.base import is_temp_name

    fs, root = store.arrow_filesystem()
    from pyarrow.fs import FileSelector

    for info in fs.get_file_info(FileSelector(f"{root}/{tmp_dir}", recursive=True)):
        if is_temp_name(info.base_name):
            store.delete(info.path[len(root) + 1:])
