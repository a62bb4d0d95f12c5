"""Data preparation: a DataFrame or Parquet data set -> validated, split, partitioned Parquet in a Store.

Model hopper parallelism moves models, never data: :func:`prepare_data` is
called once per experiment (by the driver, before any worker starts), splits
the rows into one training and one validation partition per worker and writes
them to the store; each worker then calls :func:`load_partition` once for its
own partitions and keeps them in memory for the whole experiment.

Data identity (binding, see API.md): rows are assigned to partitions, and
ordered within them, by a seeded hash of their *content*
(:func:`row_hashes`), so the same rows in any order, arriving as pandas or
Parquet or Spark, give the same partitions in the same order, and the
same content key, so a prepared copy is found and reused. A Spark DataFrame
is prepared by Spark itself, in its executors (:mod:`cerebro.data_spark`),
with the same rules and the same output, byte for byte.

``data_hash`` identifies the content: a multiset digest of the rows' hash
pairs (:func:`multiset_lanes`), mergeable from per-batch partial sums, so no
process ever needs every row's hash at once.

Everything is validated before anything is written: a bad argument or bad
column raises ``ValueError`` naming it and saying what was expected, and the
store is left untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import numbers
import os
import sys
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from cerebro.errors import CerebroError
from cerebro.storage import layout
from cerebro.storage.base import Store

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow as pa

__all__ = ["FORMAT_VERSION", "PreparedData", "PartitionData", "prepare_data", "load_partition", "row_hashes"]

logger = logging.getLogger(__name__)

#: Version of the prepared-data format and of the partitioning rules. It enters
#: the content key, so changing either never reuses a copy written by an older rule.
#: 2: ``data_hash`` is a mergeable multiset digest; Parquet row groups sized by row width.
FORMAT_VERSION = 2

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
# Derives the tie-break hash seed h2 from the experiment seed; any fixed odd constant works.
_TIEBREAK_XOR = 0xD1B54A32D192ED03
# Rows per hashing block: small enough that the block and its temporaries stay in cache.
_HASH_BLOCK_VALUES = 1 << 16

_ROLE_ARG = {"feature": "feature_columns", "label": "label_columns", "validation": "validation"}

# Multiset digest of the (h1, h2) pairs: this many independent 64-bit lanes.
_DIGEST_LANES = 4
_DIGEST_SEED = 0x6D756C7469736574  # b"multiset"
_DIGEST_SALTS = None  # filled lazily by _digest_salts()
# Parquet row groups: about this many bytes of values each, within [_MIN_GROUP_ROWS, _MAX_GROUP_ROWS] rows.
_ROW_GROUP_BYTES = 64 << 20
_MIN_GROUP_ROWS = 1024
_MAX_GROUP_ROWS = 1 << 20


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True)
class PreparedData:
    """What :func:`prepare_data` wrote: a read-only description, also stored as the data set's manifest.

    Sent to workers (picklable) so that they can :func:`load_partition` their
    share. ``reused`` is True when an existing prepared copy was found and
    nothing was written.
    """

    key: str
    num_partitions: int
    feature_columns: tuple[str, ...]
    label_columns: tuple[str, ...]
    feature_shapes: dict[str, tuple[int, ...]]
    label_shapes: dict[str, tuple[int, ...]]
    label_dtypes: dict[str, str]
    train_rows: tuple[int, ...]
    val_rows: tuple[int, ...]
    data_hash: str
    reused: bool = False

    @property
    def num_train_rows(self) -> int:
        """Training rows over all partitions."""
        return sum(self.train_rows)

    @property
    def num_val_rows(self) -> int:
        """Validation rows over all partitions."""
        return sum(self.val_rows)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists); :meth:`from_dict` reads it back."""
        return {
            "format_version": FORMAT_VERSION,
            "key": self.key,
            "num_partitions": self.num_partitions,
            "feature_columns": list(self.feature_columns),
            "label_columns": list(self.label_columns),
            "feature_shapes": {k: list(v) for k, v in self.feature_shapes.items()},
            "label_shapes": {k: list(v) for k, v in self.label_shapes.items()},
            "label_dtypes": dict(self.label_dtypes),
            "train_rows": list(self.train_rows),
            "val_rows": list(self.val_rows),
            "data_hash": self.data_hash,
            "reused": self.reused,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreparedData":
        """Inverse of :meth:`to_dict`; unknown keys (from newer writers) are ignored."""
        return cls(
            key=str(d["key"]),
            num_partitions=int(d["num_partitions"]),
            feature_columns=tuple(d["feature_columns"]),
            label_columns=tuple(d["label_columns"]),
            # The columns lists fix the order; JSON objects come back with sorted keys.
            feature_shapes={c: tuple(int(x) for x in d["feature_shapes"][c]) for c in d["feature_columns"]},
            label_shapes={c: tuple(int(x) for x in d["label_shapes"][c]) for c in d["label_columns"]},
            label_dtypes={c: str(d["label_dtypes"][c]) for c in d["label_columns"]},
            train_rows=tuple(int(x) for x in d["train_rows"]),
            val_rows=tuple(int(x) for x in d["val_rows"]),
            data_hash=str(d["data_hash"]),
            reused=bool(d.get("reused", False)),
        )


@dataclass
class PartitionData:
    """One split of one partition, in memory, rows in the stored (hash) order.

    ``features[c]`` is float32 of shape ``(n,)`` (scalar column) or ``(n, d)``
    (array column); ``labels[c]`` likewise, int64 for integer or boolean labels
    and float32 for float labels. Row ``i`` of every array is the same input row.
    The arrays are ordinary writable numpy arrays owned by this object.
    """

    features: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    num_rows: int


@dataclass
class _Column:
    """A validated numeric input column: values of shape (n,) or (n, d), original numeric dtype."""

    name: str
    role: str
    values: np.ndarray
    shape: tuple[int, ...]
    is_integer: bool


# ---------------------------------------------------------------------------- hashing


def _mix_int(z: int) -> int:
    """splitmix64 finalizer on a Python int (for deriving salts)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def _salts(seed: int, count: int) -> np.ndarray:
    """``count`` pseudo-random 64-bit salts from ``seed`` (splitmix64 stream)."""
    state = (int(seed) ^ _GOLDEN) & _MASK64
    out = []
    for _ in range(count):
        state = (state + _GOLDEN) & _MASK64
        out.append(_mix_int(state))
    return np.array(out, dtype=np.uint64)


def _mix_inplace(x: np.ndarray, tmp: np.ndarray) -> None:
    """splitmix64 finalizer, vectorised and in place on a uint64 array (wrapping arithmetic)."""
    np.right_shift(x, np.uint64(30), out=tmp)
    x ^= tmp
    x *= np.uint64(_MIX1)
    np.right_shift(x, np.uint64(27), out=tmp)
    x ^= tmp
    x *= np.uint64(_MIX2)
    np.right_shift(x, np.uint64(31), out=tmp)
    x ^= tmp


def _tiebreak_seed(seed: int) -> int:
    """Seed of the second, independent hash h2 used to break ties of h1."""
    return (int(seed) ^ _TIEBREAK_XOR) & _MASK64


def _hash_columns(columns: Sequence[np.ndarray], seeds: Sequence[int]) -> list[np.ndarray]:
    """One uint64 content hash per row for each seed, in one pass over the data.

    Canonical row content: the values of ``columns`` in order, each as float64
    (arrays flattened, -0.0 normalised to 0.0). Each value's bits are salted by
    its position and the seed and mixed (splitmix64 finalizer); the mixed values
    are summed (mod 2**64) and mixed again. Position-dependent salts make the
    hash depend on column order, and the block-wise numpy loop keeps the
    temporaries in cache (no per-row Python loop).
    """
    if not columns:
        raise ValueError("row_hashes() needs at least one column")
    arrays = [np.asarray(c) for c in columns]
    n = arrays[0].shape[0]
    widths = []
    for a in arrays:
        if a.shape[0] != n:
            raise ValueError(f"row_hashes(): columns have different lengths ({a.shape[0]} and {n})")
        widths.append(int(np.prod(a.shape[1:], dtype=np.int64)) if a.ndim > 1 else 1)
    width = sum(widths)
    salts = [_salts(s, width + 1) for s in seeds]
    outs = [np.empty(n, dtype=np.uint64) for _ in seeds]
    block_rows = max(256, _HASH_BLOCK_VALUES // max(width, 1))
    block = np.empty((min(block_rows, max(n, 1)), width), dtype=np.float64)
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        b = stop - start
        blk = block[:b]
        off = 0
        for a, w in zip(arrays, widths):
            # Assignment casts ints and bools to float64: the canonical value.
            blk[:, off : off + w] = a[start:stop].reshape(b, w)
            off += w
        # IEEE: -0.0 + 0.0 == +0.0, so equal numbers get equal bits.
        blk += 0.0
        bits = blk.view(np.uint64)
        x = np.empty_like(bits)
        tmp = np.empty_like(bits)
        for salt, out in zip(salts, outs):
            np.bitwise_xor(bits, salt[:width], out=x)
            _mix_inplace(x, tmp)
            h = x.sum(axis=1, dtype=np.uint64)
            h ^= salt[width]
            _mix_inplace(h, np.empty_like(h))
            out[start:stop] = h
    return outs


def _digest_salts() -> np.ndarray:
    global _DIGEST_SALTS
    if _DIGEST_SALTS is None:
        _DIGEST_SALTS = _salts(_DIGEST_SEED, 2 * _DIGEST_LANES)
    return _DIGEST_SALTS


def multiset_lanes(h1: np.ndarray, h2: np.ndarray) -> list[int]:
    """Partial sums of the multiset digest of the pairs ``(h1[i], h2[i])``: ``_DIGEST_LANES`` Python ints.

    Lane ``j`` is the sum (mod 2**64) over rows of a splitmix64 mix of
    ``(h1, h2)`` salted for that lane. Sums commute, so partials of any split
    of the rows (Arrow batches, Spark partitions) add up (mod 2**64) to the
    lanes of the whole: see :func:`multiset_digest`. Vectorised, O(n).
    """
    h1 = np.asarray(h1, dtype=np.uint64)
    h2 = np.asarray(h2, dtype=np.uint64)
    salts = _digest_salts()
    x = np.empty_like(h1)
    tmp = np.empty_like(h1)
    lanes = []
    for j in range(_DIGEST_LANES):
        np.bitwise_xor(h1, salts[2 * j], out=x)
        _mix_inplace(x, tmp)
        x ^= h2
        x += salts[2 * j + 1]
        _mix_inplace(x, tmp)
        lanes.append(int(x.sum(dtype=np.uint64)))
    return lanes


def multiset_digest(lanes: Sequence[int], count: int) -> str:
    """The data set's ``data_hash``: sha256 (hex) of the row count and the summed lanes.

    ``lanes`` is the element-wise sum (any order, reduced mod 2**64 here) of
    :func:`multiset_lanes` partials over all rows. The sorted order of the rows
    is a function of their multiset of hashes, so equal digests mean the same
    content in the same order (up to hash collisions).
    """
    blob = b"cerebro-multiset-v1" + int(count).to_bytes(8, "little")
    blob += b"".join((int(v) & _MASK64).to_bytes(8, "little") for v in lanes)
    return hashlib.sha256(blob).hexdigest()


def row_hashes(columns: Any, seed: int) -> np.ndarray:
    """Seeded content hash of every row: a uint64 array of length n.

    ``columns`` is a sequence of numeric numpy arrays of equal length (shape
    ``(n,)`` or ``(n, d)``: bool, int or float), or a ``pyarrow.Table`` /
    ``RecordBatch`` whose columns (numeric scalars or lists of numbers) are
    taken in order. The hash depends only on the values as float64 (so int 3
    and float 3.0 agree, -0.0 equals 0.0) and their positions, never on row
    order, chunking or the source format: the Spark path computes the same
    hash on Arrow batches. :func:`prepare_data` uses ``row_hashes(cols, seed)``
    as h1 and ``row_hashes(cols, _tiebreak_seed(seed))`` as h2.

    Pure, thread-safe, no I/O. NaN values hash by their bit pattern; callers
    validate first.
    """
    if hasattr(columns, "column_names") and hasattr(columns, "column"):
        arrays = [
            _column_from_arrow(columns.column(i), str(name), "feature", str(columns.schema.field(i).type)).values
            for i, name in enumerate(columns.column_names)
        ]
    else:
        arrays = list(columns)
    return _hash_columns(arrays, [int(seed)])[0]


# ---------------------------------------------------------------------------- argument checks


def _check_columns_arg(value: Any, argname: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    # Sets and dicts have no meaningful order, and column order matters (model inputs, hashing).
    if isinstance(value, (set, frozenset, dict, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(
            f"{argname} must be a column name or an ordered, non-empty sequence (list or tuple) of column "
            f"names; got {type(value).__name__} {value!r}"
        )
    cols = tuple(value)
    if not cols:
        raise ValueError(f"{argname} must name at least one column; got an empty {type(value).__name__}")
    for c in cols:
        if not isinstance(c, str):
            raise ValueError(f"{argname} must contain column names (str); got {c!r} of type {type(c).__name__}")
    seen: set[str] = set()
    for c in cols:
        if c in seen:
            raise ValueError(f"{argname} lists column {c!r} more than once; list every column once")
        seen.add(c)
    return cols


def _check_int_arg(value: Any, argname: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        expected = f"an int >= {minimum}" if minimum is not None else "an int"
        raise ValueError(f"{argname} must be {expected}; got {value!r} of type {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{argname} must be an int >= {minimum}; got {value}")
    return value


def _check_validation_arg(
    validation: Any, features: tuple[str, ...], labels: tuple[str, ...]
) -> tuple[float | None, str | None]:
    """Return (fraction, None) or (None, column name)."""
    if isinstance(validation, str):
        for argname, cols in (("feature_columns", features), ("label_columns", labels)):
            if validation in cols:
                raise ValueError(
                    f"validation column {validation!r} is also listed in {argname}; the column that marks "
                    "validation rows cannot be a model input or output"
                )
        return None, validation
    if isinstance(validation, bool) or not isinstance(validation, numbers.Real):
        raise ValueError(
            "validation must be a float in (0, 1) (the fraction of rows held out) or the name of a boolean "
            f"column (True marks validation rows); got {validation!r} of type {type(validation).__name__}"
        )
    fraction = float(validation)
    if not 0.0 < fraction < 1.0:  # also refuses NaN
        raise ValueError(
            f"validation must be a fraction strictly between 0 and 1 (e.g. 0.25), or the name of a boolean "
            f"column; got {validation!r}"
        )
    return fraction, None


def _describe_columns(names: Sequence[Any], limit: int = 60) -> str:
    """The data's columns as a Python list, cut after ``limit`` names (wide tables)."""
    shown = ", ".join(repr(str(n)) for n in list(names)[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names) - limit} more)"
    return f"[{shown}]"


