"""The original Cerebro's arguments through cerebro.tune, cerebro.keras, cerebro.backend and the
stores: what each maps to, what warns, what is refused (no Spark, no training)."""

from __future__ import annotations

import subprocess
import sys
import unittest
import warnings

import numpy as np
import pandas as pd
import pytest

import cerebro
from cerebro import space
from cerebro.errors import CerebroError
from cerebro.result import ModelSelectionResult as NewResult
from cerebro.result import TrainedModel
from cerebro.storage import HDFSStore, LocalStore
from cerebro.tune import (
    CerebroModel,
    CompatibilityWarning,
    GridSearch,
    ModelSelectionResult,
    RandomSearch,
    TPESearch,
    hp_choice,
    hp_loguniform,
    hp_qloguniform,
    hp_quniform,
    hp_uniform,
)


def gen(params):  # never called: construction only stores it
    raise AssertionError("not called")


# ---------------------------------------------------------------------- the original's test_hp_generation.py


class TestHpGen(unittest.TestCase):
    """tests/test_hp_generation.py of the original, unchanged (its imports are this module's)."""

    def test_hp_choice(self):
        options = [['x', 'y', 'z'], [1.0, 2.0, 22.0]]
        for option in options:
            temp = hp_choice(option)
            for _ in range(10):
                sv = temp.sample_value()
                if sv not in option:
                    assert False

        assert True

    def test_hp_uniform(self):
        minV = 0
        maxV = 100
        temp = hp_uniform(minV, maxV)
        for _ in range(10):
            if not (minV <= temp.sample_value() <= maxV):
                assert False

        assert True

    def test_hp_quniform(self):
        minV = 0
        maxV = 100
        q = 3
        temp = hp_quniform(minV, maxV, q)
        for _ in range(10):
            sv = temp.sample_value()
            if not (minV <= sv <= maxV):
                assert False
            elif sv % q != 0:
                assert False

        assert True

    def test_hp_loguniform(self):
        minV = -4
        maxV = -1
        temp = hp_loguniform(minV, maxV)
        for _ in range(10):
            sv = temp.sample_value()
            if not (np.power(0.1, -1*minV) <= sv <= np.power(0.1, -1*maxV)):
                assert False

        assert True

    def test_hp_qloguniform(self):
        minV = -4
        maxV = -1
        q = 0.0005
        temp = hp_qloguniform(minV, maxV, q)
        for _ in range(10):
            sv = temp.sample_value()
            if not (np.power(0.1, -1*minV) <= sv <= np.power(0.1, -1*maxV)):
                assert False

        assert True


# ---------------------------------------------------------------------- search space


def test_log_bounds_are_base_10_exponents_and_become_the_new_value_bounds():
    d = hp_loguniform(-4, -1)
    assert isinstance(d, space.LogUniform) and (d.low, d.high) == (1e-4, 1e-1)
    q = hp_qloguniform(1, 3, 1)   # 10..1000, ints as in cerebro.hp_qloguniform(10, 1000, 1)
    assert isinstance(q, space.QLogUniform) and (q.low, q.high, q.q) == (10, 1000, 1)
    draws = [q.sample(np.random.default_rng(s)) for s in range(50)]
    assert all(isinstance(v, int) and 10 <= v <= 1000 for v in draws) and len(set(draws)) > 10
    # the keyword names of the original
    u = hp_uniform(min=0, max=2)
    assert isinstance(u, space.Uniform) and (u.low, u.high) == (0, 2) and hp_quniform(min=0, max=8, q=2).q == 2
    assert repr(hp_choice([1, 2])) == repr(cerebro.hp_choice([1, 2]))


