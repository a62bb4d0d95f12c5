"""The Keras 3 adapter: what a model is, how it trains one sub-epoch, and how it hops.

Who calls what:

* The driver process calls :class:`KerasEstimator` (built by the user's ``estimator_gen_fn``),
  :meth:`KerasEstimator.make_spec` once per configuration, and :func:`export_model` to hand a
  trained model back to the user.
* A worker process calls :func:`limit_threads` once at start, keeps one :class:`ModelCache`,
  and for every sub-epoch: :meth:`ModelCache.load` (state in), :func:`make_inputs` /
  :func:`make_targets` (once per partition), :func:`train_sub_epoch` or :func:`evaluate`,
  :func:`state_to_bytes` (state out) and :meth:`ModelCache.note_saved`.

The hop is exact: a checkpoint carries every model weight (trainable and not, e.g. BatchNorm
statistics) and every optimizer variable (iteration count, learning rate, slots such as Adam's
moments), and :func:`train_sub_epoch` derives every random choice (row order, dropout masks)
from its ``seed`` argument only. So a model trained by hopping between workers equals, bit for
bit, the model trained in one process on the same data order with the same seeds.

Checkpoints never use Keras' ``model.save`` / ``.weights.h5`` files: they are 2-10x slower per
hop than moving arrays and ``.weights.h5`` silently drops the state of an unbuilt optimizer.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import copy  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import numbers  # noqa: E402
import pickle  # noqa: E402
import re  # noqa: E402
from collections import OrderedDict  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any, Callable, Mapping, Sequence  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from cerebro._checks import check_int  # noqa: E402
from cerebro.core.seeds import layer_seed_values, row_order  # noqa: E402
from cerebro.errors import CerebroError  # noqa: E402

__all__ = [
    "KerasEstimator",
    "ModelSpec",
    "ModelCache",
    "state_to_bytes",
    "state_from_bytes",
    "make_inputs",
    "make_targets",
    "train_sub_epoch",
    "evaluate",
    "export_model",
    "limit_threads",
]

logger = logging.getLogger(__name__)

STATE_FORMAT = "cerebro-keras-state"
STATE_VERSION = 1
CONFIG_VERSION = 1
DEFAULT_CACHE_SIZE = 16

# Metric and loss identifiers that Keras resolves only once it sees the data (compile_utils).
_ACCURACY_ALIASES = ("accuracy", "acc")
_CROSSENTROPY_ALIASES = ("crossentropy", "ce")


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    """A short description of a bad argument value for error messages."""
    if value is None or isinstance(value, (bool, numbers.Number, str)):
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."
    return f"an object of type {type(value).__module__}.{type(value).__qualname__}"


def _param_error(exc_type: type, name: str, expected: str, value: Any) -> Exception:
    return exc_type(
        f"The '{name}' parameter of KerasEstimator must be {expected}. "
        f"Got {_describe(value)} instead."
    )


def _snake_case(name: str) -> str:
    # Same rule as keras.src.utils.naming.to_snake_case: how Keras names function metrics.
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _object_name(obj: Any) -> str:
    """The name Keras gives a metric/loss object (keras.src.utils.naming.get_object_name)."""
    if isinstance(obj, str):
        return obj
    if hasattr(obj, "name") and isinstance(obj.name, str):
        return obj.name
    if hasattr(obj, "__name__"):
        return _snake_case(obj.__name__)
    return _snake_case(type(obj).__name__)


def _qualified_name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _custom_scope(custom_objects: Mapping[str, Any] | None):
    return keras.saving.custom_object_scope(dict(custom_objects or {}))


# --------------------------------------------------------------------------------------
# encoding of optimizer, loss and metrics (picklable, rebuilt fresh in every process)
# --------------------------------------------------------------------------------------
#
# Keras Loss / Metric / Optimizer instances are sent as (class by reference, get_config()),
# so every compiled model gets fresh objects (a Metric instance holds accumulated state);
# plain functions are pickled by reference; strings as they are. Nested lists/dicts are
# kept for multi-output models.


def _encode_item(obj: Any) -> tuple:
    if obj is None:
        return ("none",)
    if isinstance(obj, str):
        return ("str", obj)
    if isinstance(obj, (keras.losses.Loss, keras.metrics.Metric)):
        return ("obj", type(obj), obj.get_config())
    if callable(obj):
        return ("fn", obj)
    raise TypeError(f"cannot encode {_describe(obj)}")


def _encode(obj: Any) -> tuple:
    if isinstance(obj, Mapping):
        return ("dict", [(str(k), _encode(v)) for k, v in obj.items()])
    if isinstance(obj, (list, tuple)):
        return ("list", [_encode(v) for v in obj])
    return _encode_item(obj)


def _decode(enc: tuple, *, metric: bool) -> Any:
    kind = enc[0]
    if kind == "none":
        return None
    if kind == "str":
        return enc[1]
    if kind == "obj":
        return enc[1].from_config(enc[2])
    if kind == "fn":
        return _row_weighted_metric(enc[1]) if metric else enc[1]
    if kind == "list":
        return [_decode(e, metric=metric) for e in enc[1]]
    if kind == "dict":
        return {k: _decode(e, metric=metric) for k, e in enc[1]}
    raise CerebroError(f"Unknown encoded loss/metric entry {kind!r}.")


def _encode_key(enc: tuple) -> Any:
    """JSON-able identity of an encoded entry, for arch_key."""
    kind = enc[0]
    if kind in ("none", "str"):
        return list(enc)
    if kind == "obj":
        return ["obj", _qualified_name(enc[1]), enc[2]]
    if kind == "fn":
        return ["fn", _qualified_name(enc[1])]
    if kind == "list":
        return ["list", [_encode_key(e) for e in enc[1]]]
    return ["dict", [[k, _encode_key(e)] for k, e in enc[1]]]


def _fresh_optimizer(optimizer: Any) -> Any:
    if isinstance(optimizer, str):
        return keras.optimizers.get(optimizer)
    return type(optimizer).from_config(optimizer.get_config())


def _row_weighted_metric(fn: Callable) -> Any:
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

    return keras.metrics.MeanMetricWrapper(per_row, name=_object_name(fn))


# --------------------------------------------------------------------------------------
# model (de)serialisation
# --------------------------------------------------------------------------------------


def _serialize_model(model: Any, custom_objects: Mapping[str, Any] | None) -> dict:
    try:
        with _custom_scope(custom_objects):
            config = keras.saving.serialize_keras_object(model)
        config = dict(config)
        # The compile config is the user's; workers compile with our optimizer/loss/metrics.
        config.pop("compile_config", None)
        json.dumps(config, default=_json_default)
    except Exception as exc:  # subclassed models without get_config, exotic layers
        raise CerebroError(
            f"Cannot serialise the Keras model {getattr(model, 'name', '?')!r} "
            f"({type(model).__qualname__}): {exc}. cerebro rebuilds every model in its worker "
            "processes from its config: use a Sequential or functional model, or give custom "
            "layers/models a get_config() and pass them in custom_objects."
        ) from exc
    return config


def _deserialize_model(config: dict, custom_objects: Mapping[str, Any] | None) -> Any:
    try:
        with _custom_scope(custom_objects):
            # The config was written by our own driver process (and travels pickled anyway):
            # safe_mode=False lets Lambda layers through.
            return keras.saving.deserialize_keras_object(
                config, custom_objects=dict(custom_objects or {}), safe_mode=False
            )
    except Exception as exc:
        raise CerebroError(
            f"Cannot rebuild the Keras model {config.get('config', {}).get('name', '?')!r} from "
            f"its config: {exc}. If it uses custom layers, losses or metrics, pass them in the "
            "custom_objects argument of KerasEstimator (they must be importable by reference)."
        ) from exc


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return repr(obj)


def _flatten_layers(model: Any) -> list:
    try:
        return list(model._flatten_layers(include_self=True, recursive=True))
    except Exception:  # private Keras API: fall back to the public .layers
        out, stack = [], [model]
        while stack:
            layer = stack.pop(0)
            out.append(layer)
            stack.extend(getattr(layer, "layers", []) or [])
        return out


def _canonical_model_config(config: dict, layer_names: Sequence[str]) -> Any:
    """The model config with layer names replaced by their position.

    Keras names layers ``dense``, ``dense_1``, ... per process, so two identical architectures
    built one after the other by ``estimator_gen_fn`` differ only in names; the arch_key must
    not. Only strings in name positions are replaced (``name`` keys, ``keras_history``,
    ``input_layers``/``output_layers``), so e.g. ``activation: "relu"`` survives even when a
    layer is called "relu".
    """
    mapping: dict[str, str] = {}
    for name in layer_names:
        mapping.setdefault(name, f"layer{len(mapping)}")

    def names_in(obj: Any) -> Any:
        if isinstance(obj, str):
            return mapping.get(obj, obj)
        if isinstance(obj, (list, tuple)):
            return [names_in(v) for v in obj]
        return walk(obj)

    def walk(obj: Any) -> Any:
        if isinstance(obj, Mapping):
            out = {}
            for key, value in obj.items():
                if key == "name" and isinstance(value, str):
                    out[key] = mapping.get(value, value)
                elif key in ("keras_history", "input_layers", "output_layers"):
                    out[key] = names_in(value)
                else:
                    out[key] = walk(value)
            return out
        if isinstance(obj, (list, tuple)):
            return [walk(v) for v in obj]
        return obj

    return walk(config)


def _model_input_specs(model: Any) -> list[tuple[tuple, str]] | None:
    """[(shape without batch dim, dtype)] of a built model's inputs, or None if unknown."""
    try:
        inputs = model.inputs
    except Exception:
        return None
    if not inputs:
        return None
    specs = []
    for tensor in inputs:
        shape = tuple(None if d is None else int(d) for d in tensor.shape[1:])
        specs.append((shape, str(getattr(tensor, "dtype", "float32"))))
    return specs


