"""Integration tests of the Keras adapter: real Keras training on real data (sklearn digits)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from cerebro.frameworks import keras as ck  # noqa: E402

# Reproducibility: one TF thread (must happen before TF runs any op in this process).
ck.limit_threads(1)

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from cerebro.errors import CerebroError  # noqa: E402

BATCH = 32


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int64")


@pytest.fixture(scope="module")
def chunks(digits):
    """Three "partitions" of the digits data (like three workers' training partitions)."""
    x, y = digits
    return [(x[idx], y[idx]) for idx in np.array_split(np.arange(len(x)), 3)]


def mlp(hidden=32, dropout=0.0, batchnorm=False):
    layers = [keras.layers.Dense(hidden, activation="relu")]
    if batchnorm:
        layers.append(keras.layers.BatchNormalization())
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(10, activation="softmax"))
    return keras.Sequential(layers)


def estimator(lr=1e-3, metrics=("accuracy",), batch_size=BATCH, **model_kwargs):
    return ck.KerasEstimator(
        mlp(**model_kwargs),
        keras.optimizers.Adam(lr),
        "sparse_categorical_crossentropy",
        list(metrics),
        batch_size=batch_size,
    )


def max_weight_diff(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a.get_weights(), b.get_weights()))


def optimizer_values(model):
    return [np.asarray(v.numpy()) for v in model.optimizer.variables]


# Module-level (importable) custom objects: they are pickled by reference into specs.
def first_column_mean(y_true, y_pred):
    """A metric that reduces a batch to a scalar (Keras alone would weight it per batch)."""
    return keras.ops.mean(y_pred[:, 0])


def mean_true_class_probability(y_true, y_pred):
    idx = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
    return keras.ops.take_along_axis(y_pred, idx[:, None], axis=1)[:, 0]


