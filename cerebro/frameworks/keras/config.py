"""The model as a config: what crosses process boundaries instead of a live ``keras.Model``.

The driver serialises the user's model once (:func:`serialize_model`, the compile config
dropped: workers compile with cerebro's optimizer, loss and metrics); every worker rebuilds it
with :func:`deserialize_model`, with the user's functions and classes the model uses
(:func:`model_custom_objects`) as custom objects.  :func:`canonical_model_config` is the name-free form the
``arch_key`` hashes; :func:`model_input_specs` and :func:`model_output_names` read a built
model's signature.
"""

from __future__ import annotations

import json
import types
from typing import Any, Mapping, Sequence

import keras
import numpy as np

from ...errors import CerebroError
from ..shipping import SKIP_MODULES
from .encoding import custom_scope

__all__ = [
    "serialize_model",
    "deserialize_model",
    "json_default",
    "flatten_layers",
    "canonical_model_config",
    "model_input_specs",
    "model_output_names",
    "model_custom_objects",
]


def serialize_model(model: Any, custom_objects: Mapping[str, Any] | None) -> dict:
    """The Keras config of ``model`` without its compile config; CerebroError when the model
    cannot be serialised (or its config is not JSON-able)."""
    try:
        with custom_scope(custom_objects):
            config = keras.saving.serialize_keras_object(model)
        config = dict(config)
        # The compile config is the user's; workers compile with our optimizer/loss/metrics.
        config.pop("compile_config", None)
        json.dumps(config, default=json_default)
    except Exception as exc:  # subclassed models without get_config, exotic layers
        raise CerebroError(
            f"Cannot serialise the Keras model {getattr(model, 'name', '?')!r} "
            f"({type(model).__qualname__}): {exc}. cerebro rebuilds every model in its worker "
            "processes from its config: use a Sequential or functional model, or give custom "
            "layers/models a get_config() and pass them in custom_objects."
        ) from exc
    return config


def deserialize_model(config: dict, custom_objects: Mapping[str, Any] | None) -> Any:
    """A fresh, uncompiled model from :func:`serialize_model`'s config; CerebroError naming
    the model when it cannot be rebuilt."""
    try:
        with custom_scope(custom_objects):
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


def json_default(obj: Any) -> Any:
    """``json.dumps`` fallback: numpy scalars and arrays as Python values, anything else as repr."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return repr(obj)


def flatten_layers(model: Any) -> list:
    """``model`` and all its layers, nested ones included, in a stable order."""
    try:
        return list(model._flatten_layers(include_self=True, recursive=True))
    except Exception:  # private Keras API: fall back to the public .layers
        out, stack = [], [model]
        while stack:
            layer = stack.pop(0)
            out.append(layer)
            stack.extend(getattr(layer, "layers", []) or [])
        return out


def canonical_model_config(config: dict, layer_names: Sequence[str]) -> Any:
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


def model_input_specs(model: Any) -> list[tuple[tuple, str]] | None:
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


def model_output_names(model: Any) -> list[str]:
    """The names Keras prefixes per-output losses and metrics with (``["output"]`` if unknown)."""
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


def _is_users(obj: Any) -> bool:
    """Whether ``obj`` (a function or class) comes from the user's code, not from a library
    every worker has."""
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str):
        return False
    top = module.partition(".")[0]
    return top == "__main__" or top not in SKIP_MODULES


def _names_by_reference(config: Any, names: set[str]) -> set[str]:
    """The names under which ``config`` (a Keras config) refers to functions and to classes
    that are not Keras': Keras writes those by name only, and a worker looks them up among
    the custom objects."""
    if isinstance(config, Mapping):
        if "class_name" in config and "config" in config:
            module = config.get("module")
            if config["class_name"] == "function" and isinstance(config["config"], str):
                names.add(config["config"])
            elif not (isinstance(module, str) and module.partition(".")[0] == "keras"):
                names.add(str(config["class_name"]))
        for value in config.values():
            _names_by_reference(value, names)
    elif isinstance(config, (list, tuple)):
        for value in config:
            _names_by_reference(value, names)
    return names


def model_custom_objects(model: Any, config: Mapping[str, Any]) -> dict[str, Any]:
    """The user's functions and classes that ``model``'s ``config`` (from
    :func:`serialize_model`) names by reference only: a custom activation function, an
    unregistered layer class, the class of a custom initializer.  Found among the model's
    layers, their classes and the objects they hold; keyed by the name the config uses.  They
    travel to the workers with the spec (by value when a worker could not import them)."""
    wanted = _names_by_reference(config, set())
    found: dict[str, Any] = {}

    def add(obj: Any) -> None:
        if not isinstance(obj, (types.FunctionType, type)):
            if isinstance(obj, (keras.layers.Layer, keras.Variable)) or not hasattr(obj, "get_config"):
                return
            obj = type(obj)
        name = getattr(obj, "__name__", None)
        if name in wanted and _is_users(obj):
            found.setdefault(name, obj)

    for layer in flatten_layers(model):
        add(type(layer))   # an unregistered layer class of the script
        for value in vars(layer).values():
            items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (list, tuple)) else (value,)
            for item in items:
                add(item)
    return found
