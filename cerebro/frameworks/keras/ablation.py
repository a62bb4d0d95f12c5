"""Ablation variants of an estimator: the same model without one layer, or with fewer input
features, freshly initialised (``selection.py``'s ablation studies)."""

from __future__ import annotations

import copy
from typing import Any, Mapping

import keras

from ...errors import CerebroError
from .encoding import custom_scope, fresh_optimizer
from .estimator import KerasEstimator

__all__ = ["ablate"]


def _fresh_config(model: Any) -> dict:
    """The model's config without the recorded build shapes, so it can be rebuilt differently."""
    config = copy.deepcopy(model.get_config())
    config.pop("build_input_shape", None)
    for layer in config.get("layers", []):
        layer.pop("build_config", None)
    return config


def _rebuild(model: Any, config: dict, custom_objects: Mapping[str, Any] | None) -> Any:
    with custom_scope(custom_objects):
        if isinstance(model, keras.Sequential):
            return keras.Sequential.from_config(config)
        return keras.Model.from_config(config)


def ablate(estimator: KerasEstimator, *, drop_layer: str | None = None, input_width: int | None = None) -> KerasEstimator:
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
        new_model = _rebuild(model, config, estimator.serialized_model()[1])
    except Exception as exc:
        what = f"without layer {drop_layer!r}" if drop_layer else f"with {input_width} input features"
        raise CerebroError(f"cannot rebuild {model.name!r} {what}: {type(exc).__name__}: {exc}") from exc
    return KerasEstimator(new_model, fresh_optimizer(estimator.optimizer), estimator.loss, estimator.metrics,
                          estimator.batch_size, loss_weights=estimator.loss_weights,
                          custom_objects=estimator.custom_objects)