@pytest.mark.parametrize("call, exc, match", [
    (lambda: hp_loguniform(-1, -4), ValueError, r"needs min < max \(base-10 exponents\). Got min=-1, max=-4"),
    (lambda: hp_loguniform("a", 1), TypeError, r"'min' parameter of hp_loguniform must be a base-10 exponent"),
    (lambda: hp_qloguniform(-2, 400, 1), ValueError, r"'max' parameter of hp_qloguniform .* between -300 and 300"),
    (lambda: hp_qloguniform(-2, -1, 0), ValueError, r"q > 0"),
    (lambda: hp_uniform(3, 1), ValueError, r"low < high"),
])
def test_bad_dimensions_are_refused(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------- searches


def test_the_original_positional_order():
    s = {"lr": hp_choice([0.1])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompatibilityWarning)
        g = GridSearch(None, "store", gen, s, 3, "acc", 0.2, ["y"], ["x"], 0, seed=7)
        r = RandomSearch(None, "store", gen, s, 5, 2, "loss", "is_val", ["y"], ["x", "z"], 2, mode="min")
        t = TPESearch(None, "store", gen, s, 6, 4, "loss", 0.3, ["y"], ["x"], 3, 0, scheduler="deterministic")
    assert (g.num_epochs, g.evaluation_metric, g.validation, g.label_columns, g.feature_columns, g.verbose, g.seed) \
        == (3, "acc", 0.2, ["y"], ["x"], 0, 7)
    assert (r.num_models, r.num_epochs, r.validation, r.feature_columns, r.verbose, r.mode) \
        == (5, 2, "is_val", ["x", "z"], 2, "min")
    assert (t.num_models, t.num_epochs, t.validation, t.parallelism, t.verbose, t.scheduler) \
        == (6, 4, 0.3, 3, 0, "deterministic")
    assert isinstance(g, cerebro.GridSearch) and isinstance(t, cerebro.TPESearch)
    # the original's defaults
    d = GridSearch(None, "store", gen, s, 1)
    assert (d.evaluation_metric, d.validation, list(d.label_columns), list(d.feature_columns), d.verbose) \
        == ("loss", 0.25, ["label"], ["features"], 1)


def test_accuracy_is_maximised_and_says_so():
    s = {"lr": hp_choice([0.1])}
    with pytest.warns(CompatibilityWarning, match=r"evaluation_metric='acc' is maximised.*highest val_acc.*lowest"):
        GridSearch(None, "store", gen, s, 1, "acc")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompatibilityWarning)
        GridSearch(None, "store", gen, s, 1, "loss")
        GridSearch(None, "store", gen, s, 1, "acc", mode="max")   # asked for explicitly: no warning


def test_tpe_warns_that_log_exponents_are_base_10_for_every_search():
    with pytest.warns(CompatibilityWarning, match=r"\['lr'\] are drawn between 10\*\*min and 10\*\*max"):
        TPESearch(None, "store", gen, {"lr": hp_loguniform(-5, -3), "w": hp_choice([1])}, 2, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompatibilityWarning)
        TPESearch(None, "store", gen, {"lr": cerebro.hp_loguniform(1e-5, 1e-3)}, 2, 1)   # values: no warning
        RandomSearch(None, "store", gen, {"lr": hp_loguniform(-5, -3)}, 2, 1)


def test_fit_on_prepared_data_needs_the_compat_backend():
    g = GridSearch(None, "store", gen, {"lr": hp_choice([0.1])}, 1)
    with pytest.raises(CerebroError, match=r"needs a cerebro.backend.SparkBackend on which backend.prepare_data"):
        g.fit_on_prepared_data()


def test_an_integer_validation_column_marks_rows_above_zero():
    from cerebro.tune import _validation_flags

    df = pd.DataFrame({"x": [1.0, 2.0, 3.0], "v": [0, 1, 2], "b": [True, False, True], "f": [0.0, 1.0, 0.0]})
    out = _validation_flags(df, "v")
    assert out["v"].tolist() == [False, True, True] and df["v"].tolist() == [0, 1, 2]   # a copy
    for col in ("b", "f", "missing"):
        assert _validation_flags(df, col) is df   # bool: as is; others: cerebro's own checks report them
    assert _validation_flags(df, 0.25) is df and _validation_flags(None, "v") is None


