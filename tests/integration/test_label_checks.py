"""Labels that do not fit the model are refused in the driver, before any training (issue 16, item 7).

Class indices out of range of the output (labels 10-19 or -1 for 10 classes, 10 classes for 5
outputs), one-hot losses against a column of class indices, binary cross entropy on labels
outside [0, 1]: for the first configuration the whole fit is refused with a ValueError naming
the column, the range found, the output width and the loss, and nothing is left in the store;
for a later configuration that configuration fails at creation and the others train.  The label
range is the whole data set's (the prepared data's manifest), not only the driver's sample rows.
Fractional class indices warn.  ``deterministic_error`` tells which failures of real Keras and
torch training a retry cannot fix.
"""

from __future__ import annotations

import os
import traceback
import warnings

import numpy as np
import pandas as pd
import pytest

import cerebro
from cerebro import GridSearch, LocalBackend, LocalStore, hp_choice
from cerebro.backends.inline import InlineBackend
from cerebro.errors import CerebroError, StoreFullError
from cerebro.frameworks.arrays import LabelMismatch
from cerebro.frameworks.base import DataSample, deterministic_error, error_cause, get_framework

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

torch.set_num_threads(1)

ROWS = 240


class NeverStarted(LocalBackend):
    """A LocalBackend that fails the test if any worker would start."""

    def start(self, setup):  # pragma: no cover - reaching it is the failure (or the point, see below)
        raise AssertionError("a worker was started")


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x[:ROWS] / 16.0).astype("float32"), y[:ROWS].astype("int64")


def frame(digits, labels=None):
    x, y = digits
    return pd.DataFrame({"features": list(x), "label": y if labels is None else labels})


def keras_gen(units=10, loss="sparse_categorical_crossentropy", activation="softmax"):
    def gen(params):
        import keras

        model = keras.Sequential([keras.Input((64,)),
                                  keras.layers.Dense(params.get("units", units), activation=activation)])
        return cerebro.KerasEstimator(model, keras.optimizers.SGD(0.1), loss, metrics=["accuracy"])

    return gen


def torch_gen(units=10, loss="cross_entropy"):
    def gen(params):
        model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, params.get("units", units)))
        return cerebro.TorchEstimator(model, torch.optim.SGD(model.parameters(), lr=0.1), loss)

    return gen


GENS = {"keras": keras_gen, "torch": torch_gen}


def fit(store, df, gen, backend=None, space=None, **kw):
    backend = backend if backend is not None else NeverStarted(2)
    return GridSearch(backend, store, gen, space or {"units": hp_choice([None])}, 1, verbose=0,
                      experiment_name="labels", feature_columns=["features"], **kw).fit(df)


def no_units(gen):
    """A grid dimension the generator ignores (the configuration is the generator's default)."""
    return lambda params: gen({k: v for k, v in params.items() if v is not None})


def assert_nothing_written(store):
    root = store.local_path("")
    written = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs] if os.path.exists(root) else []
    assert written == [], written


@pytest.fixture
def store(tmp_path):
    return LocalStore(str(tmp_path / "store"))


# ------------------------------------------------------------------ refused before any training


@pytest.mark.parametrize("framework", ["keras", "torch"])
@pytest.mark.parametrize("case", ["shifted", "minus_one", "five_outputs"])
def test_class_indices_out_of_range_are_refused_before_training(store, digits, framework, case):
    _, y = digits
    loss = {"keras": "'sparse_categorical_crossentropy'", "torch": "'cross_entropy'"}[framework]
    if case == "shifted":
        labels, units, found, width = y + 10, 10, "from 10 to 19", 10
    elif case == "minus_one":
        labels, units, found, width = np.where(np.arange(ROWS) % 50 == 7, -1, y), 10, "from -1 to 9", 10
    else:
        labels, units, found, width = y, 5, "from 0 to 9", 5
    with pytest.raises(ValueError, match=rf"(?s)label column 'label' with loss {loss}: the loss takes class indices "
                                         rf"in \[0, {width}\) \(the output scores {width} classes\), but the labels "
                                         rf"range {found} over the whole data set"):
        fit(store, frame(digits, labels), no_units(GENS[framework](units)))
    assert_nothing_written(store)


