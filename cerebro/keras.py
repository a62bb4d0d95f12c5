"""``from cerebro.keras import SparkEstimator``: the original Cerebro's estimator arguments over
:class:`cerebro.KerasEstimator` (docs/migrating.md).

``SparkEstimator(model=..., optimizer=..., loss=..., metrics=..., batch_size=..., loss_weights=...,
custom_objects=...)``, keyword arguments only as in the original, is a ``KerasEstimator``: the
arguments mean what they meant (``batch_size`` defaults to 32 and may be an integral float, ``metrics`` to none; a compiled
model's own optimizer and loss are used when ``optimizer`` or ``loss`` is not given).
``callbacks`` and ``transformation_fn`` would change what is trained and cannot be honoured
here, so giving one is an error that says what to do instead.  ``CerebroModel`` is the class of
the models a ``cerebro.tune`` search returns.

The name of this module is ``cerebro.keras``; inside the package ``import keras`` is absolute and
still means Keras itself.
"""

from __future__ import annotations

from typing import Any

import keras

from ._checks import is_int, is_number, param_error
from .frameworks.keras import KerasEstimator
from .tune import CerebroModel

__all__ = ["SparkEstimator", "CerebroModel"]


class SparkEstimator(KerasEstimator):
    """:class:`cerebro.KerasEstimator` with the original Cerebro's keyword arguments."""

    def __init__(self, *, model: Any = None, custom_objects: Any = None, optimizer: Any = None, loss: Any = None,
                 batch_size: int | None = None, loss_weights: Any = None, metrics: Any = None, callbacks: Any = None,
                 transformation_fn: Any = None) -> None:
        if callbacks is not None:
            if not isinstance(callbacks, (list, tuple)):
                raise param_error("SparkEstimator", "callbacks", "a list of Keras callbacks or None", callbacks, TypeError)
            if callbacks:
                raise ValueError(
                    "The 'callbacks' parameter of SparkEstimator cannot be honoured: cerebro trains every model in "
                    "sub-epochs that hop between workers and runs no Keras callbacks. For early stopping pass "
                    "early_stopping=MedianStopping(...) to the search; for a learning-rate schedule give the "
                    "optimizer a keras.optimizers.schedules.LearningRateSchedule; TensorBoard logs are written to "
                    f"each experiment's directory. Got {callbacks!r}; remove it."
                )
        if transformation_fn is not None:
            raise ValueError(
                "The 'transformation_fn' parameter of SparkEstimator cannot be honoured: cerebro feeds each model "
                "numpy batches of its partition's rows (in a seeded random order every sub-epoch), not a "
                "tf.data.Dataset. Transform the DataFrame before fit(), or put the preprocessing in the model "
                f"(Keras preprocessing layers). Got {transformation_fn!r}; remove it."
            )
        if isinstance(model, keras.Model):
            # The original compiled the model with the given optimizer, else the model's own.
            optimizer = getattr(model, "optimizer", None) if optimizer is None else optimizer
            loss = getattr(model, "loss", None) if loss is None else loss
        if batch_size is None:
            batch_size = 32
        elif is_number(batch_size) and not is_int(batch_size) and float(batch_size).is_integer():
            batch_size = int(batch_size)   # the original's toInt converter: 64.0 is 64
        super().__init__(model, optimizer, loss, () if metrics is None else metrics, batch_size,
                         loss_weights=loss_weights, custom_objects=custom_objects)
