"""One input column of a pandas DataFrame or an Arrow table, validated and converted to numpy.

The pandas/Arrow path (:mod:`cerebro.data.arrow`) and :func:`cerebro.data.row_hashes`
read every wanted column through :func:`column_from_pandas` or
:func:`column_from_arrow`: numbers (int, float, bool) become an ``(n,)`` array,
fixed-length arrays of numbers an ``(n, d)`` array, in their original numeric
dtype; anything else raises the shared messages of :mod:`cerebro.data.rules`
(the Spark path checks the same rules on Spark types and batch statistics).
A validation column goes through :func:`flags_from_arrow`.

pyarrow is imported when a column is converted, not before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .rules import (
    bad_rows_error,
    empty_arrays_error,
    example,
    flags_null_error,
    flags_type_error,
    non_numeric_error,
    ragged_error,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow as pa

__all__ = ["Column", "column_from_arrow", "column_from_pandas", "flags_from_arrow"]


@dataclass
class Column:
    """A validated numeric input column: values of shape (n,) or (n, d), original numeric dtype."""

    name: str
    role: str
    values: np.ndarray
    shape: tuple[int, ...]
    is_integer: bool


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


def column_from_arrow(arr: Any, name: str, role: str, dtype_label: str) -> Column:
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
            raise bad_rows_error(role, name, _count_nonfinite_rows(values))
        values = arr.to_numpy(zero_copy_only=False)
        bad = _count_nonfinite_rows(values)
        if bad:
            raise bad_rows_error(role, name, bad)
        return Column(name, role, values, (), not pa.types.is_floating(t))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        vt = t.value_type
        if not _is_numeric_arrow(vt):
            raise non_numeric_error(role, name, dtype_label, example(arr.slice(0, 5).to_pylist()),
                                    f"arrays of {vt}")
        if arr.null_count:
            raise bad_rows_error(role, name, arr.null_count)
        if pa.types.is_fixed_size_list(t):
            d = t.list_size
        else:
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            found, counts = np.unique(lengths, return_counts=True)
            if len(found) > 1:
                raise ragged_error(role, name, found, counts)
            d = int(found[0]) if len(found) else 0
        if d == 0:
            raise empty_arrays_error(role, name)
        flat = arr.flatten()
        if flat.null_count:
            flat_values = flat.cast(pa.float64()).to_numpy(zero_copy_only=False).reshape(n, d)
            raise bad_rows_error(role, name, _count_nonfinite_rows(flat_values))
        values = flat.to_numpy(zero_copy_only=False).reshape(n, d)
        bad = _count_nonfinite_rows(values)
        if bad:
            raise bad_rows_error(role, name, bad)
        return Column(name, role, values, (d,), not pa.types.is_floating(vt))
    raise non_numeric_error(role, name, dtype_label, example(arr.slice(0, 5).to_pylist()))


def column_from_pandas(series: Any, name: str, role: str) -> Column:
    """Validate and convert a pandas Series: numpy numeric dtypes directly, anything else through Arrow."""
    import pyarrow as pa

    dtype = series.dtype
    if isinstance(dtype, np.dtype):
        if dtype.kind in "biuf":
            values = series.to_numpy()
            bad = _count_nonfinite_rows(values)
            if bad:
                raise bad_rows_error(role, name, bad)
            return Column(name, role, values, (), dtype.kind != "f")
        if dtype.kind != "O":
            # datetimes, timedeltas, complex, bytes: not model inputs.
            raise non_numeric_error(role, name, str(dtype), example(series.iloc[:5]))
    # Object or extension dtype: Arrow infers lists of numbers, nullable ints, strings, ...
    try:
        arr = pa.array(series, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError) as exc:
        raise non_numeric_error(role, name, str(dtype), example(series.iloc[:5]), str(exc).split("\n")[0]) from None
    return column_from_arrow(arr, name, role, str(dtype))


def flags_from_arrow(arr: Any, name: str, dtype_label: str) -> np.ndarray:
    """Validate and convert the validation column (boolean, no nulls) of an Arrow (chunked) array."""
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_boolean(arr.type):
        raise flags_type_error(name, dtype_label)
    if arr.null_count:
        raise flags_null_error(name, arr.null_count)
    return arr.to_numpy(zero_copy_only=False).astype(bool, copy=False)
