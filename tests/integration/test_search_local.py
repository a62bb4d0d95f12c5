"""End to end: real worker processes, real Keras training on scikit-learn's digits."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest

import cerebro
from cerebro import GridSearch, LocalBackend, RandomSearch, hp_choice, hp_loguniform
from cerebro.frameworks.keras import limit_threads

pytestmark = pytest.mark.slow

limit_threads(1)



def make_estimator(params):
    import keras

    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(params.get("width", 32), activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    return cerebro.KerasEstimator(model, keras.optimizers.Adam(params["lr"]), "sparse_categorical_crossentropy",
                                  metrics=["accuracy"], batch_size=params.get("batch_size", 32))


@pytest.fixture(scope="module")
def grid_result(backend, store, df):
    space = {"lr": hp_choice([3e-3, 1e-2]), "width": hp_choice([16, 64])}
    return GridSearch(backend, store, make_estimator, space, num_epochs=4, evaluation_metric="accuracy",
                      scheduler="deterministic", experiment_name="grid-acc", verbose=0).fit(df)


def exactly_once(visits: pd.DataFrame) -> pd.Series:
    return visits[visits.status == "ok"].groupby(["model_id", "epoch", "partition"]).size()


def test_grid_on_digits_picks_the_most_accurate_model(grid_result):
    r = grid_result
    last = r.history.sort_values("epoch").groupby("model_id").tail(1).set_index("model_id")
    assert r.best_score >= 0.9
    assert r.best_score == pytest.approx(last["val_accuracy"].max())
    assert r.best_model_id == last["val_accuracy"].idxmax()
    assert r.best_params == r.models[r.best_model_id].params
    assert set(r.history.columns) >= {"model_id", "epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy",
                                      "param_lr", "param_width"}
    assert sorted(r.history.epoch.unique()) == [1, 2, 3, 4]
    counts = exactly_once(r.visits)
    assert len(counts) == 4 * 4 * 2 and set(counts) == {1}
    assert set(r.visits.columns) >= {"model_id", "epoch", "partition", "worker", "start", "end", "rows", "status"}
    assert (r.visits.partition == r.visits.worker).all()
    assert r.visits.rows.sum() == 4 * 4 * (1797 - round(0.25 * 1797))
    assert r.failures == {}


def test_loss_is_minimised(backend, store, df):
    space = {"lr": hp_choice([1e-4, 1e-2])}
    r = GridSearch(backend, store, make_estimator, space, num_epochs=2, evaluation_metric="loss",
                   experiment_name="grid-loss", verbose=0).fit(df)
    last = r.history.sort_values("epoch").groupby("model_id").tail(1).set_index("model_id")
    assert r.best_score == pytest.approx(last["val_loss"].min())
    assert r.best_params == {"lr": 1e-2}


def test_best_model_predicts_and_transforms(grid_result, df, tmp_path):
    model = grid_result.best_model
    out = grid_result.transform(df.head(200))
    assert "label__output" in out.columns and len(out) == 200
    probs = np.stack(out["label__output"].to_numpy())
    assert probs.shape == (200, 10)
    assert (probs.argmax(1) == df.label.head(200)).mean() > 0.85
    direct = model.predict(np.stack(df.features.head(200).to_numpy()))
    np.testing.assert_allclose(direct, probs, atol=1e-6)
    path = model.save(tmp_path / "best")
    loaded = cerebro.load_model(path)
    np.testing.assert_allclose(loaded.predict(df.head(50)), probs[:50], atol=1e-6)
    assert loaded.params == model.params


def test_mop_equals_sequential_sgd(grid_result):
    from cerebro.replay import replay_model

    for model_id in ("model_000", "model_003"):
        trained = grid_result.models[model_id]
        replayed = replay_model(trained)
        got = trained.keras()
        diffs = [np.max(np.abs(a - b)) for a, b in zip(got.get_weights(), replayed.get_weights())]
        assert max(diffs) <= 1e-6, diffs
        opt_a = [v.numpy() for v in got.optimizer.variables]
        opt_b = [v.numpy() for v in replayed.optimizer.variables]
        assert int(opt_a[0]) == int(opt_b[0]) > 0  # iteration count carried across hops
        assert max(float(np.max(np.abs(a - b))) for a, b in zip(opt_a, opt_b)) <= 1e-6


def test_deterministic_scheduler_gives_identical_histories(grid_result, backend, store, df):
    space = {"lr": hp_choice([3e-3, 1e-2]), "width": hp_choice([16, 64])}
    again = GridSearch(backend, store, make_estimator, space, num_epochs=4, evaluation_metric="accuracy",
                       scheduler="deterministic", experiment_name="grid-acc-again", verbose=0).fit(df)
    cols = [c for c in grid_result.history.columns if c.startswith(("train_", "val_", "param_")) or c in ("model_id", "epoch")]
    pd.testing.assert_frame_equal(grid_result.history[cols], again.history[cols])
    for mid, m in grid_result.models.items():
        for a, b in zip(m.keras().get_weights(), again.models[mid].keras().get_weights()):
            np.testing.assert_array_equal(a, b)


def test_random_search_and_a_failing_configuration(backend, store, df):
    def gen(params):
        if params["lr"] > 5e-3:
            raise RuntimeError(f"refusing lr={params['lr']}")
        return make_estimator(params)

    r = RandomSearch(backend, store, gen, {"lr": hp_loguniform(1e-3, 2e-2)}, num_models=4, num_epochs=1,
                     evaluation_metric="accuracy", experiment_name="random-failing", seed=11, verbose=0).fit(df)
    bad = {m for m, t in r.models.items() if t.params["lr"] > 5e-3}
    assert bad and len(bad) < 4
    assert set(r.failures) == bad
    assert all("RuntimeError: refusing lr=" in r.failures[m] and "Traceback" in r.failures[m] for m in bad)
    assert set(r.history.model_id) == set(r.models) - bad
    assert r.best_model_id not in bad


def test_worker_killed_mid_sub_epoch(grid_result, backend, store, df):
    """SIGKILL one worker process while it trains: the run completes and equals the fault-free one."""
    killed = {}

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            running = backend.running_tasks()
            task = running.get(1)
            if task and task.kind == "train" and task.epoch == 2:
                time.sleep(0.005)
                pid = backend.worker_pids().get(1)
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    killed["task"] = {"model_id": task.model_id, "epoch": task.epoch}
                    return
            time.sleep(0.002)

    thread = threading.Thread(target=killer, daemon=True)
    space = {"lr": hp_choice([3e-3, 1e-2]), "width": hp_choice([16, 64])}
    search = GridSearch(backend, store, make_estimator, space, num_epochs=4, evaluation_metric="accuracy",
                        scheduler="deterministic", experiment_name="grid-acc-killed", verbose=0)
    thread.start()
    r = search.fit(df)
    thread.join()
    assert killed, "the killer never found a training sub-epoch to interrupt"
    failed = r.visits[r.visits.status == "failed"]
    assert len(failed) == 1
    assert failed.iloc[0].model_id == killed["task"]["model_id"] and failed.iloc[0].worker == 1
    counts = exactly_once(r.visits)
    assert len(counts) == 4 * 4 * 2 and set(counts) == {1}
    for mid, m in grid_result.models.items():
        for a, b in zip(m.keras().get_weights(), r.models[mid].keras().get_weights()):
            np.testing.assert_array_equal(a, b)


def test_a_fit_on_other_data_keeps_the_worker_processes_and_trains_as_fresh_ones(grid_result, backend, store, df):
    # grid_result prepared the data with seed 2020; seed 7 splits and partitions it otherwise,
    # so the workers load other data: in the same processes (no new start, no TF import).
    pids = backend.worker_pids()
    space = {"lr": hp_choice([3e-3, 1e-2]), "width": hp_choice([16])}

    def fit(b, name):
        return GridSearch(b, store, make_estimator, space, num_epochs=2, evaluation_metric="accuracy", seed=7,
                          scheduler="deterministic", experiment_name=name, verbose=0).fit(df)

    reused = fit(backend, "other-data-reused")
    assert backend.worker_pids() == pids
    with LocalBackend(num_workers=2) as fresh_backend:
        fresh = fit(fresh_backend, "other-data-fresh")
        assert set(fresh_backend.worker_pids().values()).isdisjoint(pids.values())
    pd.testing.assert_frame_equal(reused.history.drop(columns=["time"], errors="ignore"),
                                  fresh.history.drop(columns=["time"], errors="ignore"))
    for mid, m in reused.models.items():
        for a, b in zip(m.keras().get_weights(), fresh.models[mid].keras().get_weights()):
            np.testing.assert_array_equal(a, b)


def test_visits_count_the_one_time_build_apart_from_the_hop(backend, store, df):
    # Widths no other test of the module uses: each worker builds both architectures here.
    space = {"lr": hp_choice([3e-3, 1e-2]), "width": hp_choice([23, 29])}
    r = GridSearch(backend, store, make_estimator, space, num_epochs=2, evaluation_metric="accuracy",
                   experiment_name="build-apart", verbose=0).fit(df)
    for frame in (r.visits, r.evaluations):
        ok = frame[frame.status == "ok"]
        assert (ok.build_s >= 0).all() and (ok.build_s <= ok.load_s).all()
        # Everything built in epoch 1 (model, spec, input arrays) is kept: epoch 2 builds nothing.
        assert (ok[ok.epoch == 2].build_s == 0).all(), ok[["model_id", "epoch", "worker", "build_s"]]
    train = r.visits[r.visits.status == "ok"].sort_values("start")
    first = train.groupby("worker").head(1)
    assert len(first) == 2 and (first.build_s > 0.01).all()   # a Keras model is built: tens of ms
    # The first visit of each model on each worker reads its spec at least: some build time.
    firsts = train[train.epoch == 1]
    assert (firsts.build_s > 0).all()
    # The journal keeps it, so a resumed run and `cerebro report` see the same figures.
    from cerebro.experiment.journal import read_journal

    journaled = [rec["build_s"] for rec in read_journal(store, "build-apart")
                 if rec["type"] == "visit" and rec["kind"] == "train"]
    assert sorted(journaled) == sorted(r.visits.build_s.tolist())
