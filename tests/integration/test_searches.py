"""Every search end to end on digits with real worker processes (LocalBackend)."""

from __future__ import annotations

import numpy as np
import pytest

import cerebro
from cerebro.datasets import digits_frame
from cerebro import (
    ASHASearch, GridSearch, HyperbandSearch, LocalBackend, LocalStore, MedianStopping, PBTSearch, TPESearch,
    hp_choice, hp_loguniform, hp_quniform,
)
from cerebro.frameworks import keras as kf
from cerebro.frameworks.keras.state import unpack
from cerebro.experiment.journal import read_journal

pytestmark = pytest.mark.slow

kf.limit_threads(1)



def gen(params):
    import keras

    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(int(params.get("width", 16)), activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    return cerebro.KerasEstimator(model, keras.optimizers.Adam(params["lr"]), "sparse_categorical_crossentropy",
                                  metrics=["accuracy"], batch_size=32)


SPACE = {"lr": hp_loguniform(1e-4, 3e-2), "width": hp_quniform(8, 64, 8)}


@pytest.fixture(scope="module")
def backend():
    with LocalBackend(2) as b:
        yield b


@pytest.fixture(scope="module")
def df():
    return digits_frame()


def common(r, allowed_status=("completed", "stopped")):
    ok = r.visits[r.visits.status == "ok"].groupby(["model_id", "epoch", "partition"]).size()
    assert set(ok) == {1}
    assert r.failures == {}
    assert all(m.status in allowed_status for m in r.models.values())
    last = r.history.sort_values("epoch").groupby("model_id").tail(1).set_index("model_id")
    assert r.best_score == pytest.approx(last["val_accuracy"].max())
    # every (model, epoch) in history trained on both partitions that epoch
    assert len(ok) == 2 * len(r.history)


def test_tpe_search(backend, tmp_path, df):
    r = TPESearch(backend, LocalStore(str(tmp_path)), gen, SPACE, num_models=5, num_epochs=2, n_startup_jobs=2,
                  evaluation_metric="accuracy", verbose=0, tensorboard=False).fit(df)
    common(r)
    assert len(r.models) == 5 and len(r.history) == 10
    assert all(1e-4 <= m.params["lr"] <= 3e-2 and m.params["width"] % 8 == 0 for m in r.models.values())


def test_hyperband_trains_far_fewer_model_epochs_than_a_grid(backend, tmp_path, df):
    r = HyperbandSearch(backend, LocalStore(str(tmp_path)), gen, SPACE, max_epochs=3, eta=3,
                        evaluation_metric="accuracy", verbose=0, tensorboard=False).fit(df)
    common(r)
    n = len(r.models)
    assert n >= 4
    assert len(r.history) < 0.75 * n * 3  # model-epochs trained vs the same configurations for max_epochs
    assert r.history.epoch.max() == 3
    stopped = [m for m in r.models.values() if m.status == "stopped"]
    assert stopped and all(len(m.history) < 3 for m in stopped)


def test_asha_promotes_and_stops(backend, tmp_path, df):
    r = ASHASearch(backend, LocalStore(str(tmp_path)), gen, SPACE, num_models=6, max_epochs=4, grace_period=1,
                   reduction_factor=2, evaluation_metric="accuracy", verbose=0, tensorboard=False).fit(df)
    common(r)
    assert len(r.models) == 6
    assert len(r.history) < 6 * 4
    assert r.history.epoch.max() == 4


def test_median_stopping_with_a_grid(backend, tmp_path, df):
    space = {"lr": hp_choice([1e-5, 2e-5, 5e-3, 1e-2]), "width": hp_choice([32])}
    r = GridSearch(backend, LocalStore(str(tmp_path)), gen, space, num_epochs=4, evaluation_metric="accuracy",
                   early_stopping=MedianStopping(grace_epochs=1, min_models=2), verbose=0, tensorboard=False).fit(df)
    common(r)
    epochs = r.history.groupby("model_id").epoch.max()
    slow = [m for m, t in r.models.items() if t.params["lr"] < 1e-4]
    fast = [m for m, t in r.models.items() if t.params["lr"] > 1e-3]
    assert all(epochs[m] < 4 and r.models[m].status == "stopped" for m in slow)
    assert all(epochs[m] == 4 and r.models[m].status == "completed" for m in fast)


def test_pbt_exploit_copies_the_source_weights(backend, tmp_path, df):
    store = LocalStore(str(tmp_path))
    kept: list[str] = []
    store.delete = kept.append  # keep every checkpoint so the copy can be compared afterwards
    r = PBTSearch(backend, store, gen, {"lr": hp_loguniform(1e-4, 3e-2), "width": hp_choice([16])},
                  population_size=4, num_epochs=3, perturbation_interval=1, quantile_fraction=0.25,
                  evaluation_metric="accuracy", verbose=0, tensorboard=False, experiment_name="pbt").fit(df)
    common(r)
    exploits = [a for rec in read_journal(store, "pbt") if rec["type"] == "epoch" for a in rec["actions"]
                if a["action"] == "exploit"]
    assert exploits, "PBT never exploited"
    for e in exploits:
        _, src_w, src_opt = unpack(store.read_bytes(e["source_checkpoint"]))
        hdr, dst_w, dst_opt = unpack(store.read_bytes(e["checkpoint"]))
        for a, b in zip(src_w, dst_w):
            np.testing.assert_array_equal(a, b)
        lr_index = [i for i, entry in enumerate(hdr["optimizer"]) if entry[0].endswith("learning_rate")][0]
        assert float(dst_opt[lr_index]) == pytest.approx(e["params"]["lr"], rel=1e-6)
        # the target's history shows the parameters of each epoch
        h = r.history[r.history.model_id == e["model_id"]].set_index("epoch")
        if e["epoch"] + 1 in h.index:
            assert h.loc[e["epoch"] + 1, "param_lr"] == pytest.approx(e["params"]["lr"])
            assert h.loc[e["epoch"], "param_lr"] == pytest.approx(e["old_params"]["lr"])
