"""The rules of data preparation shared by the pandas/Arrow path and the Spark path: checks and messages.

:func:`cerebro.data.prepare_data` checks its arguments into a
:class:`PrepareRequest` (:func:`check_request`) before it looks at the data,
whichever way the data arrives. Both preparation paths (:mod:`cerebro.data.arrow`
and :mod:`cerebro.data.spark`) then refuse bad data with the error builders
below, so the same data gives the same ``ValueError``, word for word, as a
pandas DataFrame, a Parquet path or a Spark DataFrame.

Pure: no I/O, no pyarrow or pyspark import.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from cerebro._checks import check_int
from cerebro.storage.base import Store

__all__ = [
    "PrepareRequest",
    "bad_rows_error",
    "check_known",
    "check_request",
    "check_split",
    "duplicate_column_error",
    "empty_arrays_error",
    "example",
    "flags_null_error",
    "flags_type_error",
    "is_spark_dataframe",
    "no_rows_error",
    "non_numeric_error",
    "ragged_error",
]

_ROLE_ARG = {"feature": "feature_columns", "label": "label_columns", "validation": "validation"}


# ---------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class PrepareRequest:
    """The checked arguments of :func:`cerebro.data.prepare_data`, shared by the pandas/Arrow and the Spark paths."""

    features: tuple[str, ...]
    labels: tuple[str, ...]
    num_partitions: int
    seed: int
    fraction: float | None
    val_column: str | None

    @property
    def wanted(self) -> dict[str, list[str]]:
        """The columns the data must have, per argument name (for :func:`check_known`)."""
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


def is_spark_dataframe(data: Any) -> bool:
    """Whether ``data`` is a Spark DataFrame (classic or Spark Connect), without importing pyspark."""
    return any(
        cls.__name__ == "DataFrame" and cls.__module__.startswith("pyspark.sql") for cls in type(data).__mro__
    )


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


def check_request(
    store: Any,
    feature_columns: Any,
    label_columns: Any,
    validation: Any,
    num_partitions: Any,
    seed: Any,
) -> PrepareRequest:
    """Check :func:`cerebro.data.prepare_data`'s arguments (not the data); ValueError/TypeError naming the bad one."""
    features = _check_columns_arg(feature_columns, "feature_columns")
    labels = _check_columns_arg(label_columns, "label_columns")
    both = [c for c in features if c in labels]
    if both:
        raise ValueError(
            f"column {both[0]!r} is in both feature_columns and label_columns; a column is either a model "
            "input or an output"
        )
    num_partitions = check_int("prepare_data", "num_partitions", num_partitions)
    seed = check_int("prepare_data", "seed", seed, minimum=None)
    fraction, val_column = _check_validation_arg(validation, features, labels)
    if not isinstance(store, Store):
        raise TypeError(f"store must be a cerebro Store (e.g. LocalStore(path)); got {type(store).__name__}")
    return PrepareRequest(features, labels, num_partitions, seed, fraction, val_column)


# ---------------------------------------------------------------------------- data checks


def _describe_columns(names: Sequence[Any], limit: int = 60) -> str:
    """The data's columns as a Python list, cut after ``limit`` names (wide tables)."""
    shown = ", ".join(repr(str(n)) for n in list(names)[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names) - limit} more)"
    return f"[{shown}]"


def check_known(names: Sequence[Any], wanted: dict[str, list[str]]) -> None:
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


def check_split(req: PrepareRequest, n: int, n_val: int) -> None:
    """Refuse a split without validation rows (column) or with fewer training rows than partitions."""
    if req.val_column is not None and n_val == 0:
        raise _no_true_rows_error(req.val_column)
    if n - n_val < req.num_partitions:
        raise _too_few_training_rows_error(n - n_val, req.num_partitions, n, n_val)


def example(values: Any) -> str:
    """A short repr of the first non-null value, for error messages."""
    try:
        for v in values:
            if v is not None and not (isinstance(v, float) and v != v):
                text = repr(v)
                return text if len(text) <= 40 else text[:37] + "..."
    except Exception:  # noqa: BLE001 - only decorates a message
        pass
    return "?"


# ---------------------------------------------------------------------------- messages of refused input


def ragged_error(role: str, name: str, lengths: Sequence[int], counts: Sequence[int]) -> ValueError:
    """Arrays of different ``lengths`` (``counts[i]`` rows each): the six most common are listed."""
    counts_arr = np.asarray(counts, dtype=np.int64)
    order = np.argsort(-counts_arr, kind="stable")[:6]
    listing = ", ".join(f"{int(lengths[i])} ({int(counts_arr[i])} rows)" for i in order)
    return ValueError(
        f"{role} column {name!r} holds arrays of different lengths: {listing}; every row must have "
        "the same length (pad or truncate them before fit())"
    )


def empty_arrays_error(role: str, name: str) -> ValueError:
    """A column of arrays with no values."""
    return ValueError(f"{role} column {name!r} holds empty arrays; every row needs at least one value")


def duplicate_column_error(name: str, role: str) -> ValueError:
    """A wanted column name that the data has more than once."""
    return ValueError(f"{role} column {name!r} appears more than once in the data; rename the duplicates")


def flags_type_error(name: str, dtype: str) -> ValueError:
    """A validation column that is not boolean."""
    return ValueError(
        f"validation column {name!r} must be boolean (True marks validation rows); it has dtype {dtype}. "
        "Pass a bool column, or a fraction such as validation=0.25"
    )


def flags_null_error(name: str, count: int) -> ValueError:
    """A validation column with ``count`` null rows."""
    return ValueError(
        f"validation column {name!r} has {count} {'row' if count == 1 else 'rows'} with null (missing) "
        "values; mark every row True (validation) or False (training)"
    )


def no_rows_error() -> ValueError:
    """Data without rows."""
    return ValueError("data has no rows; model selection needs training and validation rows")


def _no_true_rows_error(name: str) -> ValueError:
    return ValueError(f"validation column {name!r} has no True rows; the validation set needs at least one row")


def _too_few_training_rows_error(n_train: int, num_partitions: int, n: int, n_val: int) -> ValueError:
    return ValueError(
        f"only {n_train} training rows for num_partitions={num_partitions} (one partition per worker, "
        f"each needs at least one row; {n} rows, {n_val} for validation); use at most "
        f"{max(n_train, 1)} workers or provide more data"
    )


def bad_rows_error(role: str, name: str, count: int) -> ValueError:
    """A column with ``count`` rows holding NaN, null or infinite values."""
    rows = "row" if count == 1 else "rows"
    return ValueError(
        f"{role} column {name!r} has {count} {rows} with NaN, null (missing) or infinite values; "
        "clean or drop them before fit()"
    )


def non_numeric_error(role: str, name: str, dtype: str, example: str, detail: str = "") -> ValueError:
    """A column that holds neither numbers nor fixed-length arrays of numbers (``example``: one of its values)."""
    detail = f" ({detail})" if detail else ""
    return ValueError(
        f"{role} column {name!r} has dtype {dtype} (e.g. {example}){detail}; expected numbers (int, float, bool) "
        "or fixed-length arrays of numbers. Encode it numerically or leave it out of "
        f"{_ROLE_ARG.get(role, 'the columns')}"
    )
