"""Feature and label columns to model inputs and targets: numpy only, shared by every adapter.

A single-input model gets the listed feature columns concatenated in order (a scalar column
is one value per row, an array column d values), reshaped to the model's input shape when the
sizes match (64 -> (8, 8, 1)).  A multi-input model gets one column per input, in order, each
reshaped to its input.  Targets are one label column per model output.  Mismatches raise
CerebroError naming the input shape and the column widths.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import CerebroError

__all__ = ["column", "as_2d", "input_dtype", "reshape_to", "input_shapes", "feature_arrays", "label_count_problem",
           "target_arrays", "num_rows", "take"]


def column(data: Mapping[str, Any], name: str, what: str) -> np.ndarray:
    """Column ``name`` of ``data`` as one numpy array (a column of arrays is stacked)."""
    try:
        values = data[name]
    except KeyError:
        raise CerebroError(f"The {what} column {name!r} is missing; available columns: {sorted(data)}.") from None
    array = np.asarray(values)
    if array.dtype == object:  # e.g. a pandas column of lists / arrays
        try:
            array = np.stack([np.asarray(v) for v in array])
        except ValueError as exc:
            raise CerebroError(f"The {what} column {name!r} holds arrays of different lengths: {exc}") from None
    return array


def as_2d(array: np.ndarray) -> np.ndarray:
    """(n,) -> (n, 1); (n, a, b) -> (n, a*b)."""
    if array.ndim == 0:
        raise CerebroError("A column holds a single scalar, not one value per row.")
    if array.ndim == 1:
        return array.reshape(-1, 1)
    if array.ndim > 2:
        return array.reshape(array.shape[0], -1)
    return array


def input_dtype(dtype: Any) -> np.dtype:
    """The numpy dtype fed to an input declared as ``dtype``: integer and boolean inputs keep
    theirs, everything else is float32."""
    dt = np.dtype(dtype) if dtype else np.dtype("float32")
    return dt if dt.kind in "iub" else np.dtype("float32")


def reshape_to(array: np.ndarray, shape: Sequence[int | None], describe: Callable[[], str]) -> np.ndarray:
    """``array`` (n, width) reshaped to (n, *shape); CerebroError when the sizes do not fit."""
    shape = tuple(shape)
    n, width = array.shape
    if all(d is not None for d in shape):
        size = int(np.prod(shape)) if shape else 1
        if size != width:
            raise CerebroError(
                f"The model input of shape {shape} needs {size} values per row, but {describe()} give {width}."
            )
        return array.reshape((n, *shape))
    known = int(np.prod([d for d in shape if d is not None])) if shape else 1
    if sum(d is None for d in shape) == 1 and width % known == 0:
        return array.reshape((n, *[-1 if d is None else d for d in shape]))
    if len(shape) == 1:
        return array
    raise CerebroError(f"Cannot shape {describe()} ({width} values per row) into the model input of shape {shape}.")


def input_shapes(num_inputs: int, feature_columns: Sequence[str],
                 column_shapes: Mapping[str, Sequence[int]]) -> list[tuple[int, ...]]:
    """The shapes of a model's inputs (without the batch dimension) for these feature columns.

    ``column_shapes`` maps a column to the shape of its values per row (``()`` for a number).
    One input: the columns concatenated, ``[(total width,)]``.  Several inputs: one column per
    input, in order, each column's own shape (a number is ``(1,)``); ValueError naming the
    columns when their count is not the number of inputs.
    """
    columns = list(feature_columns)
    if num_inputs == 1:
        return [(sum(int(np.prod(column_shapes[c], dtype=np.int64)) for c in columns),)]
    if len(columns) != num_inputs:
        raise ValueError(
            f"The model has {num_inputs} inputs and takes one feature column per input, in order; "
            f"feature_columns lists {len(columns)}: {columns}. Give {num_inputs} feature columns "
            "(a single-input model is the one that gets the listed columns concatenated)."
        )
    return [tuple(int(d) for d in column_shapes[c]) or (1,) for c in columns]


def feature_arrays(
    shapes: Sequence[Sequence[int | None]], dtypes: Sequence[Any], features: Mapping[str, Any], feature_columns: Sequence[str]
) -> np.ndarray | list[np.ndarray]:
    """The input array (one input) or list of arrays (several) for a model with input ``shapes``."""
    if isinstance(feature_columns, str):
        feature_columns = [feature_columns]
    columns = list(feature_columns)
    if not columns:
        raise CerebroError("No feature columns were given.")
    arrays = [as_2d(column(features, c, "feature")) for c in columns]
    rows = {a.shape[0] for a in arrays}
    if len(rows) > 1:
        raise CerebroError(
            f"The feature columns have different numbers of rows: {dict(zip(columns, [a.shape[0] for a in arrays]))}."
        )
    if len(shapes) == 1:
        dtype = input_dtype(dtypes[0] if dtypes else None)
        x = np.concatenate([a.astype(dtype, copy=False) for a in arrays], axis=1)
        widths = ", ".join(f"{c!r} (width {a.shape[1]})" for c, a in zip(columns, arrays))
        return reshape_to(x, shapes[0], lambda: f"the feature columns {widths}")
    if len(columns) != len(shapes):
        raise CerebroError(
            f"The model has {len(shapes)} inputs {[tuple(s) for s in shapes]} and needs one "
            f"feature column per input, in order; got {len(columns)} columns {columns}."
        )
    out = []
    for name, array, shape, dtype in zip(columns, arrays, shapes, dtypes):
        array = np.ascontiguousarray(array, dtype=input_dtype(dtype))
        describe = lambda c=name, a=array: f"the feature column {c!r} (width {a.shape[1]})"  # noqa: E731
        out.append(reshape_to(array, shape, describe))
    return out


def label_count_problem(num_outputs: int, label_columns: Sequence[str]) -> str | None:
    """What is wrong when a model with ``num_outputs`` outputs gets these label columns (one per
    output, in order), or None when they fit."""
    columns = list(label_columns)
    if len(columns) == num_outputs:
        return None
    return (f"The model has {num_outputs} output(s) and needs one label column per output, in order; "
            f"got {len(columns)} label columns {columns}.")


def target_arrays(num_outputs: int, labels: Mapping[str, Any], label_columns: Sequence[str]) -> np.ndarray | list[np.ndarray]:
    """The target array (one output) or list (several): one label column per output, in order;
    float labels are float32."""
    if isinstance(label_columns, str):
        label_columns = [label_columns]
    columns = list(label_columns)
    problem = label_count_problem(num_outputs, columns)
    if problem:
        raise CerebroError(problem)
    targets = []
    for name in columns:
        array = column(labels, name, "label")
        if array.dtype.kind == "f" and array.dtype != np.float32:
            array = array.astype(np.float32)
        targets.append(array)
    return targets[0] if num_outputs == 1 else targets


def num_rows(x: Any) -> int:
    """Rows of an input: an array, or the first of a list of arrays."""
    first = x[0] if isinstance(x, (list, tuple)) else x
    return int(np.shape(first)[0])


def take(data: Any, index: np.ndarray) -> Any:
    """Rows ``index`` of an array, a list of arrays or a dict of arrays."""
    if isinstance(data, (list, tuple)):
        return [np.asarray(d)[index] for d in data]
    if isinstance(data, Mapping):
        return {k: np.asarray(v)[index] for k, v in data.items()}
    return np.asarray(data)[index]
