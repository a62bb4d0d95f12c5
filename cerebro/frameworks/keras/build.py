"""Compiled models from specs: what a worker trains and what the driver hands back to the user.

Every process rebuilds the model from the spec's config and compiles it with fresh optimizer,
loss and metric objects decoded from their encodings (plain metric functions wrapped to be
row-weighted, and the per-output losses of a multi-output model too), graph mode, one step
per execution.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras

from .config import deserialize_model
from .encoding import custom_scope, decode
from .estimator import ModelSpec
from .state import state_from_bytes

__all__ = ["build_compiled", "export_model"]


def build_compiled(spec: ModelSpec, *, row_weighted: bool = True, custom_objects: Mapping[str, Any] | None = None) -> Any:
    """A fresh compiled keras.Model for the spec, its optimizer built (weights and optimizer
    state are whatever Keras initialised until state is loaded).

    ``row_weighted=False`` compiles with the user's own metric functions instead of cerebro's
    row-weighted wrappers of them: the model that :meth:`TrainedModel.save` writes, whose file
    names only the user's objects.  ``custom_objects`` add to those the spec carries.
    """
    config = spec.load_config()
    custom_objects = {**config["custom_objects"], **(custom_objects or {})}
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
            metrics=decode(config["metrics"], metric=row_weighted),
            loss_weights=config.get("loss_weights"),
            run_eagerly=False,
            jit_compile=False,
            steps_per_execution=1,
        )
        optimizer.build(model.trainable_variables)
    _row_weight_output_losses(model)
    model._cerebro_runs_users_code = runs_users_code(model, config)
    return model


def _keras_own(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module == "keras" or module.startswith("keras.")


def _encoded_users_code(enc: tuple) -> bool:
    """Whether an :func:`encode`d loss/metrics argument names anything but Keras' own."""
    if enc[0] == "dict":
        return any(_encoded_users_code(v) for _, v in enc[1])
    if enc[0] == "list":
        return any(_encoded_users_code(v) for v in enc[1])
    if enc[0] in ("obj", "fn"):
        return not _keras_own(enc[1])
    return False


def runs_users_code(model: Any, config: Mapping[str, Any]) -> bool:
    """Whether a training step of ``model`` may run code other than Keras' own: a layer, model,
    optimizer, loss or metric class or function of the user's, a Lambda layer, or custom objects.

    Keras' own layers draw their randomness (dropout, noise, augmentation) from their seed
    generators, which every sub-epoch resets from its seed; only the user's code can reach
    TensorFlow's stateful random ops, whose streams ``tf.random.set_seed`` restarts.  That reset
    clears TensorFlow's kernel caches and costs ~0.1 s per sub-epoch, so the training loop pays
    it only where it can matter (see :func:`cerebro.frameworks.keras.train.seed_sub_epoch`).
    """
    if config.get("custom_objects"):
        return True
    classes = [type(model), type(model.optimizer), *(type(layer) for layer in model._flatten_layers())]
    if any(not _keras_own(c) or issubclass(c, keras.layers.Lambda) for c in classes):
        return True
    return _encoded_users_code(config["loss"]) or _encoded_users_code(config["metrics"])


def _row_weight_output_losses(model: Any) -> None:
    """Make the per-output loss trackers of a multi-output model (``<output>_loss``) row-weighted.

    Keras 3 (``compile_utils.CompileLoss.call``) weighs each of them by the static batch size of
    the output, which is None when the step runs as a graph: a partial last batch would count
    as much as a full one, unlike the total ``loss`` (weighted by ``tf.shape``) and every
    metric.  This gives those trackers the batch's row count as their sample weight, computed
    inside the same step; Keras' own weight is kept where it has one (eager execution).  A
    Keras without these internals is left as it is.
    """
    compile_loss = getattr(model, "_compile_loss", None)
    if compile_loss is None or not hasattr(compile_loss, "call") or not hasattr(compile_loss, "build"):
        return
    ops = keras.ops
    rows: dict[str, Any] = {}
    call, build = compile_loss.call, compile_loss.build

    def counted(update_state):
        def update(values, sample_weight=None):
            if sample_weight is None and "rows" in rows:
                sample_weight = rows["rows"]
            return update_state(values, sample_weight=sample_weight)

        return update

    def build_trackers(y_true, y_pred):
        build(y_true, y_pred)
        for tracker in getattr(compile_loss, "metrics", None) or []:
            tracker.update_state = counted(tracker.update_state)

    def call_with_rows(y_true, y_pred, sample_weight=None):
        first = keras.tree.flatten(y_pred)[0]
        rows["rows"] = ops.cast(ops.shape(first)[0], "float32")
        return call(y_true, y_pred, sample_weight)

    compile_loss.build = build_trackers
    compile_loss.call = call_with_rows


def export_model(spec: ModelSpec, state: bytes) -> Any:
    """A fresh compiled keras.Model holding ``state``; driver side (TrainedModel.keras())."""
    model = build_compiled(spec)
    state_from_bytes(model, state)
    return model