def _example(values: Any) -> str:
    """A short repr of the first non-null value, for error messages."""
    try:
        for v in values:
            if v is not None and not (isinstance(v, float) and v != v):
                text = repr(v)
                return text if len(text) <= 40 else text[:37] + "..."
    except Exception:  # noqa: BLE001 - only decorates a message
        pass
    return "?"


# ---------------------------------------------------------------------------- column conversion


# The messages of refused input, shared with the Spark path (cerebro.data_spark) so that
# the same data gives the same error whichever way it arrives.


def _ragged_error(role: str, name: str, lengths: Sequence[int], counts: Sequence[int]) -> ValueError:
    """Arrays of different ``lengths`` (``counts[i]`` rows each): the six most common are listed."""
    counts_arr = np.asarray(counts, dtype=np.int64)
    order = np.argsort(-counts_arr, kind="stable")[:6]
    listing = ", ".join(f"{int(lengths[i])} ({int(counts_arr[i])} rows)" for i in order)
    return ValueError(
        f"{role} column {name!r} holds arrays of different lengths: {listing}; every row must have "
        "the same length (pad or truncate them before fit())"
    )


def _empty_arrays_error(role: str, name: str) -> ValueError:
    return ValueError(f"{role} column {name!r} holds empty arrays; every row needs at least one value")


