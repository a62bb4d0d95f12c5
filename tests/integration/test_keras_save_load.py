"""A Keras model compiled with the user's own metric function and a closure loss: its saved copy
reads back with ``cerebro.load_model`` (the exact model, as it trained) and with plain
``keras.models.load_model`` given only the user's own objects (the file names no cerebro
internals), and both predict and evaluate as the trained model does."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

import cerebro
from cerebro import TrainedModel
from cerebro.frameworks.base import get_framework


def true_class_probability(y_true, y_pred):
    """A metric function: the probability the model gives the true class, per row."""
    import keras

    index = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
    return keras.ops.take_along_axis(y_pred, index[:, None], axis=1)[:, 0]


def smoothed_crossentropy(smoothing):
    """A closure loss: label-smoothed sparse categorical cross-entropy."""
    import keras

    def smoothed_ce(y_true, y_pred):
        target = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), 10)
        target = target * (1 - smoothing) + smoothing / 10
        return keras.losses.categorical_crossentropy(target, y_pred)

    return smoothed_ce


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int64")


def test_a_model_with_custom_metric_and_loss_functions_saves_and_loads_both_ways(digits, tmp_path):
    import keras

    fw = get_framework("keras")
    x, y = digits
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    estimator = cerebro.KerasEstimator(model, keras.optimizers.Adam(1e-2), smoothed_crossentropy(0.1),
                                       ["accuracy", true_class_probability])
    spec = fw.make_spec(estimator, [(64,)])
    trained = fw.export(spec, spec.initial_state)
    fw.train_sub_epoch(trained, x[:1200], y[:1200], batch_size=32, seed=1)
    result = TrainedModel("model_000", {"lr": 1e-2}, pd.DataFrame({"epoch": [1]}), ("features",), ("label",),
                          _spec=spec, _model=trained)
    frame = pd.DataFrame({"features": list(x[1200:]), "label": y[1200:]})
    before = result.predict(frame)
    expected = trained.evaluate(x[1200:], y[1200:], batch_size=len(x), verbose=0, return_dict=True)
    assert sorted(expected) == ["accuracy", "loss", "true_class_probability"] and expected["accuracy"] > 0.8

    path = result.save(tmp_path / "saved")
    with zipfile.ZipFile(os.path.join(path, "model.keras")) as archive:
        config = archive.read("config.json").decode()
    assert "cerebro" not in config and "per_row" not in config   # only the user's objects are named
    assert '"smoothed_ce"' in config and '"true_class_probability"' in config

    # cerebro.load_model: the model as it trained (cerebro's own compile), whatever it was compiled with.
    loaded = cerebro.load_model(path)
    np.testing.assert_array_equal(loaded.predict(frame), before)
    assert loaded.keras().evaluate(x[1200:], y[1200:], batch_size=len(x), verbose=0, return_dict=True) == expected
    assert int(loaded.keras().optimizer.iterations) == int(trained.optimizer.iterations) == -(-1200 // 32)

    # Plain Keras, with the user's own functions as custom objects.
    plain = keras.models.load_model(os.path.join(path, "model.keras"), custom_objects={
        "smoothed_ce": smoothed_crossentropy(0.1), "true_class_probability": true_class_probability})
    np.testing.assert_array_equal(plain.predict(x[1200:], batch_size=1024, verbose=0), before)
    again = plain.evaluate(x[1200:], y[1200:], batch_size=len(x), verbose=0, return_dict=True)
    assert sorted(again) == sorted(expected)
    for name, value in expected.items():
        assert again[name] == pytest.approx(value, rel=1e-6), name
    assert int(plain.optimizer.iterations) == -(-1200 // 32)


def test_a_metric_keras_cannot_serialise_still_saves_and_loads(digits, tmp_path, caplog):
    import functools

    import keras

    fw = get_framework("keras")
    x, y = digits
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    top_2 = functools.partial(keras.metrics.sparse_top_k_categorical_accuracy, k=2)
    spec = fw.make_spec(cerebro.KerasEstimator(model, "adam", "sparse_categorical_crossentropy", [top_2]), [(64,)])
    trained = fw.export(spec, spec.initial_state)
    fw.train_sub_epoch(trained, x[:500], y[:500], batch_size=32, seed=2)
    path = TrainedModel("m", {}, pd.DataFrame(), ("features",), ("label",), _spec=spec, _model=trained).save(tmp_path / "m")
    assert "not its loss and metrics" in caplog.text   # a functools.partial has no name Keras can write
    expected = trained.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)
    assert cerebro.load_model(path).keras().evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True) == expected
    plain = keras.models.load_model(os.path.join(path, "model.keras"))
    np.testing.assert_array_equal(plain.predict(x, verbose=0), trained.predict(x, verbose=0))
    assert int(plain.optimizer.iterations) == -(-500 // 32)