class Scale(keras.layers.Layer):
    """A custom layer with one trainable scalar."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, inputs):
        return inputs * self.scale


# --------------------------------------------------------------------------------------
# hop exactness
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_kwargs",
    [{}, {"dropout": 0.3, "batchnorm": True}],
    ids=["mlp", "mlp-dropout-batchnorm"],
)
def test_hop_between_workers_equals_continuous_training(chunks, model_kwargs):
    spec = estimator(**model_kwargs).make_spec([(64,)])

    # A: one model trained continuously over the three chunks (sequential SGD).
    a = ck.export_model(spec, spec.initial_state)
    for i, (x, y) in enumerate(chunks):
        ck.train_sub_epoch(a, x, y, batch_size=spec.batch_size, seed=100 + i)

    # B: the same model hopping between two "workers" (two caches, two compiled instances),
    # through bytes at every hop. Worker 1 trains an unrelated model of the same architecture
    # in between, so the cached instance holds someone else's state (and seed generators).
    workers = [ck.ModelCache(), ck.ModelCache()]
    other = estimator(lr=0.05, **model_kwargs).make_spec([(64,)])
    assert other.arch_key == spec.arch_key
    state = spec.initial_state
    for i, (x, y) in enumerate(chunks):
        cache = workers[i % 2]
        if i == 1:
            intruder = cache.load(other, "other", "0", other.initial_state)
            ck.train_sub_epoch(intruder, *chunks[2], batch_size=16, seed=7)
        model = cache.load(spec, "b", f"token{i}", state)
        ck.train_sub_epoch(model, x, y, batch_size=spec.batch_size, seed=100 + i)
        state = ck.state_to_bytes(model)
        cache.note_saved("b", f"token{i + 1}", model)
    assert workers[0].get(spec) is not workers[1].get(spec)

    b = ck.export_model(spec, state)
    assert max_weight_diff(a, b) <= 1e-6
    va, vb = optimizer_values(a), optimizer_values(b)
    assert len(va) == len(vb) == 2 + 2 * len(a.trainable_weights)  # iteration, lr, m and v
    steps = sum(int(np.ceil(len(x) / BATCH)) for x, _ in chunks)
    assert int(va[0]) == int(vb[0]) == steps
    for u, v in zip(va[1:], vb[1:]):
        np.testing.assert_allclose(u, v, rtol=0, atol=1e-6)
    # The moments are real (non-zero) state, not trivially equal.
    assert max(float(np.abs(v).max()) for v in va[2:]) > 1e-4


def test_same_seed_same_pass_different_seed_different_pass(chunks):
    spec = estimator(dropout=0.3).make_spec([(64,)])
    x, y = chunks[0]
    runs = []
    for seed in (1, 1, 2):
        model = ck.export_model(spec, spec.initial_state)
        ck.train_sub_epoch(model, x, y, batch_size=BATCH, seed=seed)
        runs.append(model)
    assert max_weight_diff(runs[0], runs[1]) == 0.0
    assert max_weight_diff(runs[0], runs[2]) > 1e-4


def test_learning_rate_is_carried_in_the_state(chunks):
    slow = estimator(lr=1e-3).make_spec([(64,)])
    fast = estimator(lr=5e-2, batch_size=64).make_spec([(64,)])
    assert slow.arch_key == fast.arch_key  # only lr and batch size differ
    x, y = chunks[0]

    cache = ck.ModelCache()
    model = cache.load(slow, "slow", "0", slow.initial_state)
    ck.train_sub_epoch(model, x, y, batch_size=slow.batch_size, seed=3)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1e-3)

    model2 = cache.load(fast, "fast", "0", fast.initial_state)
    assert model2 is model and cache.builds == 1  # no rebuild, no recompile
    assert float(model2.optimizer.learning_rate.numpy()) == pytest.approx(5e-2)
    assert int(model2.optimizer.iterations.numpy()) == 0
    ck.train_sub_epoch(model2, x, y, batch_size=fast.batch_size, seed=3)

    reference = ck.export_model(fast, fast.initial_state)  # a fresh model at lr 5e-2
    ck.train_sub_epoch(reference, x, y, batch_size=fast.batch_size, seed=3)
    assert max_weight_diff(model2, reference) <= 1e-6

    at_slow_lr = ck.export_model(fast, fast.initial_state)  # same start, the other lr
    at_slow_lr.optimizer.learning_rate.assign(1e-3)
    ck.train_sub_epoch(at_slow_lr, x, y, batch_size=fast.batch_size, seed=3)
    assert max_weight_diff(model2, at_slow_lr) > 1e-3


def test_adam_state_is_restored_not_reset(chunks):
    spec = estimator().make_spec([(64,)])
    first = ck.export_model(spec, spec.initial_state)
    ck.train_sub_epoch(first, *chunks[0], batch_size=BATCH, seed=0)
    state = ck.state_to_bytes(first)

    restored = ck.ModelCache().load(spec, "m", "1", state)
    ck.train_sub_epoch(restored, *chunks[1], batch_size=BATCH, seed=1)

    reset = ck.export_model(spec, state)
    for variable in reset.optimizer.variables[2:]:  # keep lr, zero iteration and moments
        variable.assign(np.zeros(variable.shape, dtype=variable.dtype))
    reset.optimizer.iterations.assign(0)
    ck.train_sub_epoch(reset, *chunks[1], batch_size=BATCH, seed=1)

    ck.train_sub_epoch(first, *chunks[1], batch_size=BATCH, seed=1)  # never left memory
    assert max_weight_diff(restored, first) <= 1e-6
    assert max_weight_diff(restored, reset) > 1e-3


# --------------------------------------------------------------------------------------
# checkpoint bytes: errors and cache behaviour
# --------------------------------------------------------------------------------------


def test_corrupted_bytes_raise_cerebro_error(chunks):
    spec = estimator().make_spec([(64,)])
    model = ck.export_model(spec, spec.initial_state)
    good = ck.state_to_bytes(model)
    before = model.get_weights()

    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    for bad in (b"", b"not a checkpoint", good[: len(good) // 2], bytes(flipped)):
        with pytest.raises(CerebroError, match="not a readable cerebro Keras state"):
            ck.state_from_bytes(model, bad)
    with pytest.raises(CerebroError, match="must be bytes"):
        ck.state_from_bytes(model, "a string")
    # Nothing was half-restored.
    assert all(np.array_equal(u, v) for u, v in zip(before, model.get_weights()))


def test_wrong_architecture_raises_cerebro_error():
    spec = estimator(hidden=32).make_spec([(64,)])
    model = ck.export_model(spec, spec.initial_state)
    before = model.get_weights()

    narrower = estimator(hidden=16).make_spec([(64,)])
    with pytest.raises(CerebroError, match=r"has shape \(64, 16\) in the checkpoint"):
        ck.state_from_bytes(model, narrower.initial_state)

    deeper = ck.KerasEstimator(
        keras.Sequential([keras.layers.Dense(32), keras.layers.Dense(32), keras.layers.Dense(10)]),
        "adam", "sparse_categorical_crossentropy",
    ).make_spec([(64,)])
    with pytest.raises(CerebroError, match="holds 6 model weights, the model has 4"):
        ck.state_from_bytes(model, deeper.initial_state)

    sgd = ck.KerasEstimator(mlp(), keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    with pytest.raises(CerebroError, match="optimizer variables"):
        ck.state_from_bytes(model, sgd.make_spec([(64,)]).initial_state)

    uncompiled = mlp()
    uncompiled.build((None, 64))
    with pytest.raises(CerebroError, match="not compiled"):
        ck.state_from_bytes(uncompiled, spec.initial_state)
    assert all(np.array_equal(u, v) for u, v in zip(before, model.get_weights()))


def test_model_cache_reuses_compiled_models_and_skips_reloads(chunks):
    specs = [estimator(lr=lr).make_spec([(64,)]) for lr in (1e-3, 1e-2)]
    other_arch = estimator(hidden=16).make_spec([(64,)])
    cache = ck.ModelCache(max_models=2)
    calls = []

    def lazy(spec):
        def read():
            calls.append(spec)
            return spec.initial_state
        return read

    m0 = cache.load(specs[0], "a", "0", lazy(specs[0]))
    assert cache.load(specs[0], "a", "0", lazy(specs[0])) is m0 and len(calls) == 1  # skipped
    ck.train_sub_epoch(m0, *chunks[0], batch_size=BATCH, seed=0)
    # Trained without note_saved: the cache notices the moved iteration count and reloads.
    cache.load(specs[0], "a", "0", lazy(specs[0]))
    assert len(calls) == 2 and int(m0.optimizer.iterations.numpy()) == 0
    ck.train_sub_epoch(m0, *chunks[0], batch_size=BATCH, seed=0)
    cache.note_saved("a", "1", m0)
    assert cache.loaded(specs[0]) == ("a", "1")
    assert cache.load(specs[0], "a", "1", lazy(specs[0])) is m0 and len(calls) == 2
    # Another model of the same architecture replaces the state in the same instance.
    assert cache.load(specs[1], "b", "0", lazy(specs[1])) is m0 and len(calls) == 3
    assert cache.builds == 1 and cache.skipped_loads == 2
    cache.invalidate(m0)
    assert cache.loaded(specs[1]) is None

    cache.get(other_arch)
    assert len(cache) == 2 and cache.builds == 2
    third = ck.KerasEstimator(mlp(hidden=8), "adam", "sparse_categorical_crossentropy")
    cache.get(third.make_spec([(64,)]))  # evicts the least recently used (specs' arch)
    assert specs[0].arch_key not in cache and other_arch.arch_key in cache
    with pytest.raises(ValueError, match="max_models"):
        ck.ModelCache(max_models=0)


def test_optimizer_built_on_demand_and_state_complete(chunks):
    model = mlp()
    model.build((None, 64))
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    assert not model.optimizer.built
    data = ck.state_to_bytes(model)  # builds the optimizer: the bytes hold the slots too
    assert model.optimizer.built
    fresh = mlp()
    fresh.build((None, 64))
    fresh.compile(keras.optimizers.Adam(0.5), "sparse_categorical_crossentropy")
    ck.state_from_bytes(fresh, data)
    assert float(fresh.optimizer.learning_rate.numpy()) == pytest.approx(0.01)
    ck.train_sub_epoch(fresh, *chunks[0], batch_size=BATCH, seed=0)
    ck.train_sub_epoch(model, *chunks[0], batch_size=BATCH, seed=0)
    assert max_weight_diff(model, fresh) <= 1e-6


# --------------------------------------------------------------------------------------
# inputs and targets
# --------------------------------------------------------------------------------------


def test_make_inputs_concatenates_in_column_order():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    a = np.arange(5, dtype="int64")
    b = np.arange(15, dtype="float64").reshape(5, 3) + 100
    x = ck.make_inputs(model, {"a": a, "b": b, "unused": a}, ["b", "a"])
    assert x.shape == (5, 4) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, :3], b.astype("float32"))
    np.testing.assert_array_equal(x[:, 3], a.astype("float32"))
    # A pandas-style object column of arrays is stacked.
    obj = np.empty(5, dtype=object)
    for i in range(5):
        obj[i] = b[i]
    np.testing.assert_array_equal(ck.make_inputs(model, {"a": a, "b": obj}, ["a", "b"])[:, 1:], b)


def test_make_inputs_reshapes_to_image_input(digits):
    x, y = digits
    conv = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    spec = ck.KerasEstimator(conv, "adam", "sparse_categorical_crossentropy").make_spec([(64,)])
    assert spec.input_shapes == ((8, 8, 1),)
    images = ck.make_inputs(spec, {"pixels": x}, ["pixels"])
    assert images.shape == (len(x), 8, 8, 1)
    np.testing.assert_array_equal(images, x.reshape(-1, 8, 8, 1))
    model = ck.ModelCache().load(spec, "conv", "0", spec.initial_state)
    result = ck.train_sub_epoch(model, images[:200], y[:200], batch_size=32, seed=0)
    assert result["rows"] == 200 and np.isfinite(result["loss"])

    with pytest.raises(CerebroError) as info:
        ck.make_inputs(spec, {"a": x[:, :60], "b": x[:, :3]}, ["a", "b"])
    message = str(info.value)
    assert "(8, 8, 1)" in message and "64 values" in message
    assert "'a' (width 60)" in message and "'b' (width 3)" in message and "give 63" in message
    with pytest.raises(CerebroError, match="data gives"):
        ck.KerasEstimator(conv, "adam", "mse").make_spec([(63,)])


def test_make_inputs_multi_input_model(digits):
    x, y = digits
    pixels_in, extra_in = keras.Input((8, 8), name="pixels"), keras.Input((2,), name="extra")
    h = keras.layers.Concatenate()([keras.layers.Flatten()(pixels_in), extra_in])
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.Dense(16, activation="relu")(h))
    model = keras.Model([pixels_in, extra_in], out)
    spec = ck.KerasEstimator(model, "adam", "sparse_categorical_crossentropy", ["accuracy"]).make_spec(
        [(64,), (2,)]
    )
    assert spec.num_inputs == 2 and spec.input_shapes == ((8, 8), (2,))
    extra = np.stack([x.mean(axis=1), x.std(axis=1)], axis=1)
    inputs = ck.make_inputs(spec, {"p": x, "e": extra}, ["p", "e"])
    assert [a.shape for a in inputs] == [(len(x), 8, 8), (len(x), 2)]
    np.testing.assert_array_equal(inputs[0], x.reshape(-1, 8, 8))
    np.testing.assert_array_equal(inputs[1], extra)

    trained = ck.ModelCache().load(spec, "mi", "0", spec.initial_state)
    result = ck.train_sub_epoch(trained, inputs, y, batch_size=32, seed=0)
    assert set(result) == {"loss", "accuracy", "rows"} and result["rows"] == len(x)

    with pytest.raises(CerebroError, match=r"2 inputs .* one feature column per input.*got 1"):
        ck.make_inputs(spec, {"p": x}, ["p"])
    with pytest.raises(CerebroError, match=r"input of shape \(2,\) needs 2 values.*'e' \(width 3\)"):
        ck.make_inputs(spec, {"p": x, "e": x[:, :3]}, ["p", "e"])
    with pytest.raises(CerebroError, match=r"column 'q' is missing; available columns: \['e', 'p'\]"):
        ck.make_inputs(spec, {"p": x, "e": extra}, ["p", "q"])
    with pytest.raises(CerebroError, match="has 2 inputs"):
        ck.KerasEstimator(model, "adam", "mse").make_spec([(66,)])


def test_make_targets(digits):
    _, y = digits
    single = estimator().make_spec([(64,)])
    np.testing.assert_array_equal(ck.make_targets(single, {"label": y}, ["label"]), y)
    np.testing.assert_array_equal(ck.make_targets(single, {"label": y}, "label"), y)
    with pytest.raises(CerebroError, match=r"1 output\(s\) .* got 2 label columns"):
        ck.make_targets(single, {"label": y, "other": y}, ["label", "other"])

    inp = keras.Input((64,))
    model = keras.Model(inp, [keras.layers.Dense(10, name="cls")(inp), keras.layers.Dense(1, name="reg")(inp)])
    targets = ck.make_targets(model, {"a": y, "b": y.astype("float64")}, ["a", "b"])
    assert isinstance(targets, list) and targets[1].dtype == np.float32
    with pytest.raises(CerebroError, match=r"2 output\(s\)"):
        ck.make_targets(model, {"a": y}, ["a"])


# --------------------------------------------------------------------------------------
# metric names and row weighting
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metrics",
    [
        ["accuracy"],
        [keras.metrics.SparseCategoricalAccuracy(name="sca")],
        [mean_true_class_probability],
        ["acc", "sparse_top_k_categorical_accuracy", "accuracy", "accuracy"],
        [],
    ],
    ids=["string", "metric-object", "function", "aliases-and-duplicates", "none"],
)
def test_metric_names_match_real_fit_history(chunks, metrics):
    est = ck.KerasEstimator(mlp(), "adam", "sparse_categorical_crossentropy", metrics)
    names = est.metric_names()
    x, y = chunks[0]

    # What plain Keras reports for the same compile ...
    native = mlp()
    native.compile("adam", "sparse_categorical_crossentropy", metrics=metrics)
    history = native.fit(x, y, batch_size=BATCH, epochs=1, verbose=0).history
    assert sorted(names) == sorted(history)
    assert names[0] == "loss"
    # ... and what cerebro's train_sub_epoch / evaluate report.
    spec = est.make_spec([(64,)])
    assert list(spec.metric_names) == names
    model = ck.ModelCache().load(spec, "m", "0", spec.initial_state)
    assert sorted(ck.train_sub_epoch(model, x, y, batch_size=BATCH, seed=0)) == sorted(names + ["rows"])
    assert sorted(ck.evaluate(model, x, y, batch_size=BATCH)) == sorted(names + ["rows"])


def test_metric_names_multi_output(chunks):
    inp = keras.Input((64,))
    hidden = keras.layers.Dense(16, activation="relu")(inp)
    model = keras.Model(
        inp, [keras.layers.Dense(10, activation="softmax", name="digit")(hidden),
              keras.layers.Dense(1, name="even")(hidden)]
    )
    est = ck.KerasEstimator(
        model, "adam", ["sparse_categorical_crossentropy", "mse"], [["accuracy"], ["mae"]]
    )
    x, y = chunks[0]
    targets = [y, (y % 2).astype("float32")]
    spec = est.make_spec([(64,)])
    assert spec.output_names == ("digit", "even")
    trained = ck.ModelCache().load(spec, "mo", "0", spec.initial_state)
    history = ck.train_sub_epoch(trained, x, targets, batch_size=BATCH, seed=0)
    assert sorted(est.metric_names()) == sorted(set(history) - {"rows"})
    assert set(est.metric_names()) == {"loss", "digit_loss", "even_loss", "digit_accuracy", "even_mae"}


def test_reported_metrics_are_row_weighted_with_partial_last_batch(chunks):
    x, y = chunks[0][0][:100], chunks[0][1][:100]  # 100 rows, batch 32: last batch has 4
    est = ck.KerasEstimator(
        mlp(), keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy",
        ["accuracy", first_column_mean], batch_size=BATCH,
    )
    spec = est.make_spec([(64,)])
    model = ck.export_model(spec, spec.initial_state)
    trained = ck.train_sub_epoch(model, x, y, batch_size=BATCH, seed=5)  # lr 0: weights fixed
    evaluated = ck.evaluate(model, x, y, batch_size=BATCH)
    probabilities = model.predict(x, verbose=0)
    expected = {
        "loss": float(-np.log(probabilities[np.arange(100), y]).mean()),
        "accuracy": float((probabilities.argmax(axis=1) == y).mean()),
        "first_column_mean": float(probabilities[:, 0].mean()),
    }
    for result in (trained, evaluated):
        assert result["rows"] == 100
        for name, value in expected.items():
            assert result[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    # Plain Keras weights a scalar-valued metric function per batch: cerebro must not.
    native = mlp()
    native.build((None, 64))
    native.set_weights(model.get_weights())
    native.compile("sgd", "sparse_categorical_crossentropy", metrics=[first_column_mean])
    batch_weighted = native.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    assert abs(batch_weighted["first_column_mean"] - expected["first_column_mean"]) > 1e-5


# --------------------------------------------------------------------------------------
# estimator arguments, pickling, export
# --------------------------------------------------------------------------------------


def test_estimator_argument_validation_names_the_argument():
    def make(**overrides):
        kwargs = dict(model=mlp(), optimizer="adam", loss="sparse_categorical_crossentropy")
        kwargs.update(overrides)
        return ck.KerasEstimator(**kwargs)

    with pytest.raises(ValueError) as info:
        make(batch_size=0)
    assert str(info.value) == (
        "The 'batch_size' parameter of KerasEstimator must be an int >= 1. Got 0 instead."
    )
    cases = [
        (dict(model="mlp"), TypeError, "'model'"),
        (dict(model=keras.layers.Dense(3)), TypeError, "'model'"),
        (dict(optimizer=3), TypeError, "'optimizer'"),
        (dict(optimizer="no-such-optimizer"), ValueError, "'optimizer'"),
        (dict(loss=None), TypeError, "'loss'"),
        (dict(loss="no_such_loss"), ValueError, "'loss'"),
        (dict(loss=42), TypeError, "'loss'"),
        (dict(metrics="accuracy"), TypeError, "'metrics'"),
        (dict(metrics=["no_such_metric"]), ValueError, "'metrics'"),
        (dict(metrics=[3.5]), TypeError, "'metrics'"),
        (dict(batch_size=2.5), ValueError, "'batch_size'"),
        (dict(batch_size=True), ValueError, "'batch_size'"),
        (dict(custom_objects=["Scale"]), TypeError, "'custom_objects'"),
    ]
    for overrides, exc_type, name in cases:
        with pytest.raises(exc_type, match=f"The {name} parameter of KerasEstimator"):
            make(**overrides)
    make(metrics=("accuracy", keras.metrics.AUC(), mean_true_class_probability), batch_size=1)


def test_estimator_and_spec_pickle_roundtrip(chunks):
    est = ck.KerasEstimator(
        keras.Sequential([keras.Input((64,)), Scale(), keras.layers.Dense(10, activation="softmax")]),
        keras.optimizers.Adam(0.003),
        keras.losses.SparseCategoricalCrossentropy(),
        (keras.metrics.SparseCategoricalAccuracy(name="sca"), mean_true_class_probability),
        batch_size=16,
        custom_objects={"Scale": Scale},
    )
    copy = pickle.loads(pickle.dumps(est))
    assert isinstance(copy, ck.KerasEstimator) and copy.batch_size == 16
    assert isinstance(copy.metrics, tuple) and copy.metric_names() == est.metric_names()
    assert copy.custom_objects == {"Scale": Scale}
    assert float(copy.optimizer.learning_rate) == pytest.approx(0.003)
    assert max_weight_diff(est.model, copy.model) == 0.0

    spec, spec_copy = est.make_spec([(64,)]), copy.make_spec([(64,)])
    assert spec.arch_key == spec_copy.arch_key
    assert pickle.loads(pickle.dumps(spec)) == spec

    # A spawned worker only gets bytes: rebuild from the unpickled spec, train, export.
    worker_spec = pickle.loads(pickle.dumps(spec))
    model = ck.ModelCache().load(worker_spec, "m", "0", worker_spec.initial_state)
    assert any(isinstance(layer, Scale) for layer in model.layers)
    result = ck.train_sub_epoch(model, *chunks[0], batch_size=worker_spec.batch_size, seed=0)
    assert set(result) == {"loss", "sca", "mean_true_class_probability", "rows"}

    exported = ck.export_model(spec, ck.state_to_bytes(model))
    assert exported is not model
    x = chunks[1][0]
    np.testing.assert_array_equal(exported.predict(x, verbose=0), model.predict(x, verbose=0))


def test_local_functions_ship_by_value_and_unpicklable_ones_are_refused_at_make_spec(chunks):
    import threading

    scale = 2.0

    def local_metric(y_true, y_pred):  # a closure over a local: cloudpickle ships it by value
        return keras.ops.mean(y_pred, axis=-1) * scale

    est = ck.KerasEstimator(mlp(), "adam", "sparse_categorical_crossentropy", [local_metric])
    spec = pickle.loads(pickle.dumps(est.make_spec([(64,)])))
    model = ck.ModelCache().load(spec, "m", "0", spec.initial_state)
    result = ck.train_sub_epoch(model, *chunks[0], batch_size=spec.batch_size, seed=0)
    assert result["local_metric"] == pytest.approx(0.2, rel=1e-3)  # softmax rows: mean 0.1, times 2

    lock = threading.Lock()

    def locked_metric(y_true, y_pred):
        with lock:
            return keras.ops.mean(y_pred, axis=-1)

    est = ck.KerasEstimator(mlp(), "adam", "sparse_categorical_crossentropy", [locked_metric])
    with pytest.raises(CerebroError, match="cannot be sent to worker processes"):
        est.make_spec([(64,)])


def test_arch_key_distinguishes_what_needs_a_distinct_compiled_model():
    base = estimator().make_spec([(64,)])
    assert estimator(lr=0.1, batch_size=7).make_spec([(64,)]).arch_key == base.arch_key
    different = [
        estimator(hidden=16),
        estimator(metrics=["accuracy", "sparse_top_k_categorical_accuracy"]),
        ck.KerasEstimator(mlp(), keras.optimizers.Adam(1e-3, beta_1=0.8),
                          "sparse_categorical_crossentropy", ["accuracy"]),
        ck.KerasEstimator(mlp(), keras.optimizers.SGD(1e-3), "sparse_categorical_crossentropy",
                          ["accuracy"]),
        ck.KerasEstimator(mlp(), keras.optimizers.Adam(1e-3), "categorical_crossentropy",
                          ["accuracy"]),
    ]
    keys = {base.arch_key} | {e.make_spec([(64,)]).arch_key for e in different}
    assert len(keys) == 1 + len(different)
    assert estimator().make_spec([(32,)]).arch_key != base.arch_key


def test_limit_threads_is_safe_to_call_again():
    import tensorflow as tf

    ck.limit_threads(None)
    ck.limit_threads(1)
    ck.limit_threads(1)
    assert tf.config.threading.get_intra_op_parallelism_threads() == 1
    with pytest.raises(ValueError, match="num_threads"):
        ck.limit_threads(0)


# --------------------------------------------------------------------------------------
# timings (information, not assertions)
# --------------------------------------------------------------------------------------