def _duplicate_column_error(name: str, role: str) -> ValueError:
    return ValueError(f"{role} column {name!r} appears more than once in the data; rename the duplicates")


def _flags_type_error(name: str, dtype: str) -> ValueError:
    return ValueError(
        f"validation column {name!r} must be boolean (True marks validation rows); it has dtype {dtype}. "
        "Pass a bool column, or a fraction such as validation=0.25"
    )


def _flags_null_error(name: str, count: int) -> ValueError:
    return ValueError(
        f"validation column {name!r} has {count} {'row' if count == 1 else 'rows'} with null (missing) "
        "values; mark every row True (validation) or False (training)"
    )


def _no_rows_error() -> ValueError:
    return ValueError("data has no rows; model selection needs training and validation rows")


def _no_true_rows_error(name: str) -> ValueError:
    return ValueError(f"validation column {name!r} has no True rows; the validation set needs at least one row")


def _too_few_training_rows_error(n_train: int, num_partitions: int, n: int, n_val: int) -> ValueError:
    return ValueError(
        f"only {n_train} training rows for num_partitions={num_partitions} (one partition per worker, "
        f"each needs at least one row; {n} rows, {n_val} for validation); use at most "
        f"{max(n_train, 1)} workers or provide more data"
    )


def _bad_rows_error(role: str, name: str, count: int) -> ValueError:
    rows = "row" if count == 1 else "rows"
    return ValueError(
        f"{role} column {name!r} has {count} {rows} with NaN, null (missing) or infinite values; "
        "clean or drop them before fit()"
    )