# ---------------------------------------------------------------------- results


def _model(mid: str, losses: list[float], labels=("label",)) -> TrainedModel:
    h = pd.DataFrame({"model_id": mid, "epoch": range(1, len(losses) + 1), "train_loss": losses,
                      "val_loss": [x + 1 for x in losses], "train_acc": 0.5, "val_acc": 0.25, "param_lr": 0.1})
    return TrainedModel(model_id=mid, params={"lr": 0.1}, history=h, feature_columns=("features",), label_columns=labels)


def _result() -> ModelSelectionResult:
    models = {"model_000": _model("model_000", [3.0, 2.0]), "model_001": _model("model_001", [1.0, 0.5])}
    history = pd.concat([m.history for m in models.values()], ignore_index=True)
    new = NewResult(best_model_id="model_001", best_params={"lr": 0.1}, best_score=1.5, models=models,
                    history=history, visits=pd.DataFrame(), failures={}, experiment_dir="/nowhere")
    return ModelSelectionResult.of(new)


def test_the_result_accessors_read_the_new_result():
    r = _result()
    assert isinstance(r, NewResult) and all(isinstance(m, CerebroModel) for m in r.models.values())
    assert r.best_params == {"lr": 0.1} and r.experiment_dir == "/nowhere"   # every new field is there
    best = r.get_best_model()
    assert best is r.best_model and best.getRunId() == "model_001"
    assert r.get_history() == r.get_best_model_history() == best.getHistory() == {
        "train_loss": [1.0, 0.5], "val_loss": [2.0, 1.5], "train_acc": [0.5, 0.5], "val_acc": [0.25, 0.25]}
    assert [m.model_id for m in r.get_all_models()] == ["model_000", "model_001"] == [m.model_id for m in r.all_models]
    assert r.get_all_model_history()["model_000"]["val_loss"] == [4.0, 3.0] and r.metrics == r.get_all_model_history()
    assert best.getFeatureColumns() == ["features"] and best.getLabelColumns() == ["label"]


def test_set_output_columns_names_every_models_predictions():
    r = _result()
    assert r.output_columns == ["label__output"]
    assert r.set_output_columns(["label_predicted"]) is r
    assert r.output_columns == ["label_predicted"] and all(m.getOutputCols() == ["label_predicted"] for m in r.all_models)
    m = r.get_best_model()
    assert m.setOutputCols(["p"]) is m and m.getOutputCols() == ["p"]
    for bad, exc in ((["a", "b"], ValueError), ([], ValueError), ([3], ValueError), (None, TypeError)):
        with pytest.raises(exc, match="'output_columns' parameter of set_output_columns"):
            m.set_output_columns(bad)
    two = CerebroModel.of(_model("m", [1.0], labels=("a", "b")))
    with pytest.raises(ValueError, match=r"a list of 2 distinct column names \(one per label column \['a', 'b'\]\)"):
        two.set_output_columns(["x", "x"])


def test_renamed_predictions_replace_an_existing_column_in_place():
    from cerebro.tune import _rename_columns

    df = pd.DataFrame({"label": [1, 0], "x": [0.5, 0.5], "label__output": [0.9, 0.1]})
    out = _rename_columns(df.copy(), [("label__output", "label")])
    assert list(out.columns) == ["label", "x"] and out["label"].tolist() == [0.9, 0.1]
    out = _rename_columns(df.copy(), [("label__output", "p")])
    assert list(out.columns) == ["label", "x", "p"]


# ---------------------------------------------------------------------- estimator


keras = pytest.importorskip("keras")


def _net(compiled: bool = False):
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    if compiled:
        m.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    return m