def _model_output_names(model: Any) -> list[str]:
    try:
        outputs = model.outputs
    except Exception:
        outputs = None
    if not outputs:
        return ["output"]
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != len(outputs):  # Sequential has no output_names: the producing layers
        try:
            names = [tensor._keras_history.operation.name for tensor in outputs]
        except Exception:
            names = []
    if len(names) != len(outputs):
        names = [f"output_{i}" for i in range(len(outputs))]
    return names


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


def _compiled_metric_names(loss: Any, metrics: Any, output_names: Sequence[str]) -> list[str]:
    """The keys of ``model.fit(...).history`` for this compile, 'loss' first.

    Mirrors keras.src.trainers.compile_utils: metric names as given for strings, ``.name``
    for objects, the snake-cased ``__name__`` for functions; with several outputs, losses and
    metrics are prefixed by the output name; duplicates get ``_1``, ``_2``, ...
    """
    names = ["loss"]
    entries: list[tuple[str | None, Any]] = []
    if len(output_names) <= 1:
        flat = metrics if isinstance(metrics, (list, tuple)) else [metrics]
        entries = [(None, m) for m in _flatten(flat) if m is not None]
    else:
        losses = _per_output(loss, output_names, "loss")
        with_loss = [out for out, item in zip(output_names, losses) if item is not None]
        if len(with_loss) > 1:
            names.extend(f"{out}_loss" for out in with_loss)
        if metrics:
            for out, item in zip(output_names, _per_output(metrics, output_names, "metrics")):
                items = item if isinstance(item, (list, tuple)) else [item]
                entries.extend((out, m) for m in _flatten(items) if m is not None)
    counters: dict[str, int] = {}
    for out, metric in entries:
        name = _object_name(metric)
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


def _flatten(items: Any) -> list:
    out = []
    for item in items:
        if isinstance(item, (list, tuple)):
            out.extend(_flatten(item))
        elif isinstance(item, Mapping):
            out.extend(_flatten(list(item.values())))
        else:
            out.append(item)
    return out


# --------------------------------------------------------------------------------------
# the estimator and its spec
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class ModelSpec:
    """Everything a worker needs to build, compile and start one configuration's model.

    Made once per configuration by :meth:`KerasEstimator.make_spec` in the driver and sent to
    worker processes (picklable; it holds no Keras object). ``arch_key`` identifies the
    compiled model a worker can reuse: configurations that differ only in learning rate (a
    variable in the checkpoint) or batch size share it.
    """

    config: bytes
    arch_key: str
    initial_state: bytes
    batch_size: int
    num_inputs: int
    input_shapes: tuple[tuple[int | None, ...], ...]
    input_dtypes: tuple[str, ...]
    num_outputs: int
    output_names: tuple[str, ...]
    metric_names: tuple[str, ...]
    num_parameters: int

    def __repr__(self) -> str:
        return (
            f"ModelSpec(arch_key={self.arch_key[:12]!r}, batch_size={self.batch_size}, "
            f"input_shapes={self.input_shapes}, output_names={self.output_names}, "
            f"metric_names={self.metric_names}, num_parameters={self.num_parameters}, "
            f"config={len(self.config)} bytes, initial_state={len(self.initial_state)} bytes)"
        )

    def load_config(self) -> dict:
        """The unpickled config dict (imports custom objects by reference)."""
        try:
            return pickle.loads(self.config)
        except Exception as exc:
            raise CerebroError(
                f"Cannot read the model config of spec {self.arch_key[:12]}: {exc}. Custom "
                "objects must be importable in the worker processes."
            ) from exc


