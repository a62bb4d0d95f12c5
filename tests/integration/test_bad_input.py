"""Every bad input of API.md's Errors section is refused before training, naming what is wrong."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

import cerebro
from cerebro import GridSearch, LocalBackend, LocalStore, RandomSearch, hp_choice, hp_uniform

pytestmark = pytest.mark.slow


def make_estimator(params):
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    return cerebro.KerasEstimator(model, keras.optimizers.SGD(params["lr"]), "sparse_categorical_crossentropy",
                                  metrics=["accuracy"])


@pytest.fixture
def frame():
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "a": rng.normal(size=40), "b": rng.normal(size=40), "c": rng.normal(size=40),
        "label": rng.integers(0, 2, size=40), "name": ["x"] * 40, "holdout": [True, False] * 20,
        "flag_int": [1, 0] * 20,
    })


class NeverStarted(LocalBackend):
    """A LocalBackend that fails the test if any worker would start."""

    def start(self, setup):  # pragma: no cover - reaching it is the failure
        raise AssertionError("a worker was started although the input is invalid")


@pytest.fixture
def store(tmp_path):
    return LocalStore(str(tmp_path / "store"))


def fit(store, df, **kw):
    space = kw.pop("space", {"lr": hp_choice([0.1])})
    kw.setdefault("feature_columns", ["a", "b", "c"])
    backend = NeverStarted(num_workers=kw.pop("num_workers", 2))
    return GridSearch(backend, store, make_estimator, space, 1, verbose=0, experiment_name="bad", **kw).fit(df)


def assert_nothing_written(store):
    root = store.local_path("")
    written = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs] if os.path.exists(root) else []
    assert written == [], written


@pytest.mark.parametrize("mutate,kw,expected", [
    (lambda df: df, {"feature_columns": ["a", "zzz"]}, r"'zzz'.*\['a', 'b', 'c', 'label'"),
    (lambda df: df, {"label_columns": ["nope"]}, r"'nope'"),
    (lambda df: df, {"feature_columns": ["a", "name"]}, r"'name'.*(object|str)"),
    (lambda df: df.assign(b=df.b.where(df.index % 7 != 0)), {}, r"'b'.*6 rows"),
    (lambda df: df.assign(c=df.c.replace(df.c.iloc[3], np.inf)), {}, r"'c'.*1 row"),
    (lambda df: df.head(3), {"num_workers": 4}, r"(?s)2 training rows.*4|4.*2 training rows"),
    (lambda df: df, {"validation": "flag_int"}, r"'flag_int'.*bool"),
    (lambda df: df, {"validation": "missing_col"}, r"'missing_col'"),
    (lambda df: df, {"validation": 1.5}, r"'validation'"),
    (lambda df: df, {"num_workers": 0}, r"'num_workers'"),
])
def test_bad_data_is_refused_before_anything_runs(store, frame, mutate, kw, expected):
    with pytest.raises(ValueError, match=expected):
        fit(store, mutate(frame), **kw)
    assert_nothing_written(store)


def test_empty_and_non_grid_search_spaces(store, frame):
    with pytest.raises(ValueError, match="'search_space'.*empty"):
        fit(store, frame, space={})
    with pytest.raises(ValueError, match="'lr'"):
        fit(store, frame, space={"lr": hp_uniform(0.01, 0.1)})
    assert_nothing_written(store)


@pytest.mark.parametrize("kw,expected", [
    ({"evaluation_metric": "mystery"}, "mode"),
    ({"mode": "up"}, "'mode'"),
    ({"scheduler": "fifo"}, "'scheduler'"),
    ({"seed": "x"}, "'seed'"),
])
def test_bad_arguments_name_the_argument(store, frame, kw, expected):
    with pytest.raises((ValueError, TypeError), match=expected):
        fit(store, frame, **kw)


def test_num_epochs_and_num_models_are_checked(store, frame):
    with pytest.raises(ValueError, match="The 'num_epochs' parameter of GridSearch must be an int >= 1. Got 0 instead."):
        GridSearch(NeverStarted(2), store, make_estimator, {"lr": hp_choice([0.1])}, 0).fit(frame)
    with pytest.raises(ValueError, match="'num_models'"):
        RandomSearch(NeverStarted(2), store, make_estimator, {"lr": hp_uniform(0.01, 0.1)}, 0, 1).fit(frame)


def test_an_evaluation_metric_the_models_do_not_compute(store, frame):
    with pytest.raises(ValueError, match=r"'auc'.*\['loss', 'accuracy'\]"):
        fit(store, frame, evaluation_metric="auc")
    # Issue 16, item 12: the prepared data this run wrote goes too (it used to stay: 5 files).
    assert_nothing_written(store)


def test_a_refused_run_keeps_prepared_data_it_reused(store, frame):
    from cerebro.data import prepare_data

    prepared = prepare_data(frame, store, feature_columns=["a", "b", "c"], label_columns=["label"], validation=0.25,
                            num_partitions=2, seed=0)
    with pytest.raises(ValueError, match=r"'auc'"):
        fit(store, frame, evaluation_metric="auc", validation=0.25, seed=0)
    assert store.listdir("data") == [prepared.key]  # the run found this copy (no other was written) ...
    assert store.exists(f"data/{prepared.key}/_manifest.json")  # ... and left it in place
    assert not store.exists("experiments/bad")


def test_reusing_an_experiment_name_is_refused(store, frame):
    # A run that started (its journal has a record) is never overwritten; one that died during
    # start-up, before its first record, is cleared instead (tests/unit/test_startup_leftovers.py).
    store.write_json("experiments/bad/experiment.json", {})
    store.append_bytes("experiments/bad/journal.jsonl", b'{"type": "started", "time": 1.0}\n')
    with pytest.raises(ValueError, match="already exists.*resume"):
        fit(store, frame)


class Opaque:
    """A value the journal cannot hold as JSON."""


@pytest.mark.parametrize("values,named", [
    ([0.1, Opaque()], "Opaque"),
    ([{"depth": 2, 3: "x"}], "key 3 of type int"),
    ([[1, {"act": Opaque()}]], "Opaque"),
])
def test_a_non_json_choice_is_refused_naming_the_parameter_and_nothing_is_written(store, frame, values, named):
    # Issue 16, item 9: this used to fail mid-run with "cannot journal Opaque" and leave a
    # named experiment behind.
    with pytest.raises(TypeError, match=rf"dimension 'lr' of GridSearch.*JSON data.*{named}"):
        fit(store, frame, space={"lr": hp_choice(values)})
    assert_nothing_written(store)


def interrupted_experiment(store, search) -> None:
    """experiment.json and a journal as an interrupted run of ``search`` leaves them."""
    store.write_json("experiments/r/experiment.json", {"num_workers": 2, "search": search._owner,
                                                       "arguments": search._decision_arguments()})
    store.write_bytes("experiments/r/journal.jsonl", b'{"type": "started", "time": 1.0, "pid": 1}\n')


@pytest.mark.parametrize("change,named", [
    ({"num_models": 4}, "'num_models'.*ran with 3, this call has 4"),
    ({"space": {"lr": hp_uniform(0.01, 0.5)}}, "'search_space'"),
    ({"num_epochs": 2}, "'num_epochs'"),
    ({"seed": 7}, "'seed'"),
    ({"scheduler": "deterministic"}, "'scheduler'"),
])
def test_resume_with_other_arguments_is_refused_naming_the_argument(store, frame, change, named):
    # Issue 16, item 8: resume=True used to accept a different search space, search or epochs.
    def search(num_models=3, space=None, num_epochs=1, **kw):
        return RandomSearch(NeverStarted(2), store, make_estimator, space or {"lr": hp_uniform(0.01, 0.1)}, num_models,
                            num_epochs, feature_columns=["a", "b", "c"], verbose=0, experiment_name="r", **kw)

    interrupted_experiment(store, search())
    before = sorted(os.listdir(store.local_path("experiments/r")))
    with pytest.raises(ValueError, match=named):
        search(**change).fit(frame, resume=True)
    assert sorted(os.listdir(store.local_path("experiments/r"))) == before
    assert not store.exists("data")  # refused before the data was prepared
    # The same call, the dict in another order, and operational arguments changed pass the check.
    same = search(space={"lr": hp_uniform(0.01, 0.1)}, max_retries=5)
    same._check_same_call(store.read_json("experiments/r/experiment.json"), "r")


def test_resume_with_another_search_is_refused(store, frame):
    interrupted_experiment(store, RandomSearch(NeverStarted(2), store, make_estimator, {"lr": hp_choice([0.1])}, 1, 1))
    with pytest.raises(ValueError, match="ran as RandomSearch; resume it with RandomSearch, not GridSearch"):
        GridSearch(NeverStarted(2), store, make_estimator, {"lr": hp_choice([0.1])}, 1, verbose=0,
                   feature_columns=["a", "b", "c"], experiment_name="r").fit(frame, resume=True)


@pytest.fixture
def read_only_dir(tmp_path):
    """A real read-only file system (a tmpfs mounted ro), so writes fail with EROFS."""
    from mounts import mounted_tmpfs

    with mounted_tmpfs(tmp_path / "ro", "ro") as path:
        yield path


def test_a_read_only_store_is_refused_up_front_naming_it(read_only_dir, frame):
    # Issue 16, item 11: this used to be a bare "OSError: [Errno 30] Read-only file system".
    store = LocalStore(str(read_only_dir))
    with pytest.raises(cerebro.CerebroError, match=rf"the store {store.url} is not writable .*Read-only file system"):
        fit(store, frame)
    assert os.listdir(read_only_dir) == []