def test_spark_estimator_takes_the_original_keywords():
    from cerebro.keras import SparkEstimator

    est = SparkEstimator(model=_net(), optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                         metrics=["acc"], custom_objects={}, loss_weights=None, callbacks=[])
    assert isinstance(est, cerebro.KerasEstimator) and est.batch_size == 32 and est.metrics == ["acc"]
    assert est.metric_names() == ["loss", "acc"]
    assert SparkEstimator(model=_net(), optimizer="adam", loss="mse", batch_size=64.0).batch_size == 64
    assert SparkEstimator(model=_net(), optimizer="adam", loss="mse").metrics == ()
    # a compiled model brings its optimizer and loss, as in the original
    compiled = _net(compiled=True)
    est = SparkEstimator(model=compiled)
    assert est.optimizer is compiled.optimizer and est.loss == "sparse_categorical_crossentropy"


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"callbacks": ["cb"]}, ValueError, r"'callbacks' parameter of SparkEstimator cannot be honoured.*MedianStopping"),
    ({"callbacks": "cb"}, TypeError, r"'callbacks' parameter of SparkEstimator must be a list"),
    ({"transformation_fn": lambda ds: ds}, ValueError, r"'transformation_fn' parameter of SparkEstimator cannot be honoured"),
    ({"model": None}, TypeError, r"'model' parameter of KerasEstimator must be a keras.Model"),
    ({"optimizer": None}, TypeError, r"'optimizer' parameter"),   # no optimizer and an uncompiled model
    ({"batch_size": 0}, ValueError, r"'batch_size' parameter"),
    ({"batch_size": 2.5}, ValueError, r"'batch_size' parameter"),
])
def test_spark_estimator_refuses_what_it_cannot_honour(kwargs, exc, match):
    from cerebro.keras import SparkEstimator

    args = {"model": _net(), "optimizer": "adam", "loss": "mse", **kwargs}
    with pytest.raises(exc, match=match):
        SparkEstimator(**args)


def test_spark_estimator_takes_keywords_only_like_the_original():
    from cerebro.keras import SparkEstimator

    with pytest.raises(TypeError, match="positional"):
        SparkEstimator(_net(), "adam", "mse")


# ---------------------------------------------------------------------- backend


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"disk_cache_size_gb": -1}, ValueError, r"'disk_cache_size_gb' parameter of SparkBackend must be a number of GB > 0"),
    ({"data_readers_pool_type": "fork"}, ValueError, r"'data_readers_pool_type' .* one of 'thread', 'process'"),
    ({"num_data_readers": 0}, ValueError, r"'num_data_readers' parameter of SparkBackend must be an int >= 1"),
    ({"nics": "eth0"}, TypeError, r"'nics' parameter of SparkBackend must be a list of network interface names"),
    ({"verbose": 5}, ValueError, r"'verbose' parameter of SparkBackend"),
])
def test_spark_backend_checks_the_original_arguments(kwargs, exc, match):
    from cerebro.backend import SparkBackend

    with pytest.raises(exc, match=match):
        SparkBackend(**kwargs)


def test_spark_backend_warns_for_each_argument_without_effect_then_maps_the_rest():
    pytest.importorskip("pyspark")
    from cerebro.backend import SparkBackend

    with pytest.warns(CompatibilityWarning) as caught, pytest.raises(TypeError, match="'spark_context' parameter"):
        SparkBackend(object(), 2, 60, 10, "thread", 10, ["eth0"], 2)   # the original's positional order
    named = sorted(str(w.message).split("'")[1] for w in caught if w.category is CompatibilityWarning)
    assert named == ["data_readers_pool_type", "disk_cache_size_gb", "nics", "num_data_readers"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompatibilityWarning)
        with pytest.raises(TypeError, match="'spark_context' parameter"):
            SparkBackend(object(), 2, verbose=2)   # verbose only printed: accepted silently


# ---------------------------------------------------------------------- stores