def _non_numeric_error(role: str, name: str, dtype: str, example: str, detail: str = "") -> ValueError:
    detail = f" ({detail})" if detail else ""
    return ValueError(
        f"{role} column {name!r} has dtype {dtype} (e.g. {example}){detail}; expected numbers (int, float, bool) "
        "or fixed-length arrays of numbers. Encode it numerically or leave it out of "
        f"{_ROLE_ARG.get(role, 'the columns')}"
    )


def _is_numeric_arrow(t: "pa.DataType") -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _count_nonfinite_rows(values: np.ndarray) -> int:
    if values.dtype.kind != "f":
        return 0
    bad = ~np.isfinite(values)
    if values.ndim > 1:
        bad = bad.any(axis=tuple(range(1, values.ndim)))
    return int(np.count_nonzero(bad))


def _column_from_arrow(arr: Any, name: str, role: str, dtype_label: str) -> _Column:
    """Validate and convert an Arrow (chunked) array: numeric scalars or lists of numbers."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = arr.type
    n = len(arr)
    if _is_numeric_arrow(t):
        if arr.null_count:
            values = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
            raise _bad_rows_error(role, name, _count_nonfinite_rows(values))
        values = arr.to_numpy(zero_copy_only=False)
        bad = _count_nonfinite_rows(values)
        if bad:
            raise _bad_rows_error(role, name, bad)
        return _Column(name, role, values, (), not pa.types.is_floating(t))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        vt = t.value_type
        if not _is_numeric_arrow(vt):
            raise _non_numeric_error(role, name, dtype_label, _example(arr.slice(0, 5).to_pylist()),
                                     f"arrays of {vt}")
        if arr.null_count:
            raise _bad_rows_error(role, name, arr.null_count)
        if pa.types.is_fixed_size_list(t):
            d = t.list_size
        else:
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            found, counts = np.unique(lengths, return_counts=True)
            if len(found) > 1:
                raise _ragged_error(role, name, found, counts)
            d = int(found[0]) if len(found) else 0
        if d == 0:
            raise _empty_arrays_error(role, name)
        flat = arr.flatten()
        if flat.null_count:
            flat_values = flat.cast(pa.float64()).to_numpy(zero_copy_only=False).reshape(n, d)
            raise _bad_rows_error(role, name, _count_nonfinite_rows(flat_values))
        values = flat.to_numpy(zero_copy_only=False).reshape(n, d)
        bad = _count_nonfinite_rows(values)
        if bad:
            raise _bad_rows_error(role, name, bad)
        return _Column(name, role, values, (d,), not pa.types.is_floating(vt))
    raise _non_numeric_error(role, name, dtype_label, _example(arr.slice(0, 5).to_pylist()))


def _column_from_pandas(series: Any, name: str, role: str) -> _Column:
    """Validate and convert a pandas Series: numpy numeric dtypes directly, anything else through Arrow."""
    import pyarrow as pa

    dtype = series.dtype
    if isinstance(dtype, np.dtype):
        if dtype.kind in "biuf":
            values = series.to_numpy()
            bad = _count_nonfinite_rows(values)
            if bad:
                raise _bad_rows_error(role, name, bad)
            return _Column(name, role, values, (), dtype.kind != "f")
        if dtype.kind != "O":
            # datetimes, timedeltas, complex, bytes: not model inputs.
            raise _non_numeric_error(role, name, str(dtype), _example(series.iloc[:5]))
    # Object or extension dtype: Arrow infers lists of numbers, nullable ints, strings, ...
    try:
        arr = pa.array(series, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError) as exc:
        raise _non_numeric_error(role, name, str(dtype), _example(series.iloc[:5]), str(exc).split("\n")[0]) from None
    return _column_from_arrow(arr, name, role, str(dtype))


def _flags_from_arrow(arr: Any, name: str, dtype_label: str) -> np.ndarray:
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_boolean(arr.type):
        raise _flags_type_error(name, dtype_label)
    if arr.null_count:
        raise _flags_null_error(name, arr.null_count)
    return arr.to_numpy(zero_copy_only=False).astype(bool, copy=False)


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
            raise _duplicate_column_error(name, role)

    def column(self, name: str, role: str) -> _Column:
        self._check_unique(name, role)
        if self.kind == "pandas":
            return _column_from_pandas(self.obj[name], name, role)
        return _column_from_arrow(self.obj.column(name), name, role, str(self.obj.schema.field(name).type))

    def flags(self, name: str) -> np.ndarray:
        self._check_unique(name, "validation")
        if self.kind == "pandas":
            series = self.obj[name]
            if isinstance(series.dtype, np.dtype):
                if series.dtype.kind == "b":
                    return series.to_numpy()
                raise _flags_type_error(name, str(series.dtype))
            import pyarrow as pa

            try:
                arr = pa.array(series, from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
                raise _flags_type_error(name, str(series.dtype)) from None
            return _flags_from_arrow(arr, name, str(series.dtype))
        return _flags_from_arrow(self.obj.column(name), name, str(self.obj.schema.field(name).type))


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
    _check_known(names, wanted)
    table = dataset.to_table(columns=[c for cols in wanted.values() for c in cols])
    return _Source("arrow", table, names)


def _check_known(names: Sequence[Any], wanted: dict[str, list[str]]) -> None:
    """Raise ValueError naming the unknown columns (per argument) and listing the existing ones."""
    existing = set(n for n in names if isinstance(n, str))
    for argname, cols in wanted.items():
        missing = [c for c in cols if c not in existing]
        if missing:
            what = "column" if len(missing) == 1 else "columns"
            raise ValueError(
                f"{argname}: {what} {', '.join(repr(c) for c in missing)} not found in the data; "
                f"the data has these columns: {_describe_columns(names)}"
            )


# ---------------------------------------------------------------------------- prepare


@dataclass(frozen=True)
class _Request:
    """The checked arguments of :func:`prepare_data`, shared by the pandas/Arrow and the Spark paths."""

    features: tuple[str, ...]
    labels: tuple[str, ...]
    num_partitions: int
    seed: int
    fraction: float | None
    val_column: str | None

    @property
    def wanted(self) -> dict[str, list[str]]:
        """The columns the data must have, per argument name (for :func:`_check_known`)."""
        wanted = {"feature_columns": list(self.features), "label_columns": list(self.labels)}
        if self.val_column is not None:
            wanted["validation"] = [self.val_column]
        return wanted

    @property
    def validation_spec(self) -> dict[str, Any]:
        """How the validation rows are chosen, as it enters the content key."""
        return {"fraction": self.fraction} if self.fraction is not None else {"column": self.val_column}

    def num_val_rows(self, n: int) -> int:
        """Validation rows for a fraction split of ``n`` rows: Python's ``round(fraction * n)``, at least 1."""
        assert self.fraction is not None
        return max(1, int(round(self.fraction * n)))