@pytest.mark.parametrize("loss", ["categorical_crossentropy", "CategoricalCrossentropy", "crossentropy_onehot"])
def test_a_one_hot_loss_against_integer_labels_is_refused(store, digits, loss):
    import keras

    real = {"categorical_crossentropy": "categorical_crossentropy",
            "CategoricalCrossentropy": keras.losses.CategoricalCrossentropy(),
            "crossentropy_onehot": keras.losses.categorical_crossentropy}[loss]
    named = {"categorical_crossentropy": "'categorical_crossentropy'", "CategoricalCrossentropy": "CategoricalCrossentropy",
             "crossentropy_onehot": "'categorical_crossentropy'"}[loss]
    with pytest.raises(ValueError, match=rf"(?s)label column 'label' with loss {named}: the loss expects one-hot "
                                         r"\(or probability\) labels of width 10 per row, but the column holds one value "
                                         r"per row \(integers from 0 to 9 over the whole data set\)\. One-hot encode the "
                                         r"labels, or use a sparse categorical cross entropy "
                                         r"\(sparse_categorical_crossentropy\)"):
        fit(store, frame(digits), no_units(keras_gen(loss=real)))
    assert_nothing_written(store)


@pytest.mark.parametrize("framework,loss", [("keras", "binary_crossentropy"), ("torch", "bce_with_logits"),
                                            ("torch", "bce")])
def test_binary_cross_entropy_on_labels_outside_0_1_is_refused(store, digits, framework, loss):
    if framework == "keras":
        gen = keras_gen(1, loss, activation="sigmoid")
    else:
        def gen(params):
            model = nn.Sequential(nn.Linear(64, 1), nn.Sigmoid()) if loss == "bce" else nn.Linear(64, 1)
            return cerebro.TorchEstimator(model, torch.optim.SGD(model.parameters(), lr=0.1), loss)
    with pytest.raises(ValueError, match=rf"label column 'label' with loss '{loss}': the loss expects labels in "
                                         r"\[0, 1\].*range from 0 to 9 over the whole data set"):
        fit(store, frame(digits), no_units(gen))
    assert_nothing_written(store)


@pytest.mark.parametrize("framework", ["keras", "torch"])
def test_the_range_is_the_whole_data_sets_not_the_sample_rows(store, digits, framework):
    """Labels 10..19 only in rows that are not among the 8 sample rows the driver reads."""
    from cerebro.data import load_partition, prepare_data

    _, y = digits
    labels = y.copy()
    bad = [3, 100, 201]
    labels[bad] = [19, 12, 10]
    df = frame(digits, labels)
    prepared = prepare_data(df, store, feature_columns=["features"], label_columns=["label"], validation=0.25,
                            num_partitions=2, seed=0)
    if not getattr(prepared, "label_stats", None):
        pytest.xfail("needs PreparedData.label_stats")
    sample = load_partition(store, prepared, "train", 0, max_rows=8)
    assert sample.labels["label"].max() < 10  # the driver's sample alone would not show them
    with pytest.raises(ValueError, match=r"labels range from 0 to 19 over the whole data set"):
        fit(store, df, no_units(GENS[framework]()), seed=0)


@pytest.mark.parametrize("framework", ["keras", "torch"])
def test_fractional_class_indices_warn_naming_the_column(store, digits, framework):
    _, y = digits
    with pytest.warns(UserWarning, match=r"Label column 'label' holds fractional values \(from 0.5 to 9.5 over the "
                                         r"whole data set\), but loss '(sparse_categorical_crossentropy|cross_entropy)' "
                                         r"takes class indices: they are truncated to integers"):
        with pytest.raises(AssertionError, match="a worker was started"):  # the checks passed: training would start
            fit(store, frame(digits, y + 0.5), no_units(GENS[framework]()))


@pytest.mark.parametrize("framework", ["keras", "torch"])
def test_labels_that_fit_pass_silently(store, digits, framework):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*[Ll]abel.*")
        with pytest.raises(AssertionError, match="a worker was started"):
            fit(store, frame(digits), no_units(GENS[framework]()))


