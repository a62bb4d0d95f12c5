"""A Keras model with two inputs and two outputs, end to end: one feature column per input, one
label column per output, ``loss_weights``, Keras 3's per-output metric names in ``history`` and
``evaluation_metric``, ``transform`` on pandas and on Spark, save + ``load_model``, ``predict``,
and sequential replay.  The digits' upper and lower halves are the two inputs; the digit and
its parity the two outputs.  The search tunes an int ``hp_quniform`` batch size."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from cerebro import CerebroError, LocalBackend, LocalStore, RandomSearch, hp_choice, hp_quniform, load_model
from cerebro.backends.inline import InlineBackend
from cerebro.experiment.journal import read_journal
from cerebro.frameworks.base import get_framework

LOSS_WEIGHTS = [1.0, 0.5]
METRICS = ["loss", "digit_loss", "parity_loss", "digit_accuracy", "parity_accuracy"]
FEATURES, LABELS = ["upper", "lower"], ["label", "even"]


def build_model():
    import keras

    upper, lower = keras.Input((32,), name="upper"), keras.Input((32,), name="lower")
    hidden = keras.layers.Dense(32, activation="relu")(keras.layers.Concatenate()([upper, lower]))
    digit = keras.layers.Dense(10, activation="softmax", name="digit")(hidden)
    parity = keras.layers.Dense(1, activation="sigmoid", name="parity")(hidden)
    return keras.Model([upper, lower], [digit, parity])


COMPILE = {"loss": ["sparse_categorical_crossentropy", "binary_crossentropy"],
           "metrics": {"digit": ["accuracy"], "parity": ["accuracy"]}, "loss_weights": LOSS_WEIGHTS}


def gen(params):
    import keras

    from cerebro import KerasEstimator

    return KerasEstimator(build_model(), keras.optimizers.Adam(params.get("lr", 1e-2)), COMPILE["loss"],
                          COMPILE["metrics"], batch_size=params.get("batch_size", 32), loss_weights=LOSS_WEIGHTS)


@pytest.fixture(scope="module")
def frame():
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    return pd.DataFrame({"upper": list(x[:, :32]), "lower": list(x[:, 32:]), "ink": x.mean(axis=1), "label": digits.target,
                         "even": (digits.target % 2 == 0).astype("float32")})


def arrays(df):
    return [np.stack(df[c].to_numpy()) for c in FEATURES], [df["label"].to_numpy(), df["even"].to_numpy()]


# ------------------------------------------------------------------ the adapter, in this process


def test_metric_names_are_keras_own_and_every_metric_is_row_weighted(frame):
    fw = get_framework("keras")
    estimator = gen({})
    assert fw.num_inputs(estimator) == 2
    assert estimator.metric_names() == METRICS
    spec = fw.make_spec(estimator, [(32,), (32,)])
    assert spec.metric_names == tuple(METRICS) and spec.output_names == ("digit", "parity")
    (x, y) = arrays(frame)
    model = fw.export(spec, spec.initial_state)
    trained = fw.train_sub_epoch(model, [a[:600] for a in x], [t[:600] for t in y], batch_size=32, seed=3)
    native = build_model()
    native.compile("adam", **COMPILE)
    assert sorted(native.fit([a[:100] for a in x], [t[:100] for t in y], verbose=0).history) == sorted(METRICS)
    assert sorted(trained) == sorted(METRICS + ["rows"])

    # Row-weighted: the metrics of 397 rows are the row-weighted means of those of 123 and 274 rows.
    whole = fw.evaluate(model, [a[1400:] for a in x], [t[1400:] for t in y], batch_size=32)
    a = fw.evaluate(model, [v[1400:1523] for v in x], [t[1400:1523] for t in y], batch_size=32)
    b = fw.evaluate(model, [v[1523:] for v in x], [t[1523:] for t in y], batch_size=32)
    assert (whole["rows"], a["rows"], b["rows"]) == (397, 123, 274)
    for name in METRICS:
        assert whole[name] == pytest.approx((a[name] * 123 + b[name] * 274) / 397, abs=1e-5), name
    # The total loss weighs the outputs' losses by loss_weights.
    assert whole["loss"] == pytest.approx(whole["digit_loss"] + 0.5 * whole["parity_loss"], rel=1e-5)


def test_loss_weights_are_checked_against_the_outputs():
    from cerebro import KerasEstimator

    with pytest.raises(ValueError, match=r"one weight per model output \(2: \['digit', 'parity'\]\).*Got 3"):
        KerasEstimator(build_model(), "adam", COMPILE["loss"], loss_weights=[1, 2, 3])
    with pytest.raises(ValueError, match=r"every model output.*unknown outputs \['digits'\].*misses \['digit'\]"):
        KerasEstimator(build_model(), "adam", COMPILE["loss"], loss_weights={"digits": 1.0, "parity": 1.0})
    with pytest.raises(ValueError, match="'loss_weights'.*finite and >= 0"):
        KerasEstimator(build_model(), "adam", COMPILE["loss"], loss_weights=[1.0, float("nan")])
    with pytest.raises(TypeError, match="'loss_weights'"):
        KerasEstimator(build_model(), "adam", COMPILE["loss"], loss_weights=0.5)
    by_name = KerasEstimator(build_model(), "adam", COMPILE["loss"], loss_weights={"parity": 2, "digit": 1})
    listed = KerasEstimator(build_model(), "adam", COMPILE["loss"], loss_weights=[1.0, 1.0])
    fw = get_framework("keras")
    assert fw.make_spec(by_name, [(32,), (32,)]).arch_key != fw.make_spec(listed, [(32,), (32,)]).arch_key
    assert pickle.loads(pickle.dumps(by_name)).loss_weights == {"parity": 2.0, "digit": 1.0}


# ------------------------------------------------------------------ refused before any training


def never_started(setup, worker):  # InlineBackend's runtime factory: no worker may start
    raise AssertionError("a worker was started although the columns do not fit the model")


@pytest.mark.parametrize("kw,expected", [
    ({"feature_columns": ["upper"]}, r"2 inputs and takes one feature column per input.*lists 1: \['upper'\]"),
    ({"feature_columns": ["upper", "lower", "ink"]}, r"2 inputs.*lists 3: \['upper', 'lower', 'ink'\]"),
    ({"label_columns": ["label"]}, r"2 output\(s\) and needs one label column per output.*\['label'\]"),
    ({"evaluation_metric": "accuracy"}, r"'accuracy' is not computed.*'digit_accuracy', 'parity_accuracy'"),
])
def test_columns_or_a_metric_that_do_not_fit_the_model_are_refused_before_training(tmp_path, frame, kw, expected):
    store = LocalStore(str(tmp_path / "store"))
    kw = {"feature_columns": FEATURES, "label_columns": LABELS, "evaluation_metric": "digit_accuracy", **kw}
    search = RandomSearch(InlineBackend(2, runtime_factory=never_started), store, gen, {"lr": hp_choice([1e-2])},
                          1, 1, verbose=0, experiment_name="bad", **kw)
    with pytest.raises(ValueError, match=expected):
        search.fit(frame.head(200))
    assert not store.exists("experiments/bad")


# ------------------------------------------------------------------ a real run with worker processes


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, frame):
    root = tmp_path_factory.mktemp("multi_io")
    store = LocalStore(str(root / "store"))
    space = {"lr": hp_choice([1e-2]), "batch_size": hp_quniform(32, 64, 32)}
    with LocalBackend(2) as backend:
        result = RandomSearch(backend, store, gen, space, 1, 2, feature_columns=FEATURES, label_columns=LABELS,
                              evaluation_metric="val_digit_accuracy", experiment_name="mio", verbose=0).fit(frame)
    return result, store, root


@pytest.mark.slow
def test_two_inputs_and_two_outputs_train_with_per_output_metrics(fitted):
    result, _, _ = fitted
    assert not result.failures, result.failures
    history = result.history
    assert [c for c in history.columns if c.startswith(("train_", "val_"))] == sorted(
        f"{split}_{name}" for split in ("train", "val") for name in METRICS)
    assert result.mode == "max" and result.evaluation_metric == "val_digit_accuracy"
    last = history.iloc[-1]
    assert result.best_score == last["val_digit_accuracy"] >= 0.8
    assert last["val_parity_accuracy"] >= 0.75
    for split in ("train", "val"):
        np.testing.assert_allclose(history[f"{split}_loss"],
                                   history[f"{split}_digit_loss"] + 0.5 * history[f"{split}_parity_loss"], rtol=1e-5)


@pytest.mark.slow
def test_an_int_quniform_batch_size_trains_and_keeps_its_type(fitted):
    result, store, _ = fitted
    batch_size = result.best_params["batch_size"]
    assert type(batch_size) is int and batch_size in (32, 64)
    assert result.best_model.spec().batch_size == batch_size
    assert result.history["param_batch_size"].tolist() == [batch_size, batch_size]
    assert result.history["param_batch_size"].dtype.kind == "i"
    records = read_journal(store, "mio")   # the JSON the store holds, what resume=True reads
    added = [r["params"] for r in records if r["type"] == "model_added"]
    suggested = [p for r in records if r["type"] == "suggested" for p in r["configs"]]
    assert [type(p["batch_size"]) for p in added + suggested] == [int, int]


@pytest.mark.slow
def test_replaying_the_visits_gives_the_trained_weights(fitted):
    from cerebro.replay import replay_model

    best = fitted[0].best_model
    replayed = replay_model(best).get_weights()
    trained = best.keras().get_weights()
    assert len(replayed) == len(trained)
    for a, b in zip(replayed, trained):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_transform_predict_and_a_saved_model_give_one_column_per_label(fitted, frame):
    import keras

    result, _, root = fitted
    rows = frame.iloc[:300]
    out = result.transform(rows)
    assert list(out.columns) == [*frame.columns, "label__output", "even__output"]
    digit, parity = result.best_model.predict(rows)
    assert digit.shape == (300, 10) and parity.shape == (300, 1)
    np.testing.assert_array_equal(np.stack(out["label__output"].to_numpy()), digit)
    np.testing.assert_array_equal(out["even__output"].to_numpy(), parity[:, 0])
    assert (digit.argmax(axis=1) == rows["label"]).mean() >= 0.8

    path = result.best_model.save(root / "saved")
    loaded = load_model(path)
    assert (loaded.feature_columns, loaded.label_columns) == (tuple(FEATURES), tuple(LABELS))
    for a, b in zip(loaded.predict(rows), (digit, parity)):
        np.testing.assert_array_equal(a, b)
    x, y = arrays(rows)
    plain = keras.models.load_model(os.path.join(path, "model.keras"))
    np.testing.assert_allclose(plain.predict(x, verbose=0)[0], digit, rtol=1e-6, atol=1e-7)
    assert sorted(plain.evaluate(x, y, verbose=0, return_dict=True)) == sorted(METRICS)
    with pytest.raises(CerebroError, match=r"feature column 'lower' is missing; available columns: \['upper'\]"):
        result.best_model.predict({"upper": x[0]})


@pytest.mark.slow
def test_spark_transform_of_a_two_input_two_output_model_equals_pandas(fitted, frame, spark):
    result = fitted[0]
    rows = frame.iloc[:200]
    sdf = spark.createDataFrame(
        [(u.tolist(), v.tolist(), int(k), float(e)) for u, v, k, e in rows[["upper", "lower", "label", "even"]].itertuples(index=False)],
        "upper array<float>, lower array<float>, label long, even double")
    out = result.transform(sdf).toPandas()
    expected = result.transform(rows)
    assert list(out.columns) == ["upper", "lower", "label", "even", "label__output", "even__output"]
    np.testing.assert_allclose(np.stack(out["label__output"].to_numpy()), np.stack(expected["label__output"].to_numpy()),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["even__output"].to_numpy(), expected["even__output"].to_numpy(), rtol=1e-5, atol=1e-6)
