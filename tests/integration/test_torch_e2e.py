"""PyTorch models on MOP end to end: real worker processes, real torch training on digits.

The same user-facing claims the Keras tests make: the best model is the most accurate, the
deterministic scheduler gives bit-identical models, MOP equals sequential SGD (replay),
a SIGKILLed worker changes nothing, PBT copies weights and optimizer state and sets the new
learning rate in place, ablation, early stopping, results (predict, transform, save/load),
TensorBoard/MLflow and the report.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch", reason="torch is part of the [test] extra")
from torch import nn  # noqa: E402

import cerebro  # noqa: E402
from cerebro import (  # noqa: E402
    AblationStudy, CerebroError, GridSearch, LocalStore, MedianStopping, PBTSearch, hp_choice,
    hp_loguniform,
)
from cerebro.datasets import digits_frame  # noqa: E402
from cerebro.experiment.journal import read_journal  # noqa: E402
from test_ablation import frame as ablation_frame  # noqa: E402  (the Keras ablation test's digits halves + noise)

pytestmark = pytest.mark.slow

torch.set_num_threads(1)


def make_estimator(params):
    model = nn.Sequential(nn.Linear(64, params.get("width", 32)), nn.ReLU(), nn.Dropout(0.1),
                          nn.Linear(params.get("width", 32), 10))
    return cerebro.TorchEstimator(model, torch.optim.Adam(model.parameters(), lr=params["lr"]), "cross_entropy",
                                  metrics=["accuracy"], batch_size=params.get("batch_size", 32))


def state(trained) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in trained.torch().state_dict().items()}


def assert_same_weights(a, b) -> None:
    assert a.keys() == b.keys()
    for mid in a:
        sa, sb = state(a[mid]), state(b[mid])
        assert sa.keys() == sb.keys()
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k], err_msg=f"{mid} {k}")


def exactly_once(visits: pd.DataFrame) -> pd.Series:
    return visits[visits.status == "ok"].groupby(["model_id", "epoch", "partition"]).size()


def load_state(store, path) -> dict:
    return torch.load(io.BytesIO(store.read_bytes(path)), weights_only=True, map_location="cpu")


SPACE = {"lr": hp_choice([3e-3, 1e-2]), "width": hp_choice([16, 64])}


@pytest.fixture(scope="module")
def grid_result(backend, store, df):
    return GridSearch(backend, store, make_estimator, SPACE, num_epochs=4, evaluation_metric="accuracy",
                      scheduler="deterministic", experiment_name="torch-grid", verbose=0).fit(df)


def test_grid_of_torch_models_picks_the_most_accurate(grid_result):
    r = grid_result
    assert len(r.models) == 4 and r.failures == {}
    last = r.history.sort_values("epoch").groupby("model_id").tail(1).set_index("model_id")
    assert r.best_model_id == last["val_accuracy"].idxmax()
    assert r.best_score == pytest.approx(last["val_accuracy"].max())
    assert r.best_score > 0.9
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "param_lr", "param_width"} <= set(r.history.columns)
    # training lowers the loss of every model
    for mid, h in r.history.groupby("model_id"):
        assert h.sort_values("epoch").train_loss.iloc[-1] < h.sort_values("epoch").train_loss.iloc[0], mid
    counts = exactly_once(r.visits)
    assert len(counts) == 4 * 4 * 2 and set(counts) == {1}
    assert isinstance(r.best_model.model(), nn.Sequential)
    assert r.best_model.framework == "torch"


def test_every_visit_records_the_host_and_device_it_ran_on(grid_result, tmp_path):
    import socket

    from cerebro.report import write_report

    visits = grid_result.visits
    assert list(visits.columns[:6]) == ["model_id", "epoch", "partition", "worker", "host", "device"]
    assert set(visits["host"]) == {socket.gethostname()} and set(visits["device"]) == {"cpu"}
    png_path, html_path = write_report(grid_result.experiment_dir)
    html = open(html_path).read()
    assert "<h2>Workers (2)</h2>" in html and html.count(">cpu</td>") == 2


def test_mop_equals_sequential_sgd_for_torch(grid_result):
    from cerebro.replay import replay_model

    for model_id in ("model_000", "model_003"):
        trained = grid_result.models[model_id]
        replayed = replay_model(trained)
        assert isinstance(replayed, nn.Module)
        got, want = state(trained), {k: v.detach().numpy() for k, v in replayed.state_dict().items()}
        diffs = {k: float(np.max(np.abs(got[k] - want[k]))) for k in got}
        assert max(diffs.values()) <= 1e-6, diffs


def test_deterministic_scheduler_gives_bit_identical_torch_models(grid_result, backend, store, df):
    again = GridSearch(backend, store, make_estimator, SPACE, num_epochs=4, evaluation_metric="accuracy",
                       scheduler="deterministic", experiment_name="torch-grid-again", verbose=0).fit(df)
    cols = [c for c in grid_result.history.columns if c.startswith(("train_", "val_", "param_")) or c in ("model_id", "epoch")]
    pd.testing.assert_frame_equal(grid_result.history[cols], again.history[cols])
    assert_same_weights(grid_result.models, again.models)


def test_torch_results_predict_transform_save_and_load(grid_result, df, tmp_path):
    model = grid_result.best_model
    probs = model.predict(df.head(50))
    assert probs.shape == (50, 10)
    with torch.no_grad():
        x = torch.from_numpy(np.stack(df.head(50).features.to_numpy()).astype(np.float32))
        np.testing.assert_allclose(probs, model.torch().eval()(x).numpy(), atol=1e-6)
    out = grid_result.transform(df.head(50))
    assert list(out.columns) == [*df.columns, "label__output"]
    accuracy = float(np.mean(np.argmax(np.stack(out["label__output"]), axis=1) == df.head(50).label))
    assert accuracy > 0.85
    with pytest.raises(CerebroError, match="torch model; use .torch"):
        model.keras()
    loaded = cerebro.load_model(model.save(tmp_path / "best"))
    assert loaded.framework == "torch" and loaded.params == model.params
    np.testing.assert_array_equal(loaded.predict(df.head(50)), probs)


def test_torch_worker_killed_mid_sub_epoch_changes_nothing(grid_result, backend, store, df):
    """SIGKILL one worker process while it trains a torch model: the run completes and equals the fault-free one."""
    killed = {}

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            task = backend.running_tasks().get(1)
            if task and task.kind == "train" and task.epoch == 2:
                pid = backend.worker_pids().get(1)
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    killed["task"] = {"model_id": task.model_id, "epoch": task.epoch}
                    return
            time.sleep(0.001)

    thread = threading.Thread(target=killer, daemon=True)
    search = GridSearch(backend, store, make_estimator, SPACE, num_epochs=4, evaluation_metric="accuracy",
                        scheduler="deterministic", experiment_name="torch-grid-killed", verbose=0)
    thread.start()
    r = search.fit(df)
    thread.join()
    assert killed, "the killer never found a training sub-epoch to interrupt"
    failed = r.visits[r.visits.status == "failed"]
    assert len(failed) == 1 and failed.iloc[0].model_id == killed["task"]["model_id"]
    counts = exactly_once(r.visits)
    assert len(counts) == 4 * 4 * 2 and set(counts) == {1}
    assert_same_weights(grid_result.models, r.models)


def test_pbt_with_torch_copies_state_and_sets_the_new_learning_rate(backend, tmp_path, df):
    store = LocalStore(str(tmp_path))
    kept: list[str] = []
    store.delete = kept.append  # keep every checkpoint so the copies can be compared afterwards
    r = PBTSearch(backend, store, make_estimator, {"lr": hp_loguniform(1e-4, 3e-2), "width": hp_choice([16])},
                  population_size=4, num_epochs=3, perturbation_interval=1, quantile_fraction=0.25,
                  evaluation_metric="accuracy", verbose=0, tensorboard=False, experiment_name="pbt-torch").fit(df)
    assert r.failures == {}
    exploits = [a for rec in read_journal(store, "pbt-torch") if rec["type"] == "epoch" for a in rec["actions"]
                if a["action"] == "exploit"]
    assert exploits, "PBT never exploited"
    for e in exploits:
        src, dst = load_state(store, e["source_checkpoint"]), load_state(store, e["checkpoint"])
        for k, v in src["model"].items():
            torch.testing.assert_close(dst["model"][k], v, rtol=0, atol=0)
        # Adam's moments and step counts are the source's; only the learning rate is new
        for pid, slots in src["optimizer"]["state"].items():
            for name, value in slots.items():
                torch.testing.assert_close(dst["optimizer"]["state"][pid][name], value, rtol=0, atol=0)
        assert [g["lr"] for g in dst["optimizer"]["param_groups"]] == pytest.approx([e["params"]["lr"]])
        h = r.history[r.history.model_id == e["model_id"]].set_index("epoch")
        if e["epoch"] + 1 in h.index:
            assert h.loc[e["epoch"] + 1, "param_lr"] == pytest.approx(e["params"]["lr"])


def test_median_stopping_stops_the_slow_torch_models(backend, tmp_path, df):
    space = {"lr": hp_choice([1e-6, 2e-6, 5e-3, 1e-2]), "width": hp_choice([32])}
    r = GridSearch(backend, LocalStore(str(tmp_path)), make_estimator, space, num_epochs=4, evaluation_metric="accuracy",
                   early_stopping=MedianStopping(grace_epochs=1, min_models=2), verbose=0, tensorboard=False).fit(df)
    epochs = r.history.groupby("model_id").epoch.max()
    slow = [m for m, t in r.models.items() if t.params["lr"] < 1e-4]
    fast = [m for m, t in r.models.items() if t.params["lr"] > 1e-3]
    assert all(epochs[m] < 4 and r.models[m].status == "stopped" for m in slow)
    assert all(epochs[m] == 4 and r.models[m].status == "completed" for m in fast)


def ablation_gen(params):
    width = params["width"]
    model = nn.Sequential(OrderedDict([
        ("hidden1", nn.Linear(68, width)), ("act1", nn.ReLU()),
        ("hidden2", nn.Linear(width, width)), ("act2", nn.ReLU()),
        ("out", nn.Linear(width, 10)),
    ]))
    return cerebro.TorchEstimator(model, torch.optim.Adam(model.parameters(), lr=1e-2), "cross_entropy",
                                  metrics=["accuracy"], batch_size=32)


def test_ablation_study_of_a_torch_sequential(backend, tmp_path):
    r = AblationStudy(backend, LocalStore(str(tmp_path)), ablation_gen, {"width": 32}, num_epochs=3,
                      ablate_features=["bottom", "noise"], ablate_layers=["hidden2"],
                      feature_columns=["top", "bottom", "noise"], label_columns=["label"],
                      evaluation_metric="accuracy", verbose=0, tensorboard=False).fit(ablation_frame())
    table = r.ablation.set_index("variant")
    assert list(table.index) == ["base", "-feature:bottom", "-feature:noise", "-layer:hidden2"]
    assert table.loc["base", "val_accuracy"] > 0.85
    assert table.loc["-feature:bottom", "val_accuracy"] < table.loc["base", "val_accuracy"] - 0.03
    by_variant = {m.params["ablation"]: m for m in r.models.values()}
    assert by_variant["-feature:bottom"].torch().hidden1.in_features == 36
    assert [name for name, _ in by_variant["-layer:hidden2"].torch().named_children()] == ["hidden1", "act1", "act2", "out"]


def test_tensorboard_mlflow_and_report_for_torch(backend, tmp_path):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cerebro.report import write_report

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = GridSearch(backend, LocalStore(str(tmp_path / "store")), make_estimator, {"lr": hp_choice([1e-3, 1e-2])},
                   num_epochs=2, evaluation_metric="accuracy", experiment_name="torch-tracked", mlflow_tracking_uri=uri,
                   verbose=0).fit(digits_frame())
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("torch-tracked").experiment_id])
    children = {run.data.tags["mlflow.runName"]: run for run in runs if "mlflow.parentRunId" in run.data.tags}
    assert set(children) == set(r.models)
    for mid, run in children.items():
        expected = r.history[r.history.model_id == mid].set_index("epoch")["val_accuracy"].to_dict()
        got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")}
        assert got == pytest.approx(expected, rel=1e-6)
        acc = EventAccumulator(os.path.join(r.experiment_dir, "tensorboard", mid), size_guidance={"tensors": 0})
        acc.Reload()
        assert len(acc.Tensors("val_accuracy")) == 2
    png, page = write_report(r.experiment_dir)
    assert os.path.getsize(png) > 0
    html = open(page).read()
    assert all(mid in html for mid in r.models)