def _check_request(
    store: Any,
    feature_columns: Any,
    label_columns: Any,
    validation: Any,
    num_partitions: Any,
    seed: Any,
) -> _Request:
    """Check :func:`prepare_data`'s arguments (not the data); ValueError/TypeError naming the bad one."""
    features = _check_columns_arg(feature_columns, "feature_columns")
    labels = _check_columns_arg(label_columns, "label_columns")
    both = [c for c in features if c in labels]
    if both:
        raise ValueError(
            f"column {both[0]!r} is in both feature_columns and label_columns; a column is either a model "
            "input or an output"
        )
    num_partitions = _check_int_arg(num_partitions, "num_partitions", minimum=1)
    seed = _check_int_arg(seed, "seed")
    fraction, val_column = _check_validation_arg(validation, features, labels)
    if not isinstance(store, Store):
        raise TypeError(f"store must be a cerebro Store (e.g. LocalStore(path)); got {type(store).__name__}")
    return _Request(features, labels, num_partitions, seed, fraction, val_column)


def _check_split(req: _Request, n: int, n_val: int) -> None:
    """Refuse a split without validation rows (column) or with fewer training rows than partitions."""
    if req.val_column is not None and n_val == 0:
        raise _no_true_rows_error(req.val_column)
    if n - n_val < req.num_partitions:
        raise _too_few_training_rows_error(n - n_val, req.num_partitions, n, n_val)