def test_ignored_class_values_are_allowed(store, digits):
    import keras

    _, y = digits
    labels = np.where(np.arange(ROWS) % 9 == 0, -1, y)
    loss = keras.losses.SparseCategoricalCrossentropy(ignore_class=-1)
    with pytest.raises(AssertionError, match="a worker was started"):
        fit(store, frame(digits, labels), no_units(keras_gen(loss=loss)))
    labels = np.where(np.arange(ROWS) % 9 == 0, -100, y)  # torch's default ignore_index
    with pytest.raises(AssertionError, match="a worker was started"):
        fit(LocalStore(store.local_path("") + "2"), frame(digits, labels), no_units(torch_gen()))


# ------------------------------------------------------------------ a later configuration fails alone


@pytest.mark.parametrize("framework", ["keras", "torch"])
def test_a_later_configuration_whose_output_is_too_narrow_fails_alone(store, digits, framework):
    result = fit(store, frame(digits), GENS[framework](), backend=InlineBackend(2),
                 space={"units": hp_choice([10, 5])})
    assert {m: r.status for m, r in result.models.items()} == {"model_000": "completed", "model_001": "failed"}
    last = result.failures["model_001"].strip().splitlines()[-1]
    assert "LabelMismatch" in last and "class indices in [0, 5)" in last and "from 0 to 9" in last
    assert set(result.visits["model_id"]) == {"model_000"}  # never trained


def test_the_first_configuration_refuses_the_whole_fit(store, digits):
    with pytest.raises(ValueError, match=r"class indices in \[0, 5\)"):
        fit(store, frame(digits), torch_gen(), space={"units": hp_choice([5, 10])})
    assert_nothing_written(store)


# ------------------------------------------------------------------ the driver's checks on DataSamples


def test_the_sample_rows_are_checked_without_whole_data_statistics(digits):
    x, y = digits
    fw = get_framework("torch")
    sample = DataSample({"features": x[:8]}, {"label": y[:8] + 10}, ("features",), ("label",))
    with pytest.raises(LabelMismatch, match=r"range from 10 to 17 in the 8 sample training rows"):
        fw.make_spec(torch_gen()({}), [(64,)], sample)


def test_the_keras_check_runs_the_loss_and_names_the_real_cause(digits):
    """A loss the label checks do not know (the user's own) still gets one pass on the sample."""
    import keras

    x, y = digits

    def my_loss(y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred)

    fw = get_framework("keras")
    sample = DataSample({"features": x[:8]}, {"label": y[:8] + 10}, ("features",), ("label",))
    with pytest.raises(CerebroError) as info:
        fw.make_spec(keras_gen(loss=my_loss)({}), [(64,)], sample)
    last = traceback.format_exception_only(info.value)[-1]
    assert "Received a label value of 17 which is outside the valid range of [0, 10)" in last, last
    assert "{{" not in last and "[Op:" not in last, last
    assert "'my_loss'" in last and "label column 'label'" in last


def test_a_training_failure_on_labels_ends_with_the_real_cause_not_a_node_name(store, digits):
    """A loss the checks do not know, and bad labels outside the sample rows: training fails, and
    the last line of the recorded traceback is what TensorFlow's op said."""
    import keras

    def my_loss(y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred)

    _, y = digits
    labels = y.copy()
    labels[[3, 100, 201]] = [19, 12, 10]  # not among the sample rows (seed 0; see the test above)
    with pytest.raises(CerebroError, match="no configuration could train") as info:
        fit(store, frame(digits, labels), no_units(keras_gen(loss=my_loss)), backend=InlineBackend(2), seed=0)
    last = str(info.value).strip().splitlines()[-1]
    assert last.startswith("tensorflow.python.framework.errors_impl.InvalidArgumentError: Received a label value of "), last
    assert "which is outside the valid range of [0, 10)" in last and "{{node" not in last and "[Op:" not in last, last


# ------------------------------------------------------------------ which failures a retry cannot fix


def train_error(fw, est, x, y, sample=None):
    spec = fw.make_spec(est, [(64,)], sample)
    model = fw.build(spec)
    fw.load_state(model, spec.initial_state)
    with pytest.raises(Exception) as info:
        fw.train_sub_epoch(model, fw.make_inputs(spec, {"f": x}, ["f"]), fw.make_targets(spec, {"label": y}, ["label"]),
                           batch_size=32, seed=1)
    return info.value