def test_local_store_accepts_the_original_layout_arguments(tmp_path):
    with pytest.warns(CompatibilityWarning) as caught:
        s = LocalStore(str(tmp_path / "p"), train_path="/x/train", val_path="/x/val", runs_path="/x/runs",
                       temp_dir="/x/tmp")
    assert s.root == str(tmp_path / "p")
    named = [str(w.message).split("'")[1] for w in caught if w.category is CompatibilityWarning]
    assert named == ["train_path", "val_path", "runs_path", "temp_dir"]
    assert "has no effect: the prepared training data is written under prefix_path" in str(caught[0].message)
    with pytest.raises(TypeError, match="'train_path' parameter of LocalStore must be a path or None"):
        LocalStore(str(tmp_path), train_path=3)


@pytest.mark.parametrize("prefix, kwargs, url", [
    ("hdfs://master:9000/tmp/cerebro", {}, "hdfs://master:9000/tmp/cerebro"),
    ("/user/test/cerebro", {"host": "nn", "port": 8020}, "hdfs://nn:8020/user/test/cerebro"),
    ("hdfs:///user/test/cerebro", {"host": "nn"}, "hdfs://nn/user/test/cerebro"),
    ("hdfs://nn/user/x", {"port": 9000}, "hdfs://nn:9000/user/x"),
    ("hdfs://nn:9000/user/x", {"host": "nn", "port": 0}, "hdfs://nn:9000/user/x"),
])
def test_hdfs_store_host_and_port_complete_the_url(prefix, kwargs, url):
    assert HDFSStore(prefix, **kwargs).url == url


@pytest.mark.parametrize("prefix, kwargs, match", [
    ("hdfs://nn:9000/x", {"host": "other"}, r"'host' parameter of HDFSStore is 'other' but prefix_path"),
    ("hdfs://nn:9000/x", {"port": 8020}, r"'port' parameter of HDFSStore is 8020 but prefix_path"),
    ("/x", {"port": 8020}, r"HDFSStore needs the namenode for prefix_path '/x': pass host="),
    ("/x", {"host": "nn:1"}, r"'host' parameter of HDFSStore must be a namenode host name"),
    ("/x", {"host": "nn", "port": 70000}, r"'port' parameter of HDFSStore must be an int in \[0, 65535\]"),
    ("hdfs://nn:9000/x", {"driver": "libhdfs3"}, r"'driver' parameter of HDFSStore must be one of"),
])
def test_hdfs_store_refuses_contradicting_arguments(prefix, kwargs, match):
    with pytest.raises(ValueError, match=match):
        HDFSStore(prefix, **kwargs)


def test_hdfs_store_warns_for_extra_conf_and_the_layout_arguments():
    with pytest.warns(CompatibilityWarning) as caught:
        s = HDFSStore("hdfs://nn:9000/x", user="me", kerb_ticket="/tmp/krb", driver="libhdfs", runs_path="/runs",
                      extra_conf={"dfs.replication": "1"})
    assert s.driver == "libhdfs" and s.url == "hdfs://nn:9000/x"
    named = [str(w.message).split("'")[1] for w in caught if w.category is CompatibilityWarning]
    assert named == ["runs_path", "extra_conf"] and "['dfs.replication'] are not passed" in str(caught[1].message)


# ---------------------------------------------------------------------- imports


def test_the_compat_modules_are_light_and_cerebro_keras_does_not_shadow_keras():
    code = (
        "import sys\n"
        "import cerebro, cerebro.tune, cerebro.backend, cerebro.storage\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow', 'torch', 'pyspark'))\n"
        "assert heavy == [], heavy\n"
        "import cerebro.keras\n"
        "import cerebro.frameworks.keras.estimator as est\n"
        "import keras\n"
        "assert keras is est.keras is sys.modules['keras'] and keras is not cerebro.keras, keras\n"
        "assert keras.__file__.endswith('site-packages/keras/__init__.py') and hasattr(keras, 'Sequential')\n"
        "assert cerebro.keras.SparkEstimator.__mro__[1] is est.KerasEstimator\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