class KerasEstimator:
    """What a model is: a Keras 3 model (compiled or not), its optimizer and loss.

    ``__init__`` stores and validates arguments only (scikit-learn style); the model is
    serialised by :meth:`make_spec`. The optimizer given here (an instance or a name such as
    ``"adam"``) is used through its config: every worker builds a fresh one, and its state
    (iteration count, learning rate, slots) travels with the weights at every hop.

    Args:
        model: a ``keras.Model`` (Sequential, functional, or subclassed with ``get_config``).
        optimizer: a ``keras.optimizers.Optimizer`` instance or a name known to
            ``keras.optimizers.get``.
        loss: a loss name, ``keras.losses.Loss`` or a function ``(y_true, y_pred)``; for a
            multi-output model also a list (one per output) or a dict keyed by output name.
        metrics: a sequence of metric names, ``keras.metrics.Metric`` objects or functions
            (for a multi-output model, one list per output or a dict keyed by output name).
            Every metric is reported as a row-weighted mean.
        batch_size: rows per gradient step, an int >= 1.
        custom_objects: name -> class/function needed to rebuild the model, loss or metrics;
            they are pickled by reference, so they must be importable in worker processes.
    """

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        loss: Any,
        metrics: Sequence[Any] = (),
        batch_size: int = 32,
        *,
        custom_objects: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, keras.Model):
            raise _param_error(TypeError, "model", "a keras.Model instance", model)
        if custom_objects is not None and not (
            isinstance(custom_objects, Mapping) and all(isinstance(k, str) for k in custom_objects)
        ):
            raise _param_error(
                TypeError, "custom_objects", "None or a dict mapping names to classes/functions",
                custom_objects,
            )
        custom_objects = dict(custom_objects or {})
        with _custom_scope(custom_objects):
            _validate_optimizer(optimizer)
            _validate_loss(loss)
            _validate_metrics(metrics)
        batch_size = check_int("KerasEstimator", "batch_size", batch_size, minimum=1)
        self.model = model
        self.optimizer = optimizer
        self.loss = loss
        self.metrics = metrics
        self.batch_size = batch_size
        self.custom_objects = custom_objects

    def __repr__(self) -> str:
        opt = self.optimizer if isinstance(self.optimizer, str) else type(self.optimizer).__name__
        loss = self.loss if isinstance(self.loss, (list, tuple, dict)) else _object_name(self.loss)
        return (
            f"KerasEstimator(model={getattr(self.model, 'name', '?')!r}, optimizer={opt!r}, "
            f"loss={loss!r}, "
            f"metrics={[_object_name(m) for m in _flatten(self._metrics_list())]}, "
            f"batch_size={self.batch_size})"
        )

    def _metrics_list(self) -> list:
        if isinstance(self.metrics, Mapping):
            return list(self.metrics.values())
        return list(self.metrics or ())

    def metric_names(self) -> list[str]:
        """``["loss", ...]``: the keys Keras reports in fit/evaluate history for this model."""
        return _compiled_metric_names(self.loss, self.metrics, _model_output_names(self.model))

    # -- pickling: Keras objects travel as configs, never as live objects ------------------

    def __getstate__(self) -> dict:
        weights = None
        if self.model.built:
            weights = [np.asarray(w) for w in self.model.get_weights()]
        optimizer = (
            ("str", self.optimizer)
            if isinstance(self.optimizer, str)
            else ("obj", type(self.optimizer), self.optimizer.get_config())
        )
        return {
            "version": CONFIG_VERSION,
            "model": _serialize_model(self.model, self.custom_objects),
            "weights": weights,
            "optimizer": optimizer,
            "loss": _encode(self.loss),
            "metrics": _encode(self.metrics),
            "metrics_type": type(self.metrics).__name__,
            "batch_size": self.batch_size,
            "custom_objects": self.custom_objects,
        }

    def __setstate__(self, state: dict) -> None:
        custom_objects = state["custom_objects"]
        with _custom_scope(custom_objects):
            model = _deserialize_model(state["model"], custom_objects)
            if state["weights"] is not None:
                model.set_weights(state["weights"])
            kind, *rest = state["optimizer"]
            self.optimizer = rest[0] if kind == "str" else rest[0].from_config(rest[1])
            self.loss = _decode(state["loss"], metric=False)
            metrics = _decode(state["metrics"], metric=False)
        if state["metrics_type"] == "tuple" and isinstance(metrics, list):
            metrics = tuple(metrics)
        self.model = model
        self.metrics = metrics
        self.batch_size = state["batch_size"]
        self.custom_objects = custom_objects

    # -- the spec ---------------------------------------------------------------------------

    def make_spec(self, input_shapes: Sequence[Sequence[int]]) -> ModelSpec:
        """Serialise this configuration and capture its initial state. Called once, in the driver.

        ``input_shapes`` are the per-input shapes of the data without the batch dimension
        (one shape for a single-input model: the width of the concatenated feature columns).
        An unbuilt model (Sequential without Input) is built with them; a built model keeps its
        own input shapes, and the data must have as many values per row (make_inputs
        reshapes, e.g. 64 -> (8, 8, 1)).
        """
        model = self.model
        shapes = _validate_input_shapes(input_shapes)
        if not model.built:
            if not shapes:
                raise CerebroError(
                    f"The model {model.name!r} is not built and no input shapes were given."
                )
            build_shape = (
                (None, *shapes[0]) if len(shapes) == 1 else [(None, *s) for s in shapes]
            )
            try:
                model.build(build_shape)
            except Exception as exc:
                raise CerebroError(
                    f"Cannot build the model {model.name!r} for input shapes {shapes}: {exc}"
                ) from exc
        specs = _model_input_specs(model)
        if specs is None:
            specs = [(s, "float32") for s in shapes]
        elif shapes:
            _check_data_fits_inputs(model.name, specs, shapes)
        output_names = _model_output_names(model)
        metric_names = _compiled_metric_names(self.loss, self.metrics, output_names)

        model_config = _serialize_model(model, self.custom_objects)
        with _custom_scope(self.custom_objects):
            optimizer = _fresh_optimizer(self.optimizer)
            opt_config = optimizer.get_config()
            loss_enc = _encode(self.loss)
            metrics_enc = _encode(self.metrics)
            # Initial state: the model's weights and a freshly built optimizer's variables.
            optimizer.build(model.trainable_variables)
            initial_state = _pack(
                [_to_numpy(v) for v in model.weights],
                [v.path for v in model.weights],
                [_to_numpy(v) for v in optimizer.variables],
                [v.path for v in optimizer.variables],
            )

        config = {
            "version": CONFIG_VERSION,
            "model": model_config,
            "optimizer": (type(optimizer), opt_config),
            "loss": loss_enc,
            "metrics": metrics_enc,
            "custom_objects": self.custom_objects,
            "batch_size": self.batch_size,
            "input_shapes": [s for s, _ in specs],
        }
        try:
            config_bytes = pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)
            pickle.loads(config_bytes)
        except Exception as exc:
            raise CerebroError(
                f"The configuration of model {model.name!r} cannot be sent to worker "
                f"processes: {exc}. Losses, metrics and custom objects must be defined at "
                "module level in an importable module (no lambdas or local functions)."
            ) from exc

        key_opt_config = dict(opt_config)
        key_opt_config.pop("name", None)
        if isinstance(key_opt_config.get("learning_rate"), numbers.Number):
            # A float learning rate is an optimizer variable carried in the checkpoint.
            key_opt_config.pop("learning_rate")
        key = {
            "version": CONFIG_VERSION,
            "keras": keras.__version__,
            "model": _canonical_model_config(
                model_config, [layer.name for layer in _flatten_layers(model)]
            ),
            "outputs": output_names if len(output_names) > 1 else None,
            "optimizer": [_qualified_name(type(optimizer)), key_opt_config],
            "loss": _encode_key(loss_enc),
            "metrics": _encode_key(metrics_enc),
            "custom_objects": sorted(
                [k, _qualified_name(v)] for k, v in self.custom_objects.items()
            ),
        }
        arch_key = hashlib.sha256(
            json.dumps(key, sort_keys=True, default=_json_default).encode()
        ).hexdigest()[:32]
        return ModelSpec(
            config=config_bytes,
            arch_key=arch_key,
            initial_state=initial_state,
            batch_size=self.batch_size,
            num_inputs=len(specs),
            input_shapes=tuple(s for s, _ in specs),
            input_dtypes=tuple(d for _, d in specs),
            num_outputs=len(output_names),
            output_names=tuple(output_names),
            metric_names=tuple(metric_names),
            num_parameters=int(sum(int(np.prod(v.shape)) for v in model.weights)),
        )


