"""The driver's check of a Keras configuration against a few rows of its data, before any worker trains.

:func:`check_sample` runs once per configuration (from :meth:`KerasFramework.make_spec`),
after the spec is made, on the user's (built) model:

1. the sample's inputs and targets as a worker makes them (one label column per output);
2. one forward pass in inference mode (eager, no state changes: the spec's initial state was
   captured before);
3. the label checks of :func:`cerebro.frameworks.arrays.check_label_fit` for the losses that
   read labels as class indices (sparse categorical cross entropy), one-hot vectors
   (categorical and categorical focal cross entropy) or probabilities (binary and binary
   focal cross entropy), against the whole data set's label statistics;
4. the compiled loss (Keras' own ``CompileLoss``, which resolves names, aliases such as
   ``"crossentropy"``, per-output lists and dicts, and loss weights as ``compile`` does) on the
   sample rows, so that a loss that cannot take these labels fails here with the real cause
   (:func:`cerebro.frameworks.base.error_cause`) as the last line.

It costs a few milliseconds per configuration (the first call in a process ~0.1 s more:
TensorFlow's eager start-up).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import keras
import numpy as np

from ...errors import CerebroError
from ..arrays import LabelUse, check_label_fit
from ..base import DataSample, error_cause
from .config import model_output_names
from .encoding import custom_scope
from .estimator import KerasEstimator, ModelSpec
from .inputs import make_inputs, make_targets
from .train import tensorflow_ready

__all__ = ["check_sample", "label_kind"]

_FUNCTION_KINDS = {
    "sparse_categorical_crossentropy": "class",
    "categorical_crossentropy": "onehot",
    "categorical_focal_crossentropy": "onehot",
    "binary_crossentropy": "binary",
    "binary_focal_crossentropy": "binary",
}
_CROSSENTROPY_ALIASES = ("crossentropy", "ce")


def _keras_own(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module == "keras" or module.startswith("keras.")


def _loss_classes() -> tuple[tuple[type, str], ...]:
    losses = keras.losses
    return (
        (losses.SparseCategoricalCrossentropy, "class"),
        (losses.CategoricalCrossentropy, "onehot"),
        (getattr(losses, "CategoricalFocalCrossentropy", losses.CategoricalCrossentropy), "onehot"),
        (losses.BinaryCrossentropy, "binary"),
        (getattr(losses, "BinaryFocalCrossentropy", losses.BinaryCrossentropy), "binary"),
    )


def label_kind(loss: Any) -> tuple[str | None, float | None]:
    """``(kind, ignored label)`` of one output's loss: ``"class"``, ``"onehot"``, ``"binary"``,
    ``"auto"`` (the ``"crossentropy"`` alias, which Keras resolves from the shapes) or None (a
    loss whose labels are not checked: regression losses, the user's own functions)."""
    if loss is None:
        return None, None
    if isinstance(loss, str):
        if loss.lower() in _CROSSENTROPY_ALIASES:
            return "auto", None
        try:
            loss = keras.losses.get(loss)
        except Exception:  # noqa: BLE001 - a custom name: not ours to check
            return None, None
    if isinstance(loss, keras.losses.Loss):
        for cls, kind in _loss_classes():
            if isinstance(loss, cls):
                ignore = None
                if kind == "class":
                    kwargs = getattr(loss, "_fn_kwargs", None) or {}
                    ignore = kwargs.get("ignore_class")
                return kind, ignore
        loss = getattr(loss, "fn", None)  # another LossFunctionWrapper: by its function
    if callable(loss) and _keras_own(loss):
        return _FUNCTION_KINDS.get(getattr(loss, "__name__", ""), None), None
    return None, None


def _loss_name(loss: Any) -> str:
    if isinstance(loss, str):
        return repr(loss)
    if isinstance(loss, keras.losses.Loss):
        return type(loss).__name__
    return repr(getattr(loss, "__name__", None) or type(loss).__name__)


def _per_output(loss: Any, output_names: Sequence[str]) -> list[Any]:
    """The loss of each output, in order (None: that output has no loss)."""
    if isinstance(loss, Mapping):
        return [loss.get(name) for name in output_names]
    if isinstance(loss, (list, tuple)):
        items = list(loss)
        return items + [None] * (len(output_names) - len(items))
    return [loss] * len(output_names)


def _as_list(outputs: Any, names: Sequence[str]) -> list[Any]:
    if isinstance(outputs, Mapping):
        if all(n in outputs for n in names):
            return [outputs[n] for n in names]
        return list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return list(outputs)
    return [outputs]


def _uses(estimator: KerasEstimator, names: Sequence[str], preds: list[Any], targets: list[Any],
          columns: Sequence[str]) -> list[LabelUse]:
    uses = []
    for i, (loss, pred, target) in enumerate(zip(_per_output(estimator.loss, names), preds, targets)):
        kind, ignore = label_kind(loss)
        if kind is None:
            continue
        shape = tuple(int(d) for d in pred.shape)
        classes = shape[-1] if len(shape) >= 2 else 1
        values = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        target = np.asarray(target)
        if kind == "auto":  # Keras' get_loss: binary for one unit, sparse for lower-rank labels
            if classes == 1:
                kind = "binary"
            elif target.ndim < len(shape) or (target.shape[-1] == 1 and classes > 1):
                kind = "class"
            else:
                kind = "onehot"
        what = f"The model's output {names[i]!r} of shape {(None, *shape[1:])}"
        uses.append(LabelUse(columns[i], _loss_name(loss), kind, what, classes=classes, values=values,
                             rank=len(shape), ignore=ignore))
    return uses


def _compile_loss(estimator: KerasEstimator) -> Any:
    """The loss as ``model.compile`` builds it (``Trainer.compile``: the model's ``output_names``
    where it has them, else None)."""
    try:
        from keras.src.trainers.compile_utils import CompileLoss
    except ImportError:  # a Keras whose internals moved: the loss is checked by the first sub-epoch
        return None
    model = estimator.model
    output_names = model.output_names if hasattr(model, "output_names") else None
    return CompileLoss(estimator.loss, estimator.loss_weights, output_names=output_names)


def check_sample(estimator: KerasEstimator, spec: ModelSpec, sample: DataSample) -> None:
    """One forward pass, the label checks and the loss of ``estimator``'s model on ``sample``
    (see the module docstring).  Raises :class:`LabelMismatch` for labels that do not fit a
    loss, CerebroError naming the shapes and the real cause when the forward pass or the loss
    fails; warns (UserWarning) about fractional class indices."""
    model = estimator.model
    columns = list(sample.label_columns)
    x = tensorflow_ready(make_inputs(spec, sample.features, sample.feature_columns))
    y = make_targets(spec, sample.labels, columns)
    targets = list(y) if spec.num_outputs > 1 else [y]
    names = model_output_names(model)
    with custom_scope(estimator.custom_objects):
        try:
            outputs = model(x, training=False)
        except Exception as exc:
            shapes = ", ".join(str(np.shape(a)) for a in (x if isinstance(x, tuple) else [x]))
            raise CerebroError(
                f"The model {model.name!r} fails on {len(targets[0])} sample rows of the feature columns "
                f"{list(sample.feature_columns)} (input shapes {shapes}): {type(exc).__name__}: {error_cause(exc)}"
            ) from exc
        preds = _as_list(outputs, names)
        if len(names) != len(preds):
            names = [f"output_{i}" for i in range(len(preds))] if len(preds) > 1 else ["output"]
        check_label_fit(_uses(estimator, names, preds, targets, columns), sample.labels,
                        getattr(sample, "label_stats", None))
        compiled = _compile_loss(estimator)
        if compiled is None:
            return
        y_true = tensorflow_ready(targets if len(targets) > 1 else targets[0])
        y_pred = preds if len(preds) > 1 else preds[0]
        try:
            compiled.build(y_true, y_pred)
            compiled(y_true, y_pred)
        except Exception as exc:
            fits = ", ".join(
                f"output {n!r} of shape {(None, *tuple(p.shape)[1:])} and label column {c!r} (values shape "
                f"{np.shape(t)[1:] or '()'}, {np.asarray(t).dtype})" for n, p, t, c in zip(names, preds, targets, columns))
            raise CerebroError(
                f"The loss {_loss_name(estimator.loss)} fails on the model's {fits} ({len(targets[0])} sample rows): "
                f"{type(exc).__name__}: {error_cause(exc)}"
            ) from exc
