"""TensorBoard and MLflow listeners: drive them with engine events, then read back what they wrote.

Real files, real readers: TensorBoard's EventAccumulator and hparams protos, MLflow's client on a
local SQLite database and on the (deprecated) file store. No server.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import pytest

from cerebro.errors import CerebroError

# TensorFlow's import, MLflow's import and its SQLite schema take ~15 s together.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*")]

PARAMS = {
    "m0": {"lr": 0.001, "width": 32, "activation": "relu", "batch_norm": True},
    "m1": {"lr": 0.01, "width": 128, "activation": "tanh", "batch_norm": False},
    "m2": {"lr": 0.1, "width": 64, "activation": "relu", "batch_norm": True},
}
ERROR = ("Traceback (most recent call last):\n  File \"gen.py\", line 3, in estimator_gen_fn\n"
         "ValueError: width 64 is cursed\n")
STATUS = {"m0": "completed", "m1": "stopped", "m2": "failed"}
EPOCHS = 3


def metrics(model: str, epoch: int) -> dict[str, float]:
    i = int(model[1:])
    return {
        "train_loss": 2.0 / (epoch + i) + 0.013 * i,
        "val_loss": 2.1 / (epoch + i) + 0.017,
        "train_accuracy": 0.5 + 0.1 * epoch - 0.03 * i,
        "val_accuracy": 0.45 + 0.11 * epoch - 0.02 * i,
    }


def events() -> list[tuple[str, dict]]:
    """What the engine emits for two models trained three epochs and one that fails at creation."""
    out: list[tuple[str, dict]] = [("worker_ready", {"worker": 0, "pid": 1}), ("worker_ready", {"worker": 1, "pid": 2})]
    out += [("model_added", {"model_id": m, "params": dict(PARAMS[m])}) for m in ("m0", "m1")]
    out += [("model_failed", {"model_id": "m2", "params": dict(PARAMS["m2"]), "error": ERROR}),
            ("model_ended", {"model_id": "m2", "status": "failed"})]
    for epoch in range(1, EPOCHS + 1):
        for m in ("m1", "m0") if epoch % 2 else ("m0", "m1"):
            out.append(("visit", {"model_id": m, "epoch": epoch, "partition": 0, "status": "ok"}))
            out.append(("epoch", {"model_id": m, "epoch": epoch, "metrics": metrics(m, epoch)}))
    out += [("model_ended", {"model_id": m, "status": STATUS[m]}) for m in ("m0", "m1")]
    out.append(("worker_died", {"worker": 1, "reason": "shutdown"}))
    return out


def split_at_epoch(epoch: int) -> tuple[list, list]:
    """The events before the first ``epoch`` event of ``epoch``, and the rest."""
    evs = events()
    cut = next(i for i, (e, info) in enumerate(evs) if e == "epoch" and info["epoch"] == epoch)
    return evs[:cut], evs[cut:]


# ---------------------------------------------------------------------------------------- TensorBoard


def _accumulator(path):
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(path), size_guidance={
        ea.TENSORS: 0, ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.IMAGES: 0, ea.AUDIO: 0, ea.COMPRESSED_HISTOGRAMS: 0})
    acc.Reload()
    return acc


def _hparams_data(acc, tag):
    from tensorboard.plugins.hparams import plugin_data_pb2

    return plugin_data_pb2.HParamsPluginData.FromString(acc.PluginTagToContent("hparams")[tag])


def _value(v):
    kind = v.WhichOneof("kind")
    return {"number_value": v.number_value, "string_value": v.string_value, "bool_value": v.bool_value}[kind]


def check_tensorboard(log_dir) -> None:
    import tensorflow as tf
    from tensorboard.plugins.hparams import api_pb2

    assert sorted(p.name for p in log_dir.iterdir() if p.is_dir()) == ["m0", "m1", "m2"]
    for m in ("m0", "m1"):
        acc = _accumulator(log_dir / m)
        for name in metrics(m, 1):
            got = [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(name)]
            assert [s for s, _ in got] == list(range(1, EPOCHS + 1)), (m, name)
            for step, value in got:
                assert value == pytest.approx(metrics(m, step)[name], rel=1e-6), (m, name, step)
    for m in ("m0", "m1", "m2"):
        acc = _accumulator(log_dir / m)
        start = _hparams_data(acc, "_hparams_/session_start_info").session_start_info
        assert start.group_name == m
        assert {k: _value(v) for k, v in start.hparams.items()} == pytest.approx(PARAMS[m])
        end = _hparams_data(acc, "_hparams_/session_end_info").session_end_info
        assert end.status == {"completed": api_pb2.STATUS_SUCCESS, "stopped": api_pb2.STATUS_SUCCESS,
                              "failed": api_pb2.STATUS_FAILURE}[STATUS[m]]
    failed = _accumulator(log_dir / "m2")
    [text] = failed.Tensors("error")
    assert tf.make_ndarray(text.tensor_proto).item().decode() == ERROR
    assert "train_loss" not in failed.Tags()["tensors"]

    experiment = _hparams_data(_accumulator(log_dir), "_hparams_/experiment").experiment
    assert {h.name for h in experiment.hparam_infos} == set(PARAMS["m0"])
    assert {mi.name.tag for mi in experiment.metric_infos} == set(metrics("m0", 1))


def test_tensorboard_logger_writes_scalars_and_hparams(tmp_path):
    from cerebro.tracking import TensorBoardLogger

    log_dir = tmp_path / "tb"
    logger = TensorBoardLogger(str(log_dir), hparam_names=list(PARAMS["m0"]), metric_names=list(metrics("m0", 1)))
    # The config is written up front when the names are known, so a live TensorBoard has it at once.
    assert list(log_dir.glob("events.out.tfevents.*"))
    for event, info in events():
        logger(event, info)
    logger.close()
    logger.close()  # idempotent
    logger("epoch", {"model_id": "m0", "epoch": 9, "metrics": {"train_loss": 1.0}})  # ignored after close
    check_tensorboard(log_dir)


def test_tensorboard_logger_infers_names_and_resumes_in_the_same_log_dir(tmp_path):
    from cerebro.tracking import TensorBoardLogger

    log_dir = tmp_path / "tb"
    before, after = split_at_epoch(2)
    first = TensorBoardLogger(str(log_dir))
    for event, info in before:
        first(event, info)
    # Flushed after each epoch: readable while the logger is still open.
    acc = _accumulator(log_dir / "m0")
    assert [e.step for e in acc.Tensors("val_loss")] == [1]
    first.close()
    # TensorBoard reads a run's event files in name order, and a name starts with the second it was
    # created in (then host, pid, an in-process counter): a resumed process starts seconds later.
    time.sleep(1.05 - time.time() % 1)
    second = TensorBoardLogger(str(log_dir))  # a resumed experiment: new event files next to the old ones
    for event, info in after:
        second(event, info)
    second.close()
    assert len(list((log_dir / "m0").glob("events.out.tfevents.*"))) >= 2
    check_tensorboard(log_dir)


def test_tensorboard_logger_never_raises_from_an_event(tmp_path, caplog):
    from cerebro.tracking import TensorBoardLogger

    logger = TensorBoardLogger(str(tmp_path / "tb"))
    with caplog.at_level(logging.WARNING, logger="cerebro.tracking"):
        logger("epoch", {"model_id": "m0", "epoch": 1, "metrics": {"train_loss": "not a number"}})
    assert "TensorBoard logging of 'epoch' for 'm0' failed" in caplog.text
    logger("epoch", {"model_id": "m0", "epoch": 1, "metrics": {"train_loss": 0.5}})
    logger.close()
    import tensorflow as tf

    [ev] = _accumulator(tmp_path / "tb" / "m0").Tensors("train_loss")
    assert (ev.step, float(tf.make_ndarray(ev.tensor_proto))) == (1, 0.5)


# ---------------------------------------------------------------------------------------- MLflow


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory):
    # One database for the module: creating MLflow's schema takes seconds, experiments are cheap.
    return "sqlite:///" + str(tmp_path_factory.mktemp("mlflow") / "mlflow.db")


@pytest.fixture(params=["sqlite", "file"])
def tracking_uri(request, sqlite_uri, tmp_path, monkeypatch):
    if request.param == "sqlite":
        return sqlite_uri
    # MLflow 3 refuses the file store unless MLFLOW_ALLOW_FILE_STORE is true: the logger opts in itself.
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    return (tmp_path / "mlruns").as_uri()


def _reader(uri, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # reading a file store back needs the opt-in too
    return MlflowClient(uri)


def check_mlflow(client, experiment_name: str, *, parent_status: str = "FINISHED") -> dict[str, str]:
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 4, [(r.info.run_name, r.data.tags) for r in runs]
    [parent] = parents
    assert parent.info.status == parent_status
    assert parent.info.run_name == experiment_name
    assert parent.data.params == {"search": "GridSearch", "num_epochs": "3"}
    children = {r.data.tags["mlflow.runName"]: r for r in runs if r is not parent}
    assert sorted(children) == ["m0", "m1", "m2"]
    for m, run in children.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["cerebro.model_id"] == m
        assert run.data.params == {k: str(v) for k, v in PARAMS[m].items()}
        assert run.info.status == {"completed": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}[STATUS[m]]
    for m in ("m0", "m1"):
        run_id = children[m].info.run_id
        assert set(children[m].data.metrics) == set(metrics(m, 1))
        for name in metrics(m, 1):
            history = sorted((p.step, p.value) for p in client.get_metric_history(run_id, name))
            assert history == [(e, metrics(m, e)[name]) for e in range(1, EPOCHS + 1)], (m, name)
    assert children["m2"].data.metrics == {}
    assert children["m2"].data.tags["cerebro.error"] == ERROR
    return {m: run.info.run_id for m, run in children.items()}


def test_mlflow_logger_nests_one_run_per_model(tracking_uri, tmp_path, monkeypatch):
    from cerebro.tracking import MLflowLogger

    name = f"exp-{tmp_path.name}"
    state_path = tmp_path / "experiment" / "mlflow.json"
    logger = MLflowLogger(tracking_uri, name, state_path=str(state_path),
                          parent_params={"search": "GridSearch", "num_epochs": 3})
    for event, info in events():
        logger(event, info)
    logger.close()
    logger.close()  # idempotent
    run_ids = check_mlflow(_reader(tracking_uri, monkeypatch), name)
    state = json.loads(state_path.read_text())
    assert state["parent_run_id"] == logger.parent_run_id
    assert state["runs"] == run_ids == logger.run_ids


@pytest.mark.parametrize("interruption", ["crash", "close"])
def test_mlflow_logger_resumes_the_same_runs_from_its_state_file(interruption, sqlite_uri, tmp_path, monkeypatch):
    from cerebro.tracking import MLflowLogger

    name = f"exp-{tmp_path.name}"
    state_path = str(tmp_path / "mlflow.json")
    parent_params = {"search": "GridSearch", "num_epochs": 3}
    before, after = split_at_epoch(3)
    first = MLflowLogger(sqlite_uri, name, state_path=state_path, parent_params=parent_params)
    for event, info in before:
        first(event, info)
    if interruption == "close":  # what fit() does when it is interrupted: end the runs as KILLED
        first.close("KILLED")
        client = _reader(sqlite_uri, monkeypatch)
        assert client.get_run(first.parent_run_id).info.status == "KILLED"
        assert client.get_run(first.run_ids["m0"]).info.status == "KILLED"
    # else: the process died; the runs are left RUNNING

    second = MLflowLogger(sqlite_uri, name, state_path=state_path, parent_params=parent_params)
    assert second.parent_run_id == first.parent_run_id
    assert second.run_ids == first.run_ids
    client = _reader(sqlite_uri, monkeypatch)
    assert client.get_run(second.parent_run_id).info.status == "RUNNING"
    for event, info in after:
        second(event, info)
    second.close()
    run_ids = check_mlflow(client, name)
    assert run_ids == first.run_ids


def test_mlflow_logger_closes_open_child_runs_with_the_given_status(sqlite_uri, tmp_path, monkeypatch):
    from cerebro.tracking import MLflowLogger

    logger = MLflowLogger(sqlite_uri, f"exp-{tmp_path.name}", state_path=str(tmp_path / "s.json"))
    logger("model_added", {"model_id": "a", "params": {"lr": 0.1}})
    logger("model_added", {"model_id": "b", "params": {"lr": 0.2}})
    logger("epoch", {"model_id": "a", "epoch": 1, "metrics": {"train_loss": 1.0, "val_loss": 1.5}})
    logger("model_ended", {"model_id": "b", "status": "completed"})
    logger.close("FAILED")
    client = _reader(sqlite_uri, monkeypatch)
    assert client.get_run(logger.parent_run_id).info.status == "FAILED"
    assert client.get_run(logger.run_ids["a"]).info.status == "FAILED"
    assert client.get_run(logger.run_ids["b"]).info.status == "FINISHED"


def test_mlflow_logger_does_not_touch_the_users_active_run(sqlite_uri, tmp_path, monkeypatch):
    import mlflow

    from cerebro.tracking import MLflowLogger

    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", sqlite_uri)
    with mlflow.start_run(run_name="users-own") as active:
        logger = MLflowLogger(sqlite_uri, f"exp-{tmp_path.name}", state_path=str(tmp_path / "s.json"))
        logger("model_added", {"model_id": "a", "params": {"lr": 0.1}})
        logger("model_ended", {"model_id": "a", "status": "completed"})
        logger.close()
        assert mlflow.active_run().info.run_id == active.info.run_id
    parent = _reader(sqlite_uri, monkeypatch).get_run(logger.run_ids["a"]).data.tags["mlflow.parentRunId"]
    assert parent == logger.parent_run_id != active.info.run_id


def test_mlflow_logger_gives_up_quietly_after_repeated_failures(sqlite_uri, tmp_path, caplog):
    from cerebro.tracking import MLflowLogger

    logger = MLflowLogger(sqlite_uri, f"exp-{tmp_path.name}", state_path=str(tmp_path / "s.json"))
    bad = {"model_id": "a", "epoch": 1, "metrics": {"train_loss": "not a number"}}
    with caplog.at_level(logging.WARNING, logger="cerebro.tracking"):
        for _ in range(4):
            logger("epoch", bad)  # never raises into the engine loop
    assert caplog.text.count("MLflow logging of 'epoch' for 'a' failed") == 3
    assert "no more MLflow logging in this experiment" in caplog.text
    logger.close()


def test_require_mlflow_names_the_extra_when_mlflow_is_missing(monkeypatch, tmp_path):
    from cerebro.tracking import MLflowLogger, require_mlflow

    require_mlflow()  # installed here: no error
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(CerebroError, match=r"pip install 'cerebro-mop\[mlflow\]'"):
        require_mlflow()
    with pytest.raises(CerebroError, match="pip install"):
        MLflowLogger("sqlite:///" + str(tmp_path / "x.db"), "x", state_path=str(tmp_path / "s.json"))
    assert not (tmp_path / "x.db").exists()