def _validate_optimizer(optimizer: Any) -> None:
    expected = "a keras optimizer instance or an optimizer name such as 'adam'"
    if isinstance(optimizer, str):
        try:
            keras.optimizers.get(optimizer)
        except Exception:
            raise _param_error(ValueError, "optimizer", expected, optimizer) from None
    elif not isinstance(optimizer, keras.optimizers.Optimizer):
        raise _param_error(TypeError, "optimizer", expected, optimizer)


def _validate_loss(loss: Any) -> None:
    expected = (
        "a loss name, a keras.losses.Loss or a function (y_true, y_pred) "
        "(a list or dict of them for a multi-output model)"
    )

    def check(item: Any, allow_nested: bool) -> None:
        if isinstance(item, str):
            if item.lower() in _CROSSENTROPY_ALIASES:
                return
            try:
                keras.losses.get(item)
            except Exception:
                raise _param_error(ValueError, "loss", expected, item) from None
        elif allow_nested and isinstance(item, (list, tuple)):
            for sub in item:
                if sub is not None:
                    check(sub, False)
        elif allow_nested and isinstance(item, Mapping):
            for sub in item.values():
                if sub is not None:
                    check(sub, False)
        elif not (isinstance(item, keras.losses.Loss) or callable(item)):
            raise _param_error(TypeError, "loss", expected, item)

    if loss is None:
        raise _param_error(TypeError, "loss", expected, loss)
    check(loss, True)


def _validate_metrics(metrics: Any) -> None:
    expected = (
        "a sequence of metric names, keras.metrics.Metric objects or functions "
        "(one list per output, or a dict keyed by output name, for a multi-output model)"
    )
    if metrics is None:
        return
    if isinstance(metrics, str) or not isinstance(metrics, (list, tuple, Mapping)):
        raise _param_error(TypeError, "metrics", expected, metrics)

    def check(item: Any, depth: int) -> None:
        if item is None and depth > 0:
            return
        if isinstance(item, str):
            if item.lower() in _ACCURACY_ALIASES:
                return
            try:
                keras.metrics.get(item)
            except Exception:
                raise _param_error(ValueError, "metrics", expected, item) from None
        elif isinstance(item, (list, tuple)) and depth < 2:
            for sub in item:
                check(sub, depth + 1)
        elif isinstance(item, Mapping) and depth == 0:
            for sub in item.values():
                check(sub, depth + 1)
        elif not (isinstance(item, keras.metrics.Metric) or callable(item)):
            raise _param_error(TypeError, "metrics", expected, item)

    check(metrics, 0)


def _validate_input_shapes(input_shapes: Any) -> list[tuple[int, ...]]:
    if input_shapes is None:
        return []
    try:
        shapes = [tuple(int(d) for d in shape) for shape in input_shapes]
    except (TypeError, ValueError):
        raise TypeError(
            "input_shapes must be a list of per-input shapes without the batch dimension, "
            f"e.g. [(64,)]. Got {_describe(input_shapes)} instead."
        ) from None
    for shape in shapes:
        if any(d < 1 for d in shape):
            raise ValueError(f"input shape {shape} has a dimension < 1")
    return shapes


def _check_data_fits_inputs(
    model_name: str, specs: list[tuple[tuple, str]], shapes: list[tuple[int, ...]]
) -> None:
    model_shapes = [s for s, _ in specs]
    if len(shapes) != len(specs):
        raise CerebroError(
            f"The model {model_name!r} has {len(specs)} inputs {model_shapes}, but the data "
            f"gives {len(shapes)} ({shapes}). A multi-input model needs one feature column per "
            "input; a single-input model gets the feature columns concatenated."
        )
    for i, (model_shape, data_shape) in enumerate(zip(model_shapes, shapes)):
        if None in model_shape:
            continue
        if int(np.prod(model_shape)) != int(np.prod(data_shape)):
            raise CerebroError(
                f"Input {i} of model {model_name!r} has shape {model_shape} "
                f"({int(np.prod(model_shape))} values per row), but the feature data gives "
                f"{data_shape} ({int(np.prod(data_shape))} values per row)."
            )


# --------------------------------------------------------------------------------------
# checkpoint bytes
# --------------------------------------------------------------------------------------