def _round_robin_counts(rows: int, num_partitions: int) -> tuple[int, ...]:
    """Rows of each partition when ranks ``p, p + P, p + 2P, ...`` go to partition ``p``."""
    return tuple(len(range(p, rows, num_partitions)) for p in range(num_partitions))


def _describe_prepared(
    req: _Request,
    columns: Sequence[tuple[str, str, tuple[int, ...], bool]],
    n: int,
    n_val: int,
    data_hash: str,
) -> PreparedData:
    """The PreparedData of validated data: ``columns`` are ``(name, role, shape, is_integer)`` in order."""
    feature_shapes = {name: shape for name, role, shape, _ in columns if role == "feature"}
    label_shapes = {name: shape for name, role, shape, _ in columns if role == "label"}
    label_dtypes = {name: ("int64" if integer else "float32") for name, role, _, integer in columns if role == "label"}
    key = _content_key(
        data_hash, req.features, req.labels, feature_shapes, label_shapes, label_dtypes, req.validation_spec,
        req.num_partitions, req.seed,
    )
    return PreparedData(
        key=key,
        num_partitions=req.num_partitions,
        feature_columns=req.features,
        label_columns=req.labels,
        feature_shapes=feature_shapes,
        label_shapes=label_shapes,
        label_dtypes=label_dtypes,
        train_rows=_round_robin_counts(n - n_val, req.num_partitions),
        val_rows=_round_robin_counts(n_val, req.num_partitions),
        data_hash=data_hash,
        reused=False,
    )


def _find_existing(store: Store, prepared: PreparedData, n: int) -> PreparedData | None:
    """The stored copy of ``prepared`` (``reused=True``) when its manifest exists, else None."""
    manifest = layout.data_manifest(prepared.key)
    if not store.exists(manifest):
        return None
    existing = PreparedData.from_dict(store.read_json(manifest))
    logger.info("reusing prepared data %s in %s (%d rows)", prepared.key, store.url, n)
    return dataclasses.replace(existing, reused=True)


def _content_key(
    data_hash: str,
    features: tuple[str, ...],
    labels: tuple[str, ...],
    feature_shapes: dict[str, tuple[int, ...]],
    label_shapes: dict[str, tuple[int, ...]],
    label_dtypes: dict[str, str],
    validation: dict[str, Any],
    num_partitions: int,
    seed: int,
) -> str:
    spec = {
        "format_version": FORMAT_VERSION,
        "data_hash": data_hash,
        "feature_columns": list(features),
        "label_columns": list(labels),
        "feature_shapes": [list(feature_shapes[c]) for c in features],
        "label_shapes": [list(label_shapes[c]) for c in labels],
        "label_dtypes": [label_dtypes[c] for c in labels],
        "validation": validation,
        "num_partitions": num_partitions,
        "seed": seed,
    }
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:24]


