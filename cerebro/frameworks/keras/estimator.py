"""What a model is: :class:`KerasEstimator` (the user's model, optimizer, loss and metrics,
validated) and :class:`ModelSpec` (its picklable description, made once in the driver).

A spec holds no Keras object: the model travels as its config, the optimizer, loss and
metrics as their encodings (:mod:`.encoding`), the initial state as checkpoint bytes
(:mod:`.state`).  Its ``arch_key`` identifies the compiled model a worker can reuse.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import pickle
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import cloudpickle
import keras
import numpy as np

from ..._checks import check_int
from ...errors import CerebroError
from ..base import Spec
from ..shipping import shipped_by_value
from .config import (
    canonical_model_config,
    deserialize_model,
    flatten_layers,
    json_default,
    model_custom_objects,
    model_input_specs,
    model_output_names,
    serialize_model,
)
from .encoding import (
    compiled_metric_names,
    custom_scope,
    decode,
    describe,
    encode,
    encode_key,
    flatten,
    fresh_optimizer,
    object_name,
    qualified_name,
    with_registered_names,
)
from .state import pack, to_numpy

__all__ = ["ModelSpec", "KerasEstimator", "CONFIG_VERSION"]

CONFIG_VERSION = 1

# Metric and loss identifiers that Keras resolves only once it sees the data (compile_utils).
_ACCURACY_ALIASES = ("accuracy", "acc")
_CROSSENTROPY_ALIASES = ("crossentropy", "ce")


def _param_error(exc_type: type, name: str, expected: str, value: Any) -> Exception:
    return exc_type(
        f"The '{name}' parameter of KerasEstimator must be {expected}. "
        f"Got {describe(value)} instead."
    )


@dataclass(frozen=True, repr=False)
class ModelSpec(Spec):
    """Everything a worker needs to build, compile and start one configuration's model.

    Made once per configuration by :meth:`KerasEstimator.make_spec` in the driver and sent to
    worker processes (picklable; it holds no Keras object). ``arch_key`` identifies the
    compiled model a worker can reuse: configurations that differ only in learning rate (a
    variable in the checkpoint) or batch size share it.  ``framework`` names the adapter
    (:func:`cerebro.frameworks.base.get_framework`); it is the last field and has a default, so
    a spec pickled before the field existed still reads ``"keras"``.
    """

    framework: str = "keras"

    def load_config(self) -> dict:
        """The unpickled config dict (custom objects come by value or by reference, as shipped)."""
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
        model: a ``keras.Model`` (Sequential, functional, or subclassed with ``get_config``),
            with one or more inputs and outputs.
        optimizer: a ``keras.optimizers.Optimizer`` instance or a name known to
            ``keras.optimizers.get``.
        loss: a loss name, ``keras.losses.Loss`` or a function ``(y_true, y_pred)``; for a
            multi-output model also a list (one per output) or a dict keyed by output name.
        metrics: a sequence of metric names, ``keras.metrics.Metric`` objects or functions
            (for a multi-output model, one list per output or a dict keyed by output name).
            Every metric is reported as a row-weighted mean.
        batch_size: rows per gradient step, an int >= 1.
        loss_weights: for a multi-output model, the coefficient of each output's loss in the
            total ``loss`` (a list, one number per output, or a dict keyed by output name);
            None weighs every output 1.
        custom_objects: name -> class/function needed to rebuild the model, loss or metrics;
            they travel to the workers with cloudpickle (by value when they are defined in
            your script or in a module the workers cannot import).  Functions and classes the
            model's layers use (a custom activation, an unregistered layer class) are added
            to them automatically.

    Inputs and outputs: a single-input model gets the feature columns concatenated in order; a
    model with several inputs gets one feature column per input, in ``model.inputs`` order.
    There is one label column per output, in ``model.outputs`` order, and ``transform`` adds
    one ``<label>__output`` column per output.

    Metric names (the keys of :meth:`metric_names`, ``history``'s ``train_<name>`` and
    ``val_<name>`` columns and what ``evaluation_metric`` may name) are Keras 3's:

    * ``loss``: the total loss (for several outputs, the ``loss_weights``-weighted sum);
    * a metric is named as given for a string (``"accuracy"``), by ``.name`` for a
      ``Metric`` object and by the snake-cased ``__name__`` for a function;
    * with several outputs, every metric is prefixed with its output's name
      (``digit_accuracy``), and when two or more outputs have a loss each one is also reported
      unweighted as ``<output>_loss`` (``digit_loss``, ``parity_loss``);
    * a name that comes again gets ``_1``, ``_2``, ... appended.

    Output names are the names of the layers that produce ``model.outputs`` (name the output
    layers to get readable metric names).
    """

    #: the adapter of this estimator (:func:`cerebro.frameworks.base.framework_of`)
    framework = "keras"

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        loss: Any,
        metrics: Sequence[Any] = (),
        batch_size: int = 32,
        *,
        loss_weights: Sequence[float] | Mapping[str, float] | None = None,
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
        with custom_scope(custom_objects):
            _validate_optimizer(optimizer)
            _validate_loss(loss)
            _validate_metrics(metrics)
        batch_size = check_int("KerasEstimator", "batch_size", batch_size, minimum=1)
        self.model = model
        self.optimizer = optimizer
        self.loss = loss
        self.metrics = metrics
        self.batch_size = batch_size
        self.loss_weights = _validate_loss_weights(loss_weights)
        self.custom_objects = custom_objects
        if model_input_specs(model) is not None:  # a built model: its outputs are known now
            _check_loss_weights(self.loss_weights, model_output_names(model))

    def __repr__(self) -> str:
        opt = self.optimizer if isinstance(self.optimizer, str) else type(self.optimizer).__name__
        loss = self.loss if isinstance(self.loss, (list, tuple, dict)) else object_name(self.loss)
        return (
            f"KerasEstimator(model={getattr(self.model, 'name', '?')!r}, optimizer={opt!r}, "
            f"loss={loss!r}, "
            f"metrics={[object_name(m) for m in flatten(self._metrics_list())]}, "
            f"batch_size={self.batch_size})"
        )

    def _metrics_list(self) -> list:
        if isinstance(self.metrics, Mapping):
            return list(self.metrics.values())
        return list(self.metrics or ())

    def metric_names(self) -> list[str]:
        """``["loss", ...]``: the keys Keras reports in fit/evaluate history for this model
        (the naming rule is in the class docstring)."""
        return compiled_metric_names(self.loss, self.metrics, model_output_names(self.model))

    def serialized_model(self) -> tuple[dict, dict[str, Any]]:
        """The model's config and the custom objects a worker needs to rebuild it:
        ``custom_objects`` plus the functions and classes of the user's code that the config
        names (a custom activation, an unregistered layer class)."""
        config = serialize_model(self.model, self.custom_objects)
        return config, {**model_custom_objects(self.model, config), **self.custom_objects}

    def num_inputs(self) -> int:
        """The number of the model's inputs (1 for a model that is not built yet)."""
        specs = model_input_specs(self.model)
        return 1 if specs is None else len(specs)

    # -- pickling: Keras objects travel as configs, never as live objects ------------------

    def __getstate__(self) -> dict:
        weights = None
        if self.model.built:
            weights = [np.asarray(w) for w in self.model.get_weights()]
        model_config, custom_objects = self.serialized_model()
        optimizer = (
            ("str", self.optimizer)
            if isinstance(self.optimizer, str)
            else ("obj", type(self.optimizer), self.optimizer.get_config())
        )
        return {
            "version": CONFIG_VERSION,
            "model": model_config,
            "weights": weights,
            "optimizer": optimizer,
            "loss": encode(self.loss),
            "metrics": encode(self.metrics),
            "metrics_type": type(self.metrics).__name__,
            "batch_size": self.batch_size,
            "loss_weights": self.loss_weights,
            "custom_objects": with_registered_names(custom_objects),
        }

    def __setstate__(self, state: dict) -> None:
        custom_objects = state["custom_objects"]
        with custom_scope(custom_objects):
            model = deserialize_model(state["model"], custom_objects)
            if state["weights"] is not None:
                model.set_weights(state["weights"])
            kind, *rest = state["optimizer"]
            self.optimizer = rest[0] if kind == "str" else rest[0].from_config(rest[1])
            self.loss = decode(state["loss"], metric=False)
            metrics = decode(state["metrics"], metric=False)
        if state["metrics_type"] == "tuple" and isinstance(metrics, list):
            metrics = tuple(metrics)
        self.model = model
        self.metrics = metrics
        self.batch_size = state["batch_size"]
        self.loss_weights = state.get("loss_weights")
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
        specs = model_input_specs(model)
        if specs is None:
            specs = [(s, "float32") for s in shapes]
        elif shapes:
            _check_data_fits_inputs(model.name, specs, shapes)
        output_names = model_output_names(model)
        metric_names = compiled_metric_names(self.loss, self.metrics, output_names)
        _check_loss_weights(self.loss_weights, output_names)

        model_config, custom_objects = self.serialized_model()
        with custom_scope(custom_objects):
            optimizer = fresh_optimizer(self.optimizer)
            opt_config = optimizer.get_config()
            loss_enc = encode(self.loss)
            metrics_enc = encode(self.metrics)
            # Initial state: the model's weights and a freshly built optimizer's variables.
            optimizer.build(model.trainable_variables)
            initial_state = pack(
                [to_numpy(v) for v in model.weights],
                [v.path for v in model.weights],
                [to_numpy(v) for v in optimizer.variables],
                [v.path for v in optimizer.variables],
            )

        config = {
            "version": CONFIG_VERSION,
            "model": model_config,
            "optimizer": (type(optimizer), opt_config),
            "loss": loss_enc,
            "metrics": metrics_enc,
            "loss_weights": self.loss_weights,
            "custom_objects": with_registered_names(custom_objects),
            "batch_size": self.batch_size,
            "input_shapes": [s for s, _ in specs],
        }
        try:
            # cloudpickle: custom objects, losses and metrics defined in the user's script (or
            # in a module the workers cannot import) travel by value; the rest by reference.
            with shipped_by_value([custom_objects, self.loss, self.metrics, type(optimizer)]):
                config_bytes = cloudpickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)
            pickle.loads(config_bytes)
        except Exception as exc:
            raise CerebroError(
                f"The configuration of model {model.name!r} cannot be sent to worker "
                f"processes: {exc}. Losses, metrics and custom objects must be picklable "
                "(cloudpickle ships functions and classes of your script by value)."
            ) from exc

        key_opt_config = dict(opt_config)
        key_opt_config.pop("name", None)
        if isinstance(key_opt_config.get("learning_rate"), numbers.Number):
            # A float learning rate is an optimizer variable carried in the checkpoint.
            key_opt_config.pop("learning_rate")
        key = {
            "version": CONFIG_VERSION,
            "keras": keras.__version__,
            "model": canonical_model_config(
                model_config, [layer.name for layer in flatten_layers(model)]
            ),
            "outputs": output_names if len(output_names) > 1 else None,
            "optimizer": [qualified_name(type(optimizer)), key_opt_config],
            "loss": encode_key(loss_enc),
            "metrics": encode_key(metrics_enc),
            "custom_objects": sorted(
                [k, qualified_name(v)] for k, v in custom_objects.items()
            ),
        }
        if self.loss_weights is not None:  # a constant of the compiled model, not of its state
            key["loss_weights"] = self.loss_weights
        arch_key = hashlib.sha256(
            json.dumps(key, sort_keys=True, default=json_default).encode()
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


def _validate_loss_weights(loss_weights: Any) -> list[float] | dict[str, float] | None:
    """``loss_weights`` as a list of floats or a dict of output name -> float (None stays None)."""
    if loss_weights is None:
        return None
    expected = "None, a list of numbers (one per model output) or a dict mapping output names to numbers"
    if isinstance(loss_weights, Mapping):
        items = list(loss_weights.items())
        if not all(isinstance(k, str) for k, _ in items):
            raise _param_error(TypeError, "loss_weights", expected, loss_weights)
    elif isinstance(loss_weights, (list, tuple)):
        items = list(enumerate(loss_weights))
    else:
        raise _param_error(TypeError, "loss_weights", expected, loss_weights)
    for _, weight in items:
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not np.isfinite(weight) or weight < 0:
            raise _param_error(ValueError, "loss_weights", f"{expected}, each finite and >= 0", loss_weights)
    if isinstance(loss_weights, Mapping):
        return {k: float(w) for k, w in items}
    return [float(w) for _, w in items]


def _check_loss_weights(loss_weights: Any, output_names: Sequence[str]) -> None:
    """ValueError unless ``loss_weights`` has one weight per output (a dict: for every output)."""
    if loss_weights is None:
        return
    if isinstance(loss_weights, Mapping):
        unknown = sorted(set(loss_weights) - set(output_names))
        missing = [name for name in output_names if name not in loss_weights]
        if unknown or missing:
            raise ValueError(
                f"The 'loss_weights' parameter of KerasEstimator must give a weight for every model "
                f"output {list(output_names)}; it names unknown outputs {unknown} and misses {missing}."
            )
    elif len(loss_weights) != len(output_names):
        raise ValueError(
            f"The 'loss_weights' parameter of KerasEstimator must have one weight per model output "
            f"({len(output_names)}: {list(output_names)}) or be a dict keyed by output name. "
            f"Got {len(loss_weights)} weights instead."
        )


def _validate_input_shapes(input_shapes: Any) -> list[tuple[int, ...]]:
    if input_shapes is None:
        return []
    try:
        shapes = [tuple(int(d) for d in shape) for shape in input_shapes]
    except (TypeError, ValueError):
        raise TypeError(
            "input_shapes must be a list of per-input shapes without the batch dimension, "
            f"e.g. [(64,)]. Got {describe(input_shapes)} instead."
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