def _tf_variable(variable: Any) -> Any:
    """The tf.Variable behind a Keras variable on the TensorFlow backend, else None.

    Reading and assigning through it skips Keras' per-call conversions (about 40% of the
    per-hop cost for a small MLP); any other backend goes through the public Keras API.
    """
    raw = getattr(variable, "_value", None)
    return raw if raw is not None and hasattr(raw, "assign") and hasattr(raw, "numpy") else None


def _to_numpy(variable: Any) -> np.ndarray:
    raw = _tf_variable(variable)
    return np.asarray(raw.numpy() if raw is not None else variable.numpy())


def _assign(variable: Any, array: np.ndarray) -> None:
    raw = _tf_variable(variable)
    if raw is not None:
        raw.assign(array)
    else:
        variable.assign(array)


def _pack(
    weights: Sequence[np.ndarray],
    weight_paths: Sequence[str],
    opt_values: Sequence[np.ndarray],
    opt_paths: Sequence[str],
) -> bytes:
    """np.savez container: a JSON header and one flat buffer per dtype (few zip members)."""
    buffers: dict[str, list[np.ndarray]] = {}
    offsets: dict[str, int] = {}

    def entries(paths: Sequence[str], arrays: Sequence[np.ndarray]) -> list:
        out = []
        for path, array in zip(paths, arrays):
            array = np.asarray(array)
            dtype = str(array.dtype)
            chunk = buffers.setdefault(dtype, [])
            offset = offsets.get(dtype, 0)
            chunk.append(array.reshape(-1))
            offsets[dtype] = offset + array.size
            out.append([path, list(array.shape), dtype, offset])
        return out

    header = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "keras": keras.__version__,
        "weights": entries(weight_paths, weights),
        "optimizer": entries(opt_paths, opt_values),
        "buffers": sorted(buffers),
    }
    arrays = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
    for i, dtype in enumerate(header["buffers"]):
        arrays[f"b{i}"] = np.concatenate(buffers[dtype])
    stream = io.BytesIO()
    np.savez(stream, allow_pickle=False, **arrays)
    return stream.getvalue()


def _restore_dtype(array: np.ndarray, dtype_name: str) -> np.ndarray:
    if array.dtype.kind == "V":  # e.g. bfloat16, which .npy stores as raw bytes
        try:
            import ml_dtypes

            return array.view(getattr(ml_dtypes, dtype_name))
        except Exception:
            pass
    return array