def _is_spark_dataframe(data: Any) -> bool:
    """Whether ``data`` is a Spark DataFrame (classic or Spark Connect), without importing pyspark."""
    return any(
        cls.__name__ == "DataFrame" and cls.__module__.startswith("pyspark.sql") for cls in type(data).__mro__
    )


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
    executors, see :mod:`cerebro.data_spark`; the result is identical to the
    pandas path's for the same rows). ``validation``: the fraction of rows
    held out (Python's ``round(validation * n)`` rows, at least 1) or the name
    of a boolean column whose True rows are the validation set.

    Raises ``ValueError`` (naming the argument or column) for bad input before
    anything is written, ``TypeError`` for an unsupported ``data`` or ``store``.
    """
    t0 = time.perf_counter()
    req = _check_request(store, feature_columns, label_columns, validation, num_partitions, seed)
    if _is_spark_dataframe(data):
        from cerebro.data_spark import prepare_spark_data

        return prepare_spark_data(data, store, req)

    source = _open_source(data, req.wanted)
    _check_known(source.names, req.wanted)
    n = source.num_rows
    if n == 0:
        raise _no_rows_error()

    columns = [source.column(c, "feature") for c in req.features] + [source.column(c, "label") for c in req.labels]
    flags = source.flags(req.val_column) if req.val_column is not None else None

    # --- content hash, order, split
    hash_inputs = [c.values for c in columns] + ([flags] if flags is not None else [])
    h1, h2 = _hash_columns(hash_inputs, [req.seed, _tiebreak_seed(req.seed)])
    order = np.lexsort((h2, h1))
    if flags is None:
        n_val = req.num_val_rows(n)
        val_idx, train_idx = order[:n_val], order[n_val:]
    else:
        in_val = flags[order]
        val_idx, train_idx = order[in_val], order[~in_val]
    _check_split(req, n, len(val_idx))

    data_hash = multiset_digest(multiset_lanes(h1, h2), n)
    described = [(c.name, c.role, c.shape, c.is_integer) for c in columns]
    prepared = _describe_prepared(req, described, n, len(val_idx), data_hash)
    t_hash = time.perf_counter()

    existing = _find_existing(store, prepared, n)
    if existing is not None:
        return existing

    P = req.num_partitions
    parts = {"train": [train_idx[p::P] for p in range(P)], "val": [val_idx[p::P] for p in range(P)]}

    def write_files(tmp_dir: str) -> None:
        import pyarrow.parquet as pq

        fs, root = store.arrow_filesystem()
        for split in layout.SPLITS:
            store.makedirs(f"{tmp_dir}/{split}")
            for p, rows in enumerate(parts[split]):
                table = _partition_table(prepared, columns, rows)
                pq.write_table(table, f"{root}/{_part_path(tmp_dir, prepared.key, split, p)}", filesystem=fs,
                               row_group_size=_row_group_rows(prepared))

    _publish(store, prepared, write_files)
    logger.info(
        "prepared data %s in %s: %d training rows in %d partitions, %d validation rows "
        "(validate+hash %.2fs, write %.2fs)",
        prepared.key, store.url, len(train_idx), P, len(val_idx), t_hash - t0, time.perf_counter() - t_hash,
    )
    return prepared


# ---------------------------------------------------------------------------- write


def _part_path(tmp_dir: str, key: str, split: str, partition: int) -> str:
    """Store path of one partition file inside the temporary directory ``tmp_dir`` of data set ``key``."""
    # Relative name inside the data set, from layout so naming stays in one place.
    return f"{tmp_dir}/{layout.data_part(key, split, partition)[len(layout.data_dir(key)) + 1:]}"


def _row_group_rows(prepared: PreparedData) -> int:
    """Rows per Parquet row group: about ``_ROW_GROUP_BYTES`` of values, a function of the schema only.

    Both paths write with it, so the files are byte-identical; and a writer
    never needs more than one row group in memory.
    """
    width = sum(4 * int(np.prod(s, dtype=np.int64)) for s in prepared.feature_shapes.values())
    width += sum(
        np.dtype(prepared.label_dtypes[c]).itemsize * int(np.prod(prepared.label_shapes[c], dtype=np.int64))
        for c in prepared.label_columns
    )
    return int(min(_MAX_GROUP_ROWS, max(_MIN_GROUP_ROWS, _ROW_GROUP_BYTES // max(width, 1))))


def _column_dtype(prepared: PreparedData, name: str) -> np.dtype:
    """The stored dtype of a column: float32 for features, ``label_dtypes`` for labels."""
    return np.dtype(prepared.label_dtypes[name]) if name in prepared.label_dtypes else np.dtype(np.float32)


def _column_shape(prepared: PreparedData, name: str) -> tuple[int, ...]:
    return prepared.label_shapes[name] if name in prepared.label_shapes else prepared.feature_shapes[name]


def _arrow_array(values: np.ndarray, shape: tuple[int, ...]) -> "pa.Array":
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    if shape == ():
        return pa.array(values)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), shape[0])


def _canonical_table(prepared: PreparedData, values: dict[str, np.ndarray]) -> "pa.Table":
    """The stored Arrow table of some rows: features then labels, in order, as the partition files hold them.

    ``values[c]`` has shape ``(n, *shape)`` in any numeric dtype; it is cast to
    the stored dtype (features float32, labels int64/float32); arrays become
    ``fixed_size_list``; every field is non-nullable.
    """
    import pyarrow as pa

    arrays, fields = [], []
    for name in (*prepared.feature_columns, *prepared.label_columns):
        arr = _arrow_array(values[name].astype(_column_dtype(prepared, name), copy=False), _column_shape(prepared, name))
        arrays.append(arr)
        fields.append(pa.field(name, arr.type, nullable=False))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _partition_table(prepared: PreparedData, columns: list[_Column], rows: np.ndarray) -> "pa.Table":
    """The Arrow table of one partition: the given ``rows`` of the validated ``columns``."""
    return _canonical_table(prepared, {c.name: c.values[rows] for c in columns})


def _publish(store: Store, prepared: PreparedData, write_files: Any) -> None:
    """Publish a data set: ``write_files(tmp_dir)`` writes every partition file under a temporary
    directory, which is then renamed into place; the manifest is written last.

    A crash or an error leaves no directory that looks complete (the temporary
    one is removed); losing a publish race to an equivalent copy is fine.
    """
    key = prepared.key
    final_dir = layout.data_dir(key)
    tmp_dir = f"data/.tmp-{key}-{uuid.uuid4().hex}"
    try:
        write_files(tmp_dir)
        try:
            store.rename(tmp_dir, final_dir)
        except FileExistsError:
            # Another process published the same content first: its copy is equivalent, keep it.
            logger.info("prepared data %s was published concurrently; discarding this copy", key)
            store.delete(tmp_dir)
    except BaseException:
        try:
            store.delete(tmp_dir)
        except Exception:  # noqa: BLE001 - best effort; the original error matters
            logger.warning("could not remove temporary directory %s in %s", tmp_dir, store.url, exc_info=True)
        raise
    # Written last: a data directory without a manifest is not complete. The content is
    # deterministic for a key, so writing it again (a concurrent or recovering writer) is harmless.
    manifest = layout.data_manifest(key)
    if not store.exists(manifest):
        store.write_json(manifest, prepared.to_dict())


# ---------------------------------------------------------------------------- load


def load_partition(store: Store, prepared: PreparedData, split: str, partition: int) -> PartitionData:
    """Read one split of one partition into memory (rows in the stored hash order).

    Called by a worker once per experiment for its own partitions; blocks on
    I/O; read-only and idempotent. Raises ``ValueError`` for a bad ``split`` or
    ``partition`` and ``CerebroError`` when the prepared data is missing.
    """
    import pyarrow.parquet as pq

    if split not in layout.SPLITS:
        raise ValueError(f"split must be one of {layout.SPLITS}; got {split!r}")
    partition = _check_int_arg(partition, "partition", minimum=0)
    if partition >= prepared.num_partitions:
        raise ValueError(
            f"partition must be in [0, {prepared.num_partitions}) for data {prepared.key}; got {partition}"
        )
    path = layout.data_part(prepared.key, split, partition)
    if not store.exists(layout.data_manifest(prepared.key)) or not store.exists(path):
        raise CerebroError(
            f"prepared data {prepared.key} is missing or incomplete in {store.url} (no {path!r}); "
            "run prepare_data() again with the same store"
        )
    fs, root = store.arrow_filesystem()
    names = list(prepared.feature_columns) + list(prepared.label_columns)
    table = pq.read_table(f"{root}/{path}", filesystem=fs, columns=names, use_threads=True)
    n = table.num_rows
    features = {
        c: _to_numpy(table.column(c), prepared.feature_shapes[c], np.dtype(np.float32), n)
        for c in prepared.feature_columns
    }
    labels = {
        c: _to_numpy(table.column(c), prepared.label_shapes[c], np.dtype(prepared.label_dtypes[c]), n)
        for c in prepared.label_columns
    }
    return PartitionData(features=features, labels=labels, num_rows=n)


def _to_numpy(col: Any, shape: tuple[int, ...], dtype: np.dtype, n: int) -> np.ndarray:
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if shape != ():
        arr = arr.flatten()
    out = arr.to_numpy(zero_copy_only=False).reshape((n, *shape))
    # Arrow-backed views are read-only; hand out plain owned arrays so callers may shuffle in place.
    return np.array(out, dtype=dtype, copy=True, order="C")
