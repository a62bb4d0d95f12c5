"""Feature and label columns to model inputs and targets: numpy only, shared by every adapter.

A single-input model gets the listed feature columns concatenated in order (a scalar column
is one value per row, an array column d values), reshaped to the model's input shape when the
sizes match (64 -> (8, 8, 1)).  A multi-input model gets one column per input, in order, each
reshaped to its input.  Targets are one label column per model output.  Mismatches raise
CerebroError naming the input shape and the column widths.

Labels are checked against the losses that use them (:func:`check_label_fit`) before any
training: class indices in range of the output, one-hot width, binary labels in [0, 1].
A label column that does not fit its model raises :class:`LabelMismatch`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import CerebroError

__all__ = ["column", "as_2d", "input_dtype", "reshape_to", "input_shapes", "feature_arrays", "label_count_problem",
           "target_arrays", "num_rows", "take", "LabelMismatch", "LabelUse", "label_stats_of", "label_fit_problems",
           "check_label_fit"]


class LabelMismatch(CerebroError, ValueError):
    """The label columns do not fit the model's outputs or losses: one label column per output,
    class indices in range of the output, one-hot labels as wide as it, binary labels in [0, 1].

    A property of the data and the model, not of a run, so no retry can fix it: the driver
    refuses the whole fit when the first configuration hits it, and records a failed
    configuration for a later one (:meth:`ExperimentWorkspace.create_model`)."""


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
        raise LabelMismatch(problem)
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



# ---------------------------------------------------------------------------- labels vs losses


@dataclass(frozen=True)
class LabelUse:
    """How one model output's loss uses its label column, for :func:`check_label_fit`.

    ``kind``: ``"class"`` (class indices in ``[0, classes)``: sparse categorical cross entropy,
    torch's ``cross_entropy``/``nll`` with index targets), ``"onehot"`` (one value per class:
    categorical cross entropy), ``"binary"`` (values in [0, 1]: binary cross entropy).
    ``output`` describes the output for messages ("The model's output 'dense' of shape (None,
    10)"); ``classes`` is its number of class scores (None: unknown, not checked), ``values``
    its values per row, ``rank`` its number of dimensions with the batch; ``ignore`` a label
    value the loss skips (Keras' ``ignore_class``, torch's ``ignore_index``).
    """

    column: str
    loss: str
    kind: str
    output: str
    classes: int | None = None
    values: int | None = None
    rank: int = 2
    ignore: float | None = None


def label_stats_of(values: Any) -> dict[str, Any] | None:
    """``{"min", "max", "integral", "width"}`` of a label column's values (the same summary as
    ``PreparedData.label_stats``); None for no rows."""
    array = np.asarray(values)
    if array.dtype == object:
        array = np.stack([np.asarray(v) for v in array]) if len(array) else np.zeros((0,))
    if array.ndim == 0 or array.size == 0:
        return None
    width = int(np.prod(array.shape[1:], dtype=np.int64)) if array.ndim > 1 else 1
    v = array.astype(np.float64, copy=False)
    integral = array.dtype.kind in "iub" or bool(np.all(v == np.floor(v)))
    return {"min": float(v.min()), "max": float(v.max()), "integral": integral, "width": width}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _range(stats: Mapping[str, Any]) -> str:
    return f"from {_number(stats['min'])} to {_number(stats['max'])}"


def label_fit_problems(uses: Sequence[LabelUse], stats: Mapping[str, Mapping[str, Any] | None],
                       where: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """``(errors, warnings)``: what does not fit in each :class:`LabelUse`, given each label
    column's ``stats`` (``{"min", "max", "integral", "width"}``; a column without stats is
    not checked) and ``where`` they were taken ("over the whole data set").

    Errors: class indices out of ``[0, classes)`` (values are truncated to integers, as the
    losses do; ``ignore`` is allowed), several values per row for a class-index loss on a 2-d
    output, one value per row (or a width other than the output's) for a one-hot loss, binary
    labels outside [0, 1] (binary cross entropy is unbounded below there: training can only
    diverge).  Warnings: fractional labels for a class-index loss.
    """
    errors: list[str] = []
    notes: list[str] = []
    for use in uses:
        st = stats.get(use.column)
        if not st:
            continue
        at = where.get(use.column, "")
        head = f"{use.output} does not fit label column {use.column!r} with loss {use.loss}"
        lo, hi, width = float(st["min"]), float(st["max"]), int(st.get("width", 1))
        found = f"{_range(st)} {at}".rstrip()
        if use.kind == "class":
            if use.rank == 2 and width > 1:
                errors.append(
                    f"{head}: the loss takes one class index per row, but the column holds {width} values per row "
                    f"({'one-hot labels?' if width == use.classes else 'not a class index'}). Give one integer "
                    "class index per row, or for one-hot labels use a loss that takes them (Keras: "
                    "categorical_crossentropy; torch: cross_entropy with float labels)."
                )
                continue
            if use.classes is not None:
                low_bad = math.trunc(lo) < 0 and lo != use.ignore
                high_bad = math.trunc(hi) >= use.classes and hi != use.ignore
                if low_bad or high_bad:
                    plural = "es" if use.classes != 1 else ""
                    top = math.trunc(hi)
                    if high_bad and not low_bad:
                        fix = (f"give the output one unit per class ({top + 1} for labels up to {top}), or map the "
                               f"labels to 0..{use.classes - 1}")
                    else:
                        fix = f"map the labels to class indices 0..{use.classes - 1}"
                    errors.append(
                        f"{head}: the loss takes class indices in [0, {use.classes}) (the output scores "
                        f"{use.classes} class{plural}), but the labels range {found}; indices out of bounds fail "
                        f"training. Check the label column, or {fix}."
                    )
                    continue
            if not st.get("integral", True):
                notes.append(
                    f"Label column {use.column!r} holds fractional values ({found}), but loss {use.loss} takes "
                    "class indices: they are truncated to integers. Give integer class indices, or use a loss for "
                    "continuous targets."
                )
        elif use.kind == "onehot":
            if use.values is not None and use.values > 1 and width != use.values:
                kind = "integers" if st.get("integral", True) else "values"
                holds = ("one value per row" if width == 1 else f"{width} values per row") + f" ({kind} {found})"
                hint = (" One-hot encode the labels, or use a sparse categorical cross entropy "
                        "(sparse_categorical_crossentropy), which takes class indices." if width == 1 else "")
                errors.append(
                    f"{head}: the loss expects one-hot (or probability) labels of width {use.values} per row, "
                    f"but the column holds {holds}.{hint}"
                )
        elif use.kind == "binary":
            if lo < 0 or hi > 1:
                errors.append(
                    f"{head}: the loss expects labels in [0, 1] (the probability of the positive class), but the "
                    f"labels range {found}; there the loss is unbounded below and training can only diverge. "
                    "Scale the labels to [0, 1], or for class indices use a (sparse) categorical cross entropy with "
                    "one output unit per class."
                )
    return errors, notes


def check_label_fit(uses: Sequence[LabelUse], labels: Mapping[str, Any],
                    label_stats: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Raise :class:`LabelMismatch` when a label column does not fit the loss that uses it, and
    warn (UserWarning) about fractional class indices (:func:`label_fit_problems`).

    ``label_stats`` are the whole data set's (``PreparedData.label_stats``); a column they do
    not cover is summarised from its rows in ``labels`` (the driver's few sample rows)."""
    label_stats = label_stats or {}
    stats: dict[str, Any] = {}
    where: dict[str, str] = {}
    for use in uses:
        name = use.column
        if name in stats:
            continue
        if label_stats.get(name):
            stats[name], where[name] = label_stats[name], "over the whole data set"
        elif name in labels:
            stats[name] = label_stats_of(labels[name])
            rows = len(np.asarray(labels[name]))
            where[name] = f"in the {rows} sample training rows (no statistics of the whole data set)"
    errors, notes = label_fit_problems(uses, stats, where)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    if errors:
        raise LabelMismatch("\n".join(errors))