def _unpack(data: bytes) -> tuple[dict, list[np.ndarray], list[np.ndarray]]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CerebroError(f"Checkpoint state must be bytes, got {_describe(data)}.")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            header = json.loads(archive["header"].tobytes().decode())
            if header.get("format") != STATE_FORMAT:
                raise ValueError(f"format {header.get('format')!r}")
            if header.get("version") != STATE_VERSION:
                raise ValueError(
                    f"version {header.get('version')!r}, this cerebro reads {STATE_VERSION}"
                )
            buffers = {
                dtype: _restore_dtype(archive[f"b{i}"], dtype)
                for i, dtype in enumerate(header["buffers"])
            }

        def views(entries: list) -> list[np.ndarray]:
            out = []
            for _path, shape, dtype, offset in entries:
                size = int(np.prod(shape)) if shape else 1
                flat = buffers[dtype][offset : offset + size]
                if flat.size != size:
                    raise ValueError(f"buffer {dtype} is too short")
                out.append(flat.reshape(shape))
            return out

        weights, opt_values = views(header["weights"]), views(header["optimizer"])
    except CerebroError:
        raise
    except Exception as exc:
        raise CerebroError(
            f"The checkpoint bytes ({len(data)} bytes) are not a readable cerebro Keras state: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return header, weights, opt_values


def _check_variables(what: str, entries: list, arrays: list, variables: list) -> None:
    if len(entries) != len(variables):
        raise CerebroError(
            f"Cannot restore the checkpoint: it holds {len(entries)} {what}, the model has "
            f"{len(variables)}. Checkpoint: {[e[0] for e in entries][:8]}; "
            f"model: {[v.path for v in variables][:8]}."
        )
    for i, ((path, _, dtype, _), array, variable) in enumerate(zip(entries, arrays, variables)):
        model_shape = tuple(int(d) for d in variable.shape)
        if tuple(array.shape) != model_shape:
            raise CerebroError(
                f"Cannot restore the checkpoint: {what} #{i} {path!r} has shape "
                f"{tuple(array.shape)} in the checkpoint but {variable.path!r} has shape "
                f"{model_shape} in the model."
            )
        if np.dtype(array.dtype) != np.dtype(keras.backend.standardize_dtype(variable.dtype)):
            raise CerebroError(
                f"Cannot restore the checkpoint: {what} #{i} {path!r} has dtype {dtype} in the "
                f"checkpoint but {variable.path!r} has dtype {variable.dtype} in the model."
            )


def _ensure_optimizer_built(model: Any) -> Any:
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    return optimizer


def state_to_bytes(model: Any) -> bytes:
    """Checkpoint bytes of a model: every weight and every optimizer variable.

    Runs at every hop; it is a device-to-host copy plus an uncompressed ``np.savez``.
    Builds the optimizer first if it is not built yet, so that the bytes always hold the
    full optimizer state (a fresh optimizer's slots) and restore into any built model.
    """
    if not model.built:
        raise CerebroError(f"The model {model.name!r} is not built; it has no state to save.")
    optimizer = _ensure_optimizer_built(model)
    opt_vars = list(optimizer.variables) if optimizer is not None else []
    return _pack(
        [_to_numpy(v) for v in model.weights],
        [v.path for v in model.weights],
        [_to_numpy(v) for v in opt_vars],
        [v.path for v in opt_vars],
    )


def state_from_bytes(model: Any, data: bytes) -> None:
    """Restore weights and optimizer variables from :func:`state_to_bytes` bytes.

    Builds the optimizer first if needed. Checks counts, shapes and dtypes of everything
    before assigning anything (a mismatch raises CerebroError naming the first difference and
    leaves the model as it was). After it, training continues exactly as if the model had
    never left memory: same weights, Adam moments, iteration count and learning rate.
    """
    header, weights, opt_values = _unpack(data)
    if not model.built:
        raise CerebroError(f"The model {model.name!r} is not built; build it before restoring.")
    model_weights = list(model.weights)
    _check_variables("model weights", header["weights"], weights, model_weights)
    optimizer = _ensure_optimizer_built(model)
    if optimizer is None:
        if opt_values:
            raise CerebroError(
                f"Cannot restore the checkpoint: it holds {len(opt_values)} optimizer "
                f"variables but the model {model.name!r} is not compiled (no optimizer)."
            )
        opt_vars: list = []
    else:
        opt_vars = list(optimizer.variables)
        _check_variables("optimizer variables", header["optimizer"], opt_values, opt_vars)
    for variable, array in zip(model_weights, weights):
        _assign(variable, array)
    for variable, array in zip(opt_vars, opt_values):
        _assign(variable, array)


# --------------------------------------------------------------------------------------
# building compiled models in workers
# --------------------------------------------------------------------------------------


def _build_compiled(spec: ModelSpec) -> Any:
    """A fresh compiled keras.Model for the spec (weights are whatever Keras initialised)."""
    config = spec.load_config()
    custom_objects = config["custom_objects"]
    model = _deserialize_model(config["model"], custom_objects)
    with _custom_scope(custom_objects):
        if not model.built:
            shapes = [tuple(s) for s in config["input_shapes"]]
            model.build((None, *shapes[0]) if len(shapes) == 1 else [(None, *s) for s in shapes])
        opt_class, opt_config = config["optimizer"]
        optimizer = opt_class.from_config(opt_config)
        model.compile(
            optimizer=optimizer,
            loss=_decode(config["loss"], metric=False),
            metrics=_decode(config["metrics"], metric=True),
            run_eagerly=False,
            jit_compile=False,
            steps_per_execution=1,
        )
        optimizer.build(model.trainable_variables)
    return model


def export_model(spec: ModelSpec, state: bytes) -> Any:
    """A fresh compiled keras.Model holding ``state``; driver side (TrainedModel.keras())."""
    model = _build_compiled(spec)
    state_from_bytes(model, state)
    return model


class _CacheEntry:
    __slots__ = ("model", "loaded", "iterations")

    def __init__(self, model: Any) -> None:
        self.model = model
        self.loaded: tuple[str, str] | None = None
        self.iterations: int | None = None


def _iterations(model: Any) -> int | None:
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    return int(_to_numpy(optimizer.iterations))


class ModelCache:
    """Compiled Keras models of one worker process, one per ``arch_key`` (LRU).

    Building and compiling a model (and tracing its train function) costs far more than a
    hop, so a worker keeps up to ``max_models`` compiled models and each hop only swaps state
    in. It also remembers which ``(model_id, state_token)`` each cached model holds, so when
    a model comes back to the worker that trained it last, :meth:`load` skips deserialising.
    Not thread-safe: one worker trains one model at a time.

    Contract for callers: after changing a loaded model's state (training), call
    :meth:`note_saved` with the new token, or :meth:`invalidate` if it failed midway. As a
    safety net, :meth:`load` also reloads when the optimizer's iteration count moved since
    the state was recorded.
    """

    def __init__(self, max_models: int = DEFAULT_CACHE_SIZE) -> None:
        self.max_models = check_int("ModelCache", "max_models", max_models, minimum=1)
        self._entries: OrderedDict[str, _CacheEntry] = OrderedDict()
        self.builds = 0
        self.loads = 0
        self.skipped_loads = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, arch_key: object) -> bool:
        return arch_key in self._entries

    def _entry(self, spec: ModelSpec) -> _CacheEntry:
        entry = self._entries.get(spec.arch_key)
        if entry is None:
            entry = _CacheEntry(_build_compiled(spec))
            self.builds += 1
            self._entries[spec.arch_key] = entry
            while len(self._entries) > self.max_models:
                evicted, _ = self._entries.popitem(last=False)
                logger.debug("evicted compiled model %s from the cache", evicted[:12])
        else:
            self._entries.move_to_end(spec.arch_key)
        return entry

    def get(self, spec: ModelSpec) -> Any:
        """The compiled model for ``spec.arch_key`` (built on first use), state unspecified."""
        return self._entry(spec).model

    def load(
        self,
        spec: ModelSpec,
        model_id: str,
        state_token: str,
        state: bytes | Callable[[], bytes],
    ) -> Any:
        """The compiled model holding ``state``; ``state`` may be a callable, called only if needed.

        Skips deserialising when this cache's model already holds ``(model_id, state_token)``.
        """
        entry = self._entry(spec)
        if (
            entry.loaded == (model_id, state_token)
            and entry.iterations == _iterations(entry.model)
        ):
            self.skipped_loads += 1
            return entry.model
        entry.loaded = None  # a failed restore must not look loaded
        data = state() if callable(state) else state
        state_from_bytes(entry.model, data)
        entry.loaded = (model_id, state_token)
        entry.iterations = _iterations(entry.model)
        self.loads += 1
        return entry.model

    def note_saved(self, model_id: str, state_token: str, model: Any) -> None:
        """Record that ``model`` (one of this cache's) now holds ``(model_id, state_token)``."""
        for entry in self._entries.values():
            if entry.model is model:
                entry.loaded = (model_id, state_token)
                entry.iterations = _iterations(model)
            elif entry.loaded is not None and entry.loaded[0] == model_id:
                entry.loaded = None  # an older state of the same model elsewhere is stale
        # A model not (or no longer) in the cache: nothing to remember.

    def loaded(self, spec: ModelSpec) -> tuple[str, str] | None:
        """``(model_id, state_token)`` held by the cached model of this spec, if known."""
        entry = self._entries.get(spec.arch_key)
        return None if entry is None else entry.loaded

    def invalidate(self, model: Any = None) -> None:
        """Forget what ``model`` (or, with None, every cached model) holds."""
        for entry in self._entries.values():
            if model is None or entry.model is model:
                entry.loaded = None
                entry.iterations = None


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------


def _io_specs(spec_or_model: Any) -> tuple[list[tuple], list[str], int]:
    if isinstance(spec_or_model, ModelSpec):
        return (
            [tuple(s) for s in spec_or_model.input_shapes],
            list(spec_or_model.input_dtypes),
            spec_or_model.num_outputs,
        )
    specs = _model_input_specs(spec_or_model)
    if specs is None:
        raise CerebroError(
            f"The model {getattr(spec_or_model, 'name', '?')!r} has no known inputs; "
            "build it first or pass its ModelSpec."
        )
    return [s for s, _ in specs], [d for _, d in specs], len(_model_output_names(spec_or_model))


def _column(data: Mapping[str, Any], name: str, what: str) -> np.ndarray:
    try:
        values = data[name]
    except KeyError:
        raise CerebroError(
            f"The {what} column {name!r} is missing; available columns: {sorted(data)}."
        ) from None
    array = np.asarray(values)
    if array.dtype == object:  # e.g. a pandas column of lists / arrays
        try:
            array = np.stack([np.asarray(v) for v in array])
        except ValueError as exc:
            raise CerebroError(
                f"The {what} column {name!r} holds arrays of different lengths: {exc}"
            ) from None
    return array


