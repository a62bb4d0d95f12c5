"""The Keras adapter through the framework interface (cerebro.frameworks.base.Framework): real
Keras, a small digits MLP."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from cerebro.frameworks import keras as ck  # noqa: E402

ck.limit_threads(1)

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from cerebro.frameworks.base import ModelCache, get_framework  # noqa: E402
from cerebro.frameworks.keras.state import unpack  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return {"x": (x / 16.0).astype("float32")}, {"y": y.astype("int64")}


@pytest.fixture(scope="module")
def spec():
    model = keras.Sequential([keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10, activation="softmax")])
    estimator = ck.KerasEstimator(model, keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", ["accuracy"])
    fw = get_framework("keras")
    fw.check_estimator(estimator)
    return fw.make_spec(estimator, [(64,)])


def test_get_framework_returns_the_keras_adapter(spec):
    fw = get_framework("keras")
    assert isinstance(fw, ck.KerasFramework) and fw is ck.FRAMEWORK and fw.name == "keras"
    assert spec.framework == "keras" and ck.KerasEstimator.framework == "keras"
    with pytest.raises(TypeError, match="must return a KerasEstimator or a TorchEstimator; it returned str"):
        fw.check_estimator("not an estimator")
    cache = ck.ModelCache(max_models=3)
    assert isinstance(cache, ModelCache) and cache.framework is fw and cache.max_models == 3


def test_a_spec_pickled_before_the_framework_field_reads_keras(spec):
    old = ck.ModelSpec.__new__(ck.ModelSpec)
    old.__dict__.update({k: v for k, v in spec.__dict__.items() if k != "framework"})
    restored = pickle.loads(pickle.dumps(old))
    assert "framework" not in restored.__dict__ and restored.framework == "keras"


def state_arrays(data):
    header, weights, opt_values = unpack(data)
    return [(e[1], e[2]) for e in header["weights"] + header["optimizer"]], weights + opt_values


def test_export_then_state_to_bytes_round_trips_exactly(spec, digits):
    fw = ck.FRAMEWORK
    model = fw.export(spec, spec.initial_state)
    exported = fw.state_to_bytes(model)
    # Every value, shape and dtype comes back.  (Not the bytes themselves: a Sequential model
    # built in the driver names its variables "sequential/dense/kernel", the one rebuilt from
    # its config "dense/kernel", and the header records those paths.)
    (layout, values), (layout2, values2) = state_arrays(spec.initial_state), state_arrays(exported)
    assert layout == layout2 and len(values) == len(values2) == 14
    for a, b in zip(values, values2):
        np.testing.assert_array_equal(a, b)
    assert fw.state_token(model) == 0
    # A rebuilt model's state round-trips byte for byte, before and after training.
    assert fw.state_to_bytes(fw.export(spec, exported)) == exported
    features, labels = digits
    x, y = fw.make_inputs(spec, features, ["x"]), fw.make_targets(spec, labels, ["y"])
    metrics = fw.train_sub_epoch(model, x, y, batch_size=32, seed=3, epoch_end=True)
    assert metrics["rows"] == len(y) and set(metrics) == {"loss", "accuracy", "rows"}
    assert fw.state_token(model) == -(-len(y) // 32)
    trained = fw.state_to_bytes(model)
    assert trained != exported
    assert fw.state_to_bytes(fw.export(spec, trained)) == trained


def test_a_functional_models_initial_state_round_trips_byte_for_byte():
    inputs = keras.Input((64,))
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Dense(16, activation="relu")(inputs))
    estimator = ck.KerasEstimator(keras.Model(inputs, outputs), "adam", "sparse_categorical_crossentropy")
    spec = ck.FRAMEWORK.make_spec(estimator, [(64,)])
    assert ck.FRAMEWORK.state_to_bytes(ck.FRAMEWORK.export(spec, spec.initial_state)) == spec.initial_state


def test_predict_output_widths_and_save_load(spec, digits, tmp_path):
    fw = ck.FRAMEWORK
    model = fw.export(spec, spec.initial_state)
    x = fw.make_inputs(spec, digits[0], ["x"])
    outputs = fw.predict(model, x, batch_size=256)
    assert isinstance(outputs, list) and len(outputs) == 1
    assert isinstance(outputs[0], np.ndarray) and outputs[0].shape == (len(x), 10)
    assert fw.output_widths(model) == (10,)
    assert fw.user_model(model) is model

    versions = fw.save(model, spec, str(tmp_path))
    assert versions == {"keras": keras.__version__} and (tmp_path / "model.keras").exists()
    loaded = fw.load(spec, str(tmp_path))
    np.testing.assert_array_equal(fw.predict(loaded, x, batch_size=256)[0], outputs[0])
