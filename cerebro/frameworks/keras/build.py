"""Compiled models from specs: what a worker trains and what the driver hands back to the user.

Every process rebuilds the model from the spec's config and compiles it with fresh optimizer,
loss and metric objects decoded from their encodings (plain metric functions wrapped to be
row-weighted), graph mode, one step per execution.
"""

from __future__ import annotations

from typing import Any

from .config import deserialize_model
from .encoding import custom_scope, decode
from .estimator import ModelSpec
from .state import state_from_bytes

__all__ = ["build_compiled", "export_model"]


def build_compiled(spec: ModelSpec) -> Any:
    """A fresh compiled keras.Model for the spec, its optimizer built (weights and optimizer
    state are whatever Keras initialised until state is loaded)."""
    config = spec.load_config()
    custom_objects = config["custom_objects"]
    model = deserialize_model(config["model"], custom_objects)
    with custom_scope(custom_objects):
        if not model.built:
            shapes = [tuple(s) for s in config["input_shapes"]]
            model.build((None, *shapes[0]) if len(shapes) == 1 else [(None, *s) for s in shapes])
        opt_class, opt_config = config["optimizer"]
        optimizer = opt_class.from_config(opt_config)
        model.compile(
            optimizer=optimizer,
            loss=decode(config["loss"], metric=False),
            metrics=decode(config["metrics"], metric=True),
            run_eagerly=False,
            jit_compile=False,
            steps_per_execution=1,
        )
        optimizer.build(model.trainable_variables)
    return model


def export_model(spec: ModelSpec, state: bytes) -> Any:
    """A fresh compiled keras.Model holding ``state``; driver side (TrainedModel.keras())."""
    model = build_compiled(spec)
    state_from_bytes(model, state)
    return model