def _as_2d(array: np.ndarray) -> np.ndarray:
    if array.ndim == 0:
        raise CerebroError("A column holds a single scalar, not one value per row.")
    if array.ndim == 1:
        return array.reshape(-1, 1)
    if array.ndim > 2:
        return array.reshape(array.shape[0], -1)
    return array


def _input_dtype(dtype: str) -> np.dtype:
    dt = np.dtype(keras.backend.standardize_dtype(dtype)) if dtype else np.dtype("float32")
    return dt if dt.kind in "iub" else np.dtype("float32")


def _reshape_to(array: np.ndarray, shape: tuple, describe: Callable[[], str]) -> np.ndarray:
    n, width = array.shape
    if all(d is not None for d in shape):
        size = int(np.prod(shape)) if shape else 1
        if size != width:
            raise CerebroError(
                f"The model input of shape {tuple(shape)} needs {size} values per row, but "
                f"{describe()} give {width}."
            )
        return array.reshape((n, *shape))
    known = int(np.prod([d for d in shape if d is not None])) if shape else 1
    if sum(d is None for d in shape) == 1 and width % known == 0:
        return array.reshape((n, *[-1 if d is None else d for d in shape]))
    if len(shape) == 1:
        return array
    raise CerebroError(
        f"Cannot shape {describe()} ({width} values per row) into the model input of shape "
        f"{tuple(shape)}."
    )


def make_inputs(
    spec_or_model: Any, features: Mapping[str, Any], feature_columns: Sequence[str]
) -> Any:
    """The model input(s) for a block of feature columns.

    A single-input model gets the listed columns concatenated in order (a scalar column is one
    value per row, an array column d values), reshaped to the model's input shape when the
    sizes match (64 -> (8, 8, 1)). A multi-input model gets one column per input, in order,
    each reshaped to its input. Values are float32 (integer/boolean inputs keep an integer
    dtype). Mismatches raise CerebroError naming the input shape and the column widths.
    """
    if isinstance(feature_columns, str):
        feature_columns = [feature_columns]
    columns = list(feature_columns)
    if not columns:
        raise CerebroError("No feature columns were given.")
    shapes, dtypes, _ = _io_specs(spec_or_model)
    arrays = [_as_2d(_column(features, c, "feature")) for c in columns]
    rows = {a.shape[0] for a in arrays}
    if len(rows) > 1:
        raise CerebroError(
            f"The feature columns have different numbers of rows: "
            f"{dict(zip(columns, [a.shape[0] for a in arrays]))}."
        )
    if len(shapes) == 1:
        dtype = _input_dtype(dtypes[0])
        x = np.concatenate([a.astype(dtype, copy=False) for a in arrays], axis=1)
        widths = ", ".join(f"{c!r} (width {a.shape[1]})" for c, a in zip(columns, arrays))
        return _reshape_to(x, shapes[0], lambda: f"the feature columns {widths}")
    if len(columns) != len(shapes):
        raise CerebroError(
            f"The model has {len(shapes)} inputs {[tuple(s) for s in shapes]} and needs one "
            f"feature column per input, in order; got {len(columns)} columns {columns}."
        )
    out = []
    for column, array, shape, dtype in zip(columns, arrays, shapes, dtypes):
        array = np.ascontiguousarray(array, dtype=_input_dtype(dtype))
        describe = lambda c=column, a=array: f"the feature column {c!r} (width {a.shape[1]})"  # noqa: E731
        out.append(_reshape_to(array, shape, describe))
    return out


def make_targets(spec_or_model: Any, labels: Mapping[str, Any], label_columns: Any) -> Any:
    """The target(s): one label column per model output, in order (an array for one output)."""
    if isinstance(label_columns, str):
        label_columns = [label_columns]
    columns = list(label_columns)
    _, _, num_outputs = _io_specs(spec_or_model)
    if len(columns) != num_outputs:
        raise CerebroError(
            f"The model has {num_outputs} output(s) and needs one label column per output; "
            f"got {len(columns)} label columns {columns}."
        )
    targets = []
    for column in columns:
        array = _column(labels, column, "label")
        if array.dtype.kind == "f" and array.dtype != np.float32:
            array = array.astype(np.float32)
        targets.append(array)
    return targets[0] if num_outputs == 1 else targets


# --------------------------------------------------------------------------------------
# training and evaluation
# --------------------------------------------------------------------------------------


def _num_rows(x: Any) -> int:
    first = x[0] if isinstance(x, (list, tuple)) else x
    return int(np.shape(first)[0])


def _take(data: Any, index: np.ndarray) -> Any:
    if isinstance(data, (list, tuple)):
        return [np.asarray(d)[index] for d in data]
    if isinstance(data, Mapping):
        return {k: np.asarray(v)[index] for k, v in data.items()}
    return np.asarray(data)[index]


def _reset_seed_generators(model: Any, seed: int) -> None:
    """Set every layer SeedGenerator (Dropout, noise, augmentation) from the sub-epoch seed.

    A SeedGenerator's state lives in the compiled model instance, not in its weights, so
    without this a cached model would draw dropout masks that depend on which models trained
    on it before. Deriving it from the seed makes the masks a function of (seed, layer index).
    """
    weight_ids = {id(v) for v in model.weights}
    states = [v for v in model.variables if id(v) not in weight_ids]
    if not states:
        return
    seeds = layer_seed_values(seed, len(states))
    for variable, value in zip(states, seeds):
        if tuple(variable.shape) != (2,):  # not a SeedGenerator state: leave it alone
            continue
        dtype = keras.backend.standardize_dtype(variable.dtype)
        variable.assign(np.asarray([value, 0], dtype=dtype))


def _history_means(history: Mapping[str, list]) -> dict[str, float]:
    return {name: float(values[-1]) for name, values in history.items()}


