"""The Keras lean training path is bit-identical to ``model.fit`` / ``model.evaluate``.

cerebro's worker drives a cached model's compiled train and test steps over its partition
instead of calling ``fit`` and ``evaluate`` per visit (each builds a tf.data pipeline and a
callback list, ~50 ms).  These tests pin that the weights, the optimizer state and the metrics
are exactly those ``fit(..., shuffle=False)`` and ``evaluate`` give: full and partial last
batches, fewer rows than a batch, dropout, multi-input / multi-output models with loss
weights, float64 inputs, several passes in a row.
"""

from __future__ import annotations

import numpy as np
import pytest

from cerebro.frameworks import keras as ck

ck.limit_threads(1)

import keras  # noqa: E402

from cerebro import KerasEstimator  # noqa: E402
from cerebro.core.seeds import row_order  # noqa: E402
from cerebro.frameworks.arrays import take  # noqa: E402
from cerebro.frameworks.base import get_framework  # noqa: E402
from cerebro.frameworks.keras import train  # noqa: E402

FW = get_framework("keras")
BATCH = 32


def fit_reference(model, x, y, seed):
    """What train_sub_epoch did before the lean path: the full Keras seeding, then fit."""
    n = len(y[0]) if isinstance(y, list) else len(y)
    keras.utils.set_random_seed(seed % 2**32)
    train._reset_seed_generators(model, seed)
    order = row_order(seed, n)
    history = model.fit(take(x, order), take(y, order), batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return {k: float(v[-1]) for k, v in history.history.items()}


def evaluate_reference(model, x, y):
    results = model.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    return {k: float(v) for k, v in results.items()}


def mlp():
    m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dropout(0.3),
                          keras.layers.Dense(3, activation="softmax")])
    return KerasEstimator(m, keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"],
                          batch_size=BATCH)


def two_in_two_out():
    a, b = keras.Input((8,), name="a"), keras.Input((4,), name="b")
    h = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()([a, b]))
    cls = keras.layers.Dense(3, activation="softmax", name="cls")(h)
    reg = keras.layers.Dense(1, name="reg")(h)
    return KerasEstimator(keras.Model([a, b], [cls, reg]), keras.optimizers.SGD(0.05, momentum=0.9),
                          ["sparse_categorical_crossentropy", "mse"], metrics=[["accuracy"], ["mae"]],
                          loss_weights=[1.0, 0.5], batch_size=BATCH)


def data(kind, n, rng):
    if kind == "mlp":
        return rng.normal(size=(n, 8)).astype("float32"), rng.integers(0, 3, n)
    x = [rng.normal(size=(n, 8)).astype("float32"), rng.normal(size=(n, 4)).astype("float32")]
    return x, [rng.integers(0, 3, n), rng.normal(size=(n, 1)).astype("float32")]


def same_state(a, b):
    weights = all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights()))
    slots = all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(a.optimizer.variables, b.optimizer.variables))
    return weights and slots


@pytest.mark.parametrize("kind,make", [("mlp", mlp), ("multi", two_in_two_out)])
@pytest.mark.parametrize("rows", [96, 100, 20])
def test_lean_path_equals_fit_and_evaluate(kind, make, rows):
    rng = np.random.default_rng(rows)
    spec = make().make_spec([(8,)] if kind == "mlp" else [(8,), (4,)])
    reference, lean = FW.build(spec), FW.build(spec)
    lean.set_weights(reference.get_weights())
    assert lean._cerebro_runs_users_code is False  # Keras' own layers only: no TF global seed reset
    x, y = data(kind, rows, rng)
    xv, yv = data(kind, rows + 7, rng)
    if kind == "mlp":
        xv = xv.astype("float64")  # Keras casts float inputs to floatx; so must the lean path
    for epoch in range(3):
        expected = fit_reference(reference, x, y, 1000 + epoch)
        got = train.train_sub_epoch(lean, x, y, batch_size=BATCH, seed=1000 + epoch)
        assert got.pop("rows") == rows
        assert list(got.items()) == list(expected.items())
        assert same_state(reference, lean), f"state differs after pass {epoch}"
        expected_eval = evaluate_reference(reference, xv, yv)
        got_eval = train.evaluate(lean, xv, yv, batch_size=BATCH)
        assert got_eval.pop("rows") == rows + 7
        assert list(got_eval.items()) == list(expected_eval.items())


class StatefulNoise(keras.layers.Layer):
    """A user layer drawing from TensorFlow's stateful random ops (not a seed generator)."""

    def call(self, inputs, training=False):
        import tensorflow as tf

        return inputs + tf.random.normal(tf.shape(inputs), stddev=0.1) if training else inputs


def test_user_code_keeps_the_tensorflow_seed_reset():
    model = keras.Sequential([keras.Input((8,)), StatefulNoise(), keras.layers.Dense(3, activation="softmax")])
    est = KerasEstimator(model, keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", batch_size=BATCH)
    spec = est.make_spec([(8,)])
    rng = np.random.default_rng(0)
    x, y = data("mlp", 70, rng)
    cached = FW.build(spec)
    assert cached._cerebro_runs_users_code is True
    start = FW.state_to_bytes(cached)
    # A cached model that comes back with the same state and seed must train the same: its
    # stateful TF random op has moved on during the first pass, and only the per-sub-epoch
    # tf.random.set_seed (which clears TF's kernel caches) restarts its stream.
    first = train.train_sub_epoch(cached, x, y, batch_size=BATCH, seed=11)
    after_first = FW.state_to_bytes(cached)
    FW.load_state(cached, start)
    second = train.train_sub_epoch(cached, x, y, batch_size=BATCH, seed=11)
    assert first == second
    assert FW.state_to_bytes(cached) == after_first


def test_a_users_metric_function_counts_as_users_code():
    def my_mae(y_true, y_pred):
        return keras.ops.mean(keras.ops.abs(y_true - y_pred), axis=-1)

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    spec = KerasEstimator(model, keras.optimizers.SGD(0.01), "mse", metrics=[my_mae], batch_size=BATCH).make_spec([(4,)])
    assert FW.build(spec)._cerebro_runs_users_code is True
    builtin = KerasEstimator(keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]), keras.optimizers.SGD(0.01),
                             keras.losses.mean_squared_error, metrics=["mae"], batch_size=BATCH).make_spec([(4,)])
    assert FW.build(builtin)._cerebro_runs_users_code is False
