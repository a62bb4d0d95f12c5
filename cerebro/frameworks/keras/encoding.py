"""Names and encodings of losses, metrics and optimizers: what travels to a worker instead of a
live Keras object, and the names Keras reports them under.

Keras Loss / Metric / Optimizer instances are sent as (class by reference, ``get_config()``),
so every compiled model gets fresh objects (a Metric instance holds accumulated state); plain
functions are pickled by reference; strings as they are.  Nested lists/dicts are kept for
multi-output models.  :func:`encode` gives that picklable form, :func:`decode` rebuilds fresh
objects from it and :func:`encode_key` its JSON-able identity (for ``arch_key``).

:func:`compiled_metric_names` predicts the keys of ``model.fit(...).history`` without
compiling anything.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Mapping, Sequence

import keras

from ...errors import CerebroError
from ..base import snake_case

__all__ = [
    "describe",
    "object_name",
    "qualified_name",
    "custom_scope",
    "flatten",
    "encode",
    "decode",
    "encode_key",
    "fresh_optimizer",
    "row_weighted_metric",
    "compiled_metric_names",
]


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------


def describe(value: Any) -> str:
    """A short description of a bad argument value for error messages."""
    if value is None or isinstance(value, (bool, numbers.Number, str)):
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."
    return f"an object of type {type(value).__module__}.{type(value).__qualname__}"


def object_name(obj: Any) -> str:
    """The name Keras gives a metric/loss object (keras.src.utils.naming.get_object_name)."""
    if isinstance(obj, str):
        return obj
    if hasattr(obj, "name") and isinstance(obj.name, str):
        return obj.name
    if hasattr(obj, "__name__"):
        return snake_case(obj.__name__)
    return snake_case(type(obj).__name__)


def qualified_name(obj: Any) -> str:
    """``module.QualName`` of a class or function (its identity in an ``arch_key``)."""
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def custom_scope(custom_objects: Mapping[str, Any] | None):
    """A Keras custom-object scope holding ``custom_objects`` (a context manager).

    Each object is also listed under its registered name (``package>Name``, from
    ``@keras.saving.register_keras_serializable``): a worker process never runs the user's
    script, so its decorators never registered anything there, and a model config names a
    registered class by that name.
    """
    return keras.saving.custom_object_scope(with_registered_names(custom_objects))


def with_registered_names(custom_objects: Mapping[str, Any] | None) -> dict[str, Any]:
    """``custom_objects`` plus each object under its registered Keras name (``package>Name``).

    Called in the driver, where the user's ``@register_keras_serializable`` decorators ran: a
    class shipped by value to a worker is a new class object the worker's registry never saw.
    """
    scope = dict(custom_objects or {})
    for obj in list(scope.values()):
        try:
            registered = keras.saving.get_registered_name(obj)
        except Exception:  # noqa: BLE001 - not a class or function Keras can name
            continue
        scope.setdefault(registered, obj)
    return scope


def flatten(items: Any) -> list:
    """The leaves of nested lists, tuples and dicts (dict values), in order."""
    out = []
    for item in items:
        if isinstance(item, (list, tuple)):
            out.extend(flatten(item))
        elif isinstance(item, Mapping):
            out.extend(flatten(list(item.values())))
        else:
            out.append(item)
    return out


# --------------------------------------------------------------------------------------
# encoding of optimizer, loss and metrics (picklable, rebuilt fresh in every process)
# --------------------------------------------------------------------------------------


def _encode_item(obj: Any) -> tuple:
    if obj is None:
        return ("none",)
    if isinstance(obj, str):
        return ("str", obj)
    if isinstance(obj, (keras.losses.Loss, keras.metrics.Metric)):
        return ("obj", type(obj), obj.get_config())
    if callable(obj):
        return ("fn", obj)
    raise TypeError(f"cannot encode {describe(obj)}")


def encode(obj: Any) -> tuple:
    """The picklable form of a loss/metrics argument (nested lists and dicts kept)."""
    if isinstance(obj, Mapping):
        return ("dict", [(str(k), encode(v)) for k, v in obj.items()])
    if isinstance(obj, (list, tuple)):
        return ("list", [encode(v) for v in obj])
    return _encode_item(obj)


def decode(enc: tuple, *, metric: bool) -> Any:
    """Fresh objects from :func:`encode`'s form; with ``metric``, plain functions are wrapped
    by :func:`row_weighted_metric`."""
    kind = enc[0]
    if kind == "none":
        return None
    if kind == "str":
        return enc[1]
    if kind == "obj":
        return enc[1].from_config(enc[2])
    if kind == "fn":
        return row_weighted_metric(enc[1]) if metric else enc[1]
    if kind == "list":
        return [decode(e, metric=metric) for e in enc[1]]
    if kind == "dict":
        return {k: decode(e, metric=metric) for k, e in enc[1]}
    raise CerebroError(f"Unknown encoded loss/metric entry {kind!r}.")


def encode_key(enc: tuple) -> Any:
    """JSON-able identity of an encoded entry, for arch_key."""
    kind = enc[0]
    if kind in ("none", "str"):
        return list(enc)
    if kind == "obj":
        return ["obj", qualified_name(enc[1]), enc[2]]
    if kind == "fn":
        return ["fn", qualified_name(enc[1])]
    if kind == "list":
        return ["list", [encode_key(e) for e in enc[1]]]
    return ["dict", [[k, encode_key(e)] for k, e in enc[1]]]


def fresh_optimizer(optimizer: Any) -> Any:
    """A new optimizer of the same class and config (or resolved from its name); no state."""
    if isinstance(optimizer, str):
        return keras.optimizers.get(optimizer)
    return type(optimizer).from_config(optimizer.get_config())


def row_weighted_metric(fn: Callable) -> Any:
    """Wrap a plain metric function so that Keras averages it over rows.

    Keras averages a function's return value element-wise: per-row values give a row-weighted
    mean, but a function that already reduces a batch to a scalar would be weighted per batch
    (the partial last batch counting as much as a full one). Broadcasting a scalar to the batch
    makes every metric a row-weighted mean, as cerebro promises.
    """
    ops = keras.ops

    def per_row(y_true, y_pred, **kwargs):
        values = ops.convert_to_tensor(fn(y_true, y_pred, **kwargs))
        if len(values.shape) == 0:
            zeros = ops.zeros_like(y_pred, dtype=values.dtype)
            if len(zeros.shape) > 1:
                zeros = ops.sum(zeros, axis=tuple(range(1, len(zeros.shape))))
            values = zeros + values
        return values

    return keras.metrics.MeanMetricWrapper(per_row, name=object_name(fn))


# --------------------------------------------------------------------------------------
# metric names
# --------------------------------------------------------------------------------------


def _per_output(struct: Any, output_names: Sequence[str], what: str) -> list:
    """Split a loss/metrics argument of a multi-output model into one entry per output."""
    n = len(output_names)
    if isinstance(struct, Mapping):
        unknown = set(struct) - set(output_names)
        if unknown:
            raise ValueError(
                f"The '{what}' parameter of KerasEstimator names outputs {sorted(unknown)} "
                f"that the model does not have; its outputs are {list(output_names)}."
            )
        return [struct.get(name) for name in output_names]
    if isinstance(struct, (list, tuple)):
        if len(struct) != n:
            raise ValueError(
                f"The '{what}' parameter of KerasEstimator must have one entry per model output "
                f"({n}: {list(output_names)}) or be a dict keyed by output name. "
                f"Got {len(struct)} entries instead."
            )
        return list(struct)
    return [struct] * n


def compiled_metric_names(loss: Any, metrics: Any, output_names: Sequence[str]) -> list[str]:
    """The keys of ``model.fit(...).history`` for this compile, 'loss' first.

    Mirrors keras.src.trainers.compile_utils: metric names as given for strings, ``.name``
    for objects, the snake-cased ``__name__`` for functions; with several outputs, losses and
    metrics are prefixed by the output name; duplicates get ``_1``, ``_2``, ...
    """
    names = ["loss"]
    entries: list[tuple[str | None, Any]] = []
    if len(output_names) <= 1:
        flat = metrics if isinstance(metrics, (list, tuple)) else [metrics]
        entries = [(None, m) for m in flatten(flat) if m is not None]
    else:
        losses = _per_output(loss, output_names, "loss")
        with_loss = [out for out, item in zip(output_names, losses) if item is not None]
        if len(with_loss) > 1:
            names.extend(f"{out}_loss" for out in with_loss)
        if metrics:
            for out, item in zip(output_names, _per_output(metrics, output_names, "metrics")):
                items = item if isinstance(item, (list, tuple)) else [item]
                entries.extend((out, m) for m in flatten(items) if m is not None)
    counters: dict[str, int] = {}
    for out, metric in entries:
        name = object_name(metric)
        if out:
            name = f"{out}_{name}"
        if name in counters:
            index = counters[name]
            counters[name] += 1
            name = f"{name}_{index}"
        else:
            counters[name] = 1
        names.append(name)
    return names