def train_sub_epoch(model: Any, x: Any, y: Any, *, batch_size: int, seed: int) -> dict[str, float]:
    """One pass of ``model`` over ``(x, y)`` in the row order given by ``seed``.

    The rows are permuted by ``numpy.random.default_rng(seed).permutation(n)``, the global
    seeds are set by ``keras.utils.set_random_seed(seed)`` and every layer seed generator is
    reset from ``seed``, so the pass is a pure function of (state, data, seed, batch_size).
    Returns ``{"loss": ..., <metric>: ..., "rows": n}``: means over the rows of this pass
    (Keras weights the loss and every compiled metric by rows, the partial last batch
    included; cerebro wraps plain metric functions so this holds for them too).
    Blocks for the pass; mutates the model's state.
    """
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be an int >= 0. Got {seed}.")
    n = _num_rows(x)
    if n == 0:
        return {"rows": 0}
    keras.utils.set_random_seed(seed % 2**32)  # numpy's global seed must fit in 32 bits
    _reset_seed_generators(model, seed)
    order = row_order(seed, n)
    history = model.fit(
        _take(x, order),
        _take(y, order),
        batch_size=int(batch_size),
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    metrics = _history_means(history.history)
    metrics["rows"] = n
    return metrics


def evaluate(model: Any, x: Any, y: Any, *, batch_size: int) -> dict[str, float]:
    """Row-weighted means of the loss and every compiled metric over ``(x, y)``, plus "rows"."""
    n = _num_rows(x)
    if n == 0:
        return {"rows": 0}
    results = model.evaluate(x, y, batch_size=int(batch_size), verbose=0, return_dict=True)
    metrics = {name: float(value) for name, value in results.items()}
    metrics["rows"] = n
    return metrics


def limit_threads(num_threads: int | None) -> None:
    """Limit TensorFlow's intra- and inter-op thread pools in this process.

    Call before TF runs any op (at worker start). No-op with None; calling it again with the
    same value is harmless; once TF is initialised the pools cannot change, and a different
    value only logs a warning.
    """
    if num_threads is None:
        return
    num_threads = check_int("limit_threads", "num_threads", num_threads, minimum=1, expected="None or an int >= 1")
    import tensorflow as tf

    threading = tf.config.threading
    for name, get, set_ in (
        ("intra-op", threading.get_intra_op_parallelism_threads,
         threading.set_intra_op_parallelism_threads),
        ("inter-op", threading.get_inter_op_parallelism_threads,
         threading.set_inter_op_parallelism_threads),
    ):
        if get() == num_threads:
            continue
        try:
            set_(int(num_threads))
        except RuntimeError as exc:
            logger.warning(
                "cannot set TensorFlow %s threads to %d (TF is already initialised, "
                "keeping %d): %s",
                name, num_threads, get(), exc,
            )


def seed_model_creation(seed: int) -> None:
    """Seed Python, NumPy and Keras before ``estimator_gen_fn`` runs in the driver.

    Weight initialisers draw from these global generators, so the same experiment seed and
    configuration index give the same initial weights in every run.
    """
    keras.utils.set_random_seed(int(seed) % (2**32))


def transfer_learning_rate(state: bytes, donor: bytes) -> bytes:
    """``state`` with its optimizer's learning rate replaced by ``donor``'s (PBT's exploit).

    Everything else (weights, moments, iteration count) stays as it is: the copied model
    continues exactly where its source was, only with the new learning rate, set on the
    optimizer in place.  Works on the bytes alone, without building a model.
    """
    header, weights, opt_values = _unpack(state)
    donor_header, _, donor_values = _unpack(donor)

    def lr_index(entries: list) -> int | None:
        hits = [i for i, entry in enumerate(entries) if entry[0].rsplit("/", 1)[-1] == "learning_rate"]
        return hits[0] if hits else None

    i, j = lr_index(header["optimizer"]), lr_index(donor_header["optimizer"])
    if i is None or j is None:
        # A learning-rate schedule is part of the optimizer's configuration, not of its state.
        return state
    opt_values = [np.array(v) for v in opt_values]
    opt_values[i] = np.asarray(donor_values[j], dtype=opt_values[i].dtype).reshape(opt_values[i].shape)
    return _pack(weights, [e[0] for e in header["weights"]], opt_values, [e[0] for e in header["optimizer"]])


def _fresh_config(model: Any) -> dict:
    """The model's config without the recorded build shapes, so it can be rebuilt differently."""
    config = copy.deepcopy(model.get_config())
    config.pop("build_input_shape", None)
    for layer in config.get("layers", []):
        layer.pop("build_config", None)
    return config


def _rebuild(model: Any, config: dict, custom_objects: Mapping[str, Any] | None) -> Any:
    with _custom_scope(custom_objects):
        if isinstance(model, keras.Sequential):
            return keras.Sequential.from_config(config)
        return keras.Model.from_config(config)


def ablate(estimator: "KerasEstimator", *, drop_layer: str | None = None, input_width: int | None = None) -> "KerasEstimator":
    """A copy of ``estimator`` whose model leaves out layer ``drop_layer`` and/or takes inputs of
    ``input_width`` features (a feature column left out), with freshly initialised weights.

    Layer ablation needs a Sequential model (a functional graph would have to be rewired);
    the layers before and after the dropped one must fit together.  Name the layers you want
    to ablate (``Dense(64, name="hidden2")``): Keras' automatic names change between runs.
    """
    model = estimator.model
    config = _fresh_config(model)
    layers = config.get("layers", [])
    if drop_layer is not None:
        if not isinstance(model, keras.Sequential):
            raise CerebroError(
                f"leaving out layer {drop_layer!r} needs a keras.Sequential model; {model.name!r} is a "
                f"{type(model).__name__}. Build the variant in estimator_gen_fn instead."
            )
        names = [entry["config"].get("name") for entry in layers if entry.get("class_name") != "InputLayer"]
        if drop_layer not in names:
            raise CerebroError(f"the model has no layer named {drop_layer!r}; its layers are {names}")
        config["layers"] = [entry for entry in layers if entry["config"].get("name") != drop_layer]
    if input_width is not None:
        inputs = [entry for entry in config.get("layers", []) if entry.get("class_name") == "InputLayer"]
        if len(inputs) > 1:
            raise CerebroError("leaving out a feature column needs a single-input model")
        for entry in inputs:
            shape = list(entry["config"].get("batch_shape") or [None, input_width])
            if len(shape) != 2:
                raise CerebroError(
                    f"leaving out a feature column needs a flat input (batch, features); the model's input is {shape}"
                )
            entry["config"]["batch_shape"] = [shape[0], int(input_width)]
    try:
        new_model = _rebuild(model, config, estimator.custom_objects)
    except Exception as exc:
        what = f"without layer {drop_layer!r}" if drop_layer else f"with {input_width} input features"
        raise CerebroError(f"cannot rebuild {model.name!r} {what}: {type(exc).__name__}: {exc}") from exc
    return KerasEstimator(new_model, _fresh_optimizer(estimator.optimizer), estimator.loss, estimator.metrics,
                          estimator.batch_size, custom_objects=estimator.custom_objects)