def test_keras_training_on_bad_labels_raises_a_deterministic_error_with_the_real_cause(digits):
    x, y = digits
    fw = get_framework("keras")
    exc = train_error(fw, keras_gen()({}), x, y + 10)
    assert type(exc).__name__ == "InvalidArgumentError"
    assert deterministic_error(exc)
    last = traceback.format_exception_only(exc)[-1]
    assert "Received a label value of" in last and "outside the valid range of [0, 10)" in last, last
    assert "{{node" not in last and "Graph execution error" not in last, last
    exc = train_error(fw, keras_gen(loss="categorical_crossentropy")({}), x, y)
    assert isinstance(exc, ValueError) and deterministic_error(exc)


def test_torch_training_on_bad_labels_raises_a_deterministic_error(digits):
    x, y = digits
    fw = get_framework("torch")
    exc = train_error(fw, torch_gen()({}), x, y + 10)
    assert isinstance(exc, IndexError) and "out of bounds" in str(exc) and deterministic_error(exc)
    exc = train_error(fw, torch_gen(loss="mse")({}), x, y)  # 10 outputs, one label value per row
    assert isinstance(exc, ValueError) and deterministic_error(exc)
    spec = fw.make_spec(torch_gen()({}), [(64,)])
    model = fw.build(spec)
    fw.load_state(model, spec.initial_state)
    with pytest.raises(RuntimeError) as info:  # a forward pass that cannot take these inputs
        fw.train_sub_epoch(model, x[:, :60], y, batch_size=32, seed=1)
    assert "cannot be multiplied" in str(info.value) and deterministic_error(info.value)


def test_failures_of_the_machine_are_retried():
    import tensorflow as tf

    assert not deterministic_error(OSError(5, "Input/output error"))
    assert not deterministic_error(StoreFullError("no room"))
    assert not deterministic_error(MemoryError())
    assert not deterministic_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not deterministic_error(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert not deterministic_error(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"))
    assert not deterministic_error(RuntimeError("something unexpected"))  # unknown: retried, as before
    assert not deterministic_error(CerebroError("a spec was changed after cerebro wrote it"))
    try:
        try:
            raise OSError("connection reset")
        except OSError:
            raise ValueError("could not read")
    except ValueError as exc:  # raised while handling an OSError: the machine's
        assert not deterministic_error(exc)
    try:
        try:
            raise IndexError("Target 19 is out of bounds.")
        except IndexError as inner:
            raise CerebroError("training failed") from inner
    except CerebroError as exc:  # wraps the model's error
        assert deterministic_error(exc)
    assert deterministic_error(LabelMismatch("label column 'label' ..."))
    assert deterministic_error(RuntimeError("CUDA error: device-side assert triggered"))


def test_error_cause_keeps_what_the_op_said():
    import tensorflow as tf

    exc = tf.errors.InvalidArgumentError(None, None, (
        "Graph execution error:\n\nDetected at node compile_loss/sparse_categorical_crossentropy/Xent defined at "
        "(most recent call last):\n  File \"/x.py\", line 7, in <module>\n\n  File \"/y.py\", line 9, in fit\n\n"
        "Received a label value of 19 which is outside the valid range of [0, 10).  Label values: 1 19\n"
        "\t [[{{node compile_loss/sparse_categorical_crossentropy/Xent}}]] [Op:__inference_multi_step_on_iterator_210]"))
    assert error_cause(exc) == ("Received a label value of 19 which is outside the valid range of [0, 10).  "
                                "Label values: 1 19")
    eager = tf.errors.InvalidArgumentError(None, None, (
        "{{function_node __wrapped__SparseSoftmaxCrossEntropyWithLogits_device_/job:localhost/replica:0/task:0/device:"
        "CPU:0}} Received a label value of 17 which is outside the valid range of [0, 10).  Label values: 10 17 "
        "[Op:SparseSoftmaxCrossEntropyWithLogits] name: "))
    assert error_cause(eager) == "Received a label value of 17 which is outside the valid range of [0, 10).  Label values: 10 17"
    assert error_cause(ValueError("plain")) == "plain"
