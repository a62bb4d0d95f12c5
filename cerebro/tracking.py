"""Experiment tracking: engine listeners that mirror a model selection into TensorBoard and MLflow.

Both loggers are *listeners*: the engine calls ``logger(event, info)`` from its single loop,
never concurrently, so they hold no locks. The events they use:

- ``"model_added"``  ``{"model_id", "params"}``: a configuration was created.
- ``"epoch"``        ``{"model_id", "epoch" (from 1), "metrics" ({"train_<m>"|"val_<m>": float})}``.
- ``"model_failed"`` ``{"model_id", "params", "error" (traceback text)}``; it may come without a
  ``"model_added"`` first (``estimator_gen_fn`` raised).
- ``"model_ended"``  ``{"model_id", "status": "completed" | "stopped" | "failed"}``.

Every other event is ignored. A listener call never raises: tracking is a side channel, so a
failure to write is logged (with its traceback) and training goes on. Constructors do raise
(a bad URI or a missing package is worth stopping for before any work starts).

Heavy libraries are imported lazily: TensorFlow and TensorBoard inside :class:`TensorBoardLogger`,
MLflow inside :class:`MLflowLogger` (an optional extra: ``pip install 'cerebro-mop[mlflow]'``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import urlparse

from .errors import CerebroError

log = logging.getLogger(__name__)

__all__ = ["TensorBoardLogger", "MLflowLogger", "require_mlflow"]

_MLFLOW_MISSING = "mlflow_tracking_uri needs mlflow: pip install 'cerebro-mop[mlflow]'"


def _scalar(value: Any) -> bool | int | float | str:
    """A hyperparameter value as a Python scalar TensorBoard accepts (numpy scalars unwrapped, the rest as text)."""
    import numpy as np

    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _merge(names: list[str], more: Sequence[str]) -> None:
    for name in more:
        if name not in names:
            names.append(name)


# ---------------------------------------------------------------------------------------- TensorBoard


class TensorBoardLogger:
    """One TensorBoard run directory per model under ``log_dir`` (``log_dir/<model_id>``).

    Per run: every ``train_*``/``val_*`` metric of an ``"epoch"`` event as a scalar with the same
    tag at ``step = epoch`` (flushed after each epoch, so a live TensorBoard sees it), the model's
    hyperparameters through the hparams plugin (its session-start summary, ``trial_id`` = model id),
    a session-end status when the model ends (completed or stopped early: success, failed:
    failure; TensorBoard has no "stopped") and, for a failed model, its traceback as a text summary tagged ``error``.

    The hparams *experiment config* (which hyperparameters and metrics the HParams dashboard
    shows) is written once, into ``log_dir`` itself: at construction when both ``hparam_names``
    and ``metric_names`` are given, otherwise at the first ``"epoch"`` event, with the given names
    followed by every parameter and metric name seen so far (or at :meth:`close` if no epoch ever
    came). TensorBoard keeps the first config of a run directory, so a model whose parameters only
    appear later still gets its session summary but no column of its own.

    Resuming: a second logger on the same ``log_dir`` (a new process, or after :meth:`close`) adds
    new event files next to the old ones; TensorBoard reads them in order. A model's writer is
    closed when it ends, so a long search does not keep one open file per model.

    Called from the engine loop only; :meth:`close` flushes and closes every writer and is
    idempotent; events after it are ignored.
    """

    def __init__(self, log_dir: str, hparam_names: Sequence[str] = (), metric_names: Sequence[str] = ()) -> None:
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hp

        self._tf = tf
        self._hp = hp
        self.log_dir = os.path.abspath(os.fspath(log_dir))
        os.makedirs(self.log_dir, exist_ok=True)
        self._hparam_names: list[str] = list(hparam_names)
        self._metric_names: list[str] = list(metric_names)
        self._writers: dict[str, Any] = {}
        self._hparams_written: set[str] = set()
        self._config_written = False
        self._closed = False
        if self._hparam_names and self._metric_names:
            self._write_config()

    # -- listener

    def __call__(self, event: str, info: Mapping[str, Any]) -> None:
        """Record one engine event (see the module docstring); never raises, ignores unknown events."""
        if self._closed:
            log.debug("TensorBoardLogger is closed; ignoring %r", event)
            return
        try:
            if event == "model_added":
                self._write_hparams(info["model_id"], info.get("params") or {})
            elif event == "epoch":
                self._on_epoch(info["model_id"], int(info["epoch"]), info.get("metrics") or {})
            elif event == "model_failed":
                self._on_failed(info["model_id"], info.get("params") or {}, str(info.get("error") or ""))
            elif event == "model_ended":
                self._on_ended(info["model_id"], str(info.get("status")))
        except Exception:  # tracking must not stop training
            log.warning("TensorBoard logging of %r for %r failed", event, info.get("model_id"), exc_info=True)

    def close(self, status: str = "FINISHED") -> None:
        """Write the hparams config if it is still due, flush and close every writer. Idempotent.

        ``status`` (the experiment's end, as for :meth:`MLflowLogger.close`) changes nothing here."""
        if self._closed:
            return
        try:
            if not self._config_written and (self._hparam_names or self._metric_names):
                self._write_config()
        except Exception:
            log.warning("writing the TensorBoard hparams config failed", exc_info=True)
        finally:
            self._closed = True
            for model_id in list(self._writers):
                self._close_writer(model_id)

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals

    def _writer(self, model_id: str):
        writer = self._writers.get(model_id)
        if writer is None:
            writer = self._tf.summary.create_file_writer(os.path.join(self.log_dir, model_id))
            self._writers[model_id] = writer
        return writer

    def _close_writer(self, model_id: str) -> None:
        writer = self._writers.pop(model_id, None)
        if writer is not None:
            try:
                writer.flush()
                writer.close()
            except Exception:
                log.warning("closing the TensorBoard writer of %r failed", model_id, exc_info=True)

    def _write_config(self) -> None:
        hp = self._hp
        writer = self._tf.summary.create_file_writer(self.log_dir)
        try:
            with writer.as_default():
                hp.hparams_config(
                    hparams=[hp.HParam(name) for name in self._hparam_names],
                    metrics=[hp.Metric(name) for name in self._metric_names],
                )
            writer.flush()
        finally:
            writer.close()
        self._config_written = True

    def _write_hparams(self, model_id: str, params: Mapping[str, Any]) -> None:
        _merge(self._hparam_names, list(params))
        if model_id in self._hparams_written:
            return
        with self._writer(model_id).as_default():
            self._hp.hparams({k: _scalar(v) for k, v in params.items()}, trial_id=model_id)
        self._writers[model_id].flush()
        self._hparams_written.add(model_id)

    def _on_epoch(self, model_id: str, epoch: int, metrics: Mapping[str, Any]) -> None:
        _merge(self._metric_names, list(metrics))
        if not self._config_written:
            self._write_config()
        writer = self._writer(model_id)
        tf = self._tf
        with writer.as_default(step=epoch):
            for name, value in metrics.items():
                tf.summary.scalar(name, float(value), step=epoch)
        writer.flush()

    def _on_failed(self, model_id: str, params: Mapping[str, Any], error: str) -> None:
        self._write_hparams(model_id, params)
        writer = self._writer(model_id)
        with writer.as_default(step=0):
            self._tf.summary.text("error", error, step=0)
        writer.flush()

    def _on_ended(self, model_id: str, status: str) -> None:
        from tensorboard.plugins.hparams import api_pb2, summary as hp_summary

        # TensorBoard has no "stopped" status: a model the search stopped early ended normally.
        code = {"completed": api_pb2.STATUS_SUCCESS, "stopped": api_pb2.STATUS_SUCCESS,
                "failed": api_pb2.STATUS_FAILURE}.get(status, api_pb2.STATUS_UNKNOWN)
        writer = self._writer(model_id)
        with writer.as_default(step=0):
            self._tf.summary.experimental.write_raw_pb(hp_summary.session_end_pb(code).SerializeToString(), step=0)
        self._close_writer(model_id)


# ---------------------------------------------------------------------------------------- MLflow


def require_mlflow() -> None:
    """Raise :class:`CerebroError` naming the extra to install when ``mlflow`` cannot be imported.

    ``fit()`` calls it before any work when ``mlflow_tracking_uri`` is set.
    """
    try:
        import mlflow  # noqa: F401
        from mlflow.tracking import MlflowClient  # noqa: F401
    except ImportError as exc:
        raise CerebroError(_MLFLOW_MISSING) from exc


def _is_file_store(uri: str) -> bool:
    return urlparse(uri).scheme in ("", "file")


@contextlib.contextmanager
def _allow_file_store(enabled: bool) -> Iterator[None]:
    """Opt in to MLflow 3's file store (``MLFLOW_ALLOW_FILE_STORE``) for the duration of our own calls.

    MLflow 3 (3.17 when written) refuses ``file://`` tracking URIs unless that variable is true.
    A user who passes one asked for the file store, so we set it, unless the user set the variable,
    and put the environment back afterwards so that nothing else in the process changes behaviour.
    """
    if not enabled or "MLFLOW_ALLOW_FILE_STORE" in os.environ:
        yield
        return
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


_TAG_LIMIT = 7900  # MLflow caps tag values at 8000 characters
_STATUS = {"completed": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}
_MAX_CONSECUTIVE_FAILURES = 3


class MLflowLogger:
    """One MLflow run per configuration, nested under a parent run for the whole experiment.

    - The parent run (``mlflow.runName`` = ``experiment_name``, tag ``cerebro.role=experiment``)
      is created at construction in the MLflow experiment named ``experiment_name`` (created if
      missing), with ``parent_params`` as its params.
    - A child run per model (tags ``mlflow.parentRunId``, ``mlflow.runName`` = model id,
      ``cerebro.model_id``) is created at its ``"model_added"`` (or first event), with the model's
      params (as text, as MLflow stores them); each ``"epoch"`` logs every metric with
      ``step = epoch`` in one ``log_batch``; ``"model_failed"`` tags ``cerebro.error`` with the
      traceback (its last 7,900 characters: MLflow caps tags at 8,000); ``"model_ended"``
      terminates the run: completed -> ``FINISHED``, stopped early -> ``KILLED``, failed -> ``FAILED``.
    - Only an explicit :class:`mlflow.tracking.MlflowClient` is used, never the fluent API, so a
      user's own active run is untouched.
    - ``state_path`` is a local JSON file (in the experiment directory) holding the parent run id
      and ``model_id -> run_id``; a new logger on an existing ``state_path`` (resume after a
      crash) reopens those runs (status back to ``RUNNING``) and appends to them instead of
      creating new ones. It is written atomically whenever a run is created or ends.
    - Tracking URIs: ``sqlite:///path/mlflow.db`` (MLflow's recommended local store),
      ``http(s)://`` servers, and ``file:///path/mlruns`` or a bare path, which MLflow 3
      deprecates and refuses unless ``MLFLOW_ALLOW_FILE_STORE=true``: the logger sets that
      variable around its own calls when the user has not set it (reading such a store back with
      MLflow needs the same variable).
    - Listener calls never raise; after three consecutive failures (e.g. the server is gone, and
      each call may retry for a while) the logger stops sending for the rest of the experiment
      and says so in the log. Artifacts are not written (the default artifact root of a local
      store is ``./mlruns`` in the current directory).

    :meth:`close` ends the child runs still open with its ``status`` and then the parent run; it is
    idempotent, and events after it are ignored.
    """

    def __init__(self, tracking_uri: str, experiment_name: str, *, state_path: str,
                 parent_params: Mapping[str, Any] = {}) -> None:
        require_mlflow()
        from mlflow.tracking import MlflowClient

        self.tracking_uri = str(tracking_uri)
        self.experiment_name = experiment_name
        self.state_path = os.fspath(state_path)
        self._file_store = _is_file_store(self.tracking_uri)
        if self._file_store and "MLFLOW_ALLOW_FILE_STORE" not in os.environ:
            log.warning("MLflow 3 deprecates the file store (%s); cerebro opts in for its own calls. "
                        "Prefer a database URI such as sqlite:///path/to/mlflow.db", self.tracking_uri)
        self._closed = False
        self._failures = 0
        self._disabled = False
        self._reopened: set[str] = set()
        with self._mlflow():
            self._client = MlflowClient(self.tracking_uri)
            state = self._load_state()
            if state is not None:
                self._state = state
                self._reopen(state["parent_run_id"])
                log.info("MLflow: resuming parent run %s (%d model runs) from %s",
                         state["parent_run_id"], len(state["runs"]), self.state_path)
            else:
                experiment_id = self._experiment_id()
                parent = self._client.create_run(
                    experiment_id,
                    tags={"mlflow.runName": experiment_name, "cerebro.role": "experiment",
                          "cerebro.experiment": experiment_name},
                )
                self._state = {"version": 1, "tracking_uri": self.tracking_uri, "experiment_id": experiment_id,
                               "parent_run_id": parent.info.run_id, "runs": {}, "ended": {}}
                self._log_params(parent.info.run_id, parent_params)
                self._save_state()
                log.info("MLflow: experiment %r, parent run %s", experiment_name, parent.info.run_id)

    @property
    def parent_run_id(self) -> str:
        return self._state["parent_run_id"]

    @property
    def run_ids(self) -> dict[str, str]:
        """``model_id -> run_id`` of every child run so far (a copy)."""
        return dict(self._state["runs"])

    # -- listener

    def __call__(self, event: str, info: Mapping[str, Any]) -> None:
        """Record one engine event (see the class docstring); never raises, ignores unknown events."""
        if event not in ("model_added", "epoch", "model_failed", "model_ended"):
            return
        if self._closed or self._disabled:
            log.debug("MLflowLogger is %s; ignoring %r", "closed" if self._closed else "disabled", event)
            return
        try:
            with self._mlflow():
                self._dispatch(event, info)
            self._failures = 0
        except Exception:  # tracking must not stop training
            self._failures += 1
            log.warning("MLflow logging of %r for %r failed", event, info.get("model_id"), exc_info=True)
            if self._failures >= _MAX_CONSECUTIVE_FAILURES:
                self._disabled = True
                log.error("MLflow logging failed %d times in a row; no more MLflow logging in this experiment",
                          self._failures)

    def close(self, status: str = "FINISHED") -> None:
        """End the child runs still open with ``status``, then the parent run. Idempotent.

        ``status`` is an MLflow run status: ``"FINISHED"``, ``"FAILED"`` or ``"KILLED"`` (e.g. the
        search was interrupted). Child runs ended this way stay reopenable by a resumed logger.
        """
        if self._closed:
            return
        self._closed = True
        try:
            with self._mlflow():
                for model_id, run_id in self._state["runs"].items():
                    if model_id not in self._state["ended"]:
                        self._client.set_terminated(run_id, status)
                self._client.set_terminated(self.parent_run_id, status)
        except Exception:
            log.warning("MLflow: ending the runs with %s failed", status, exc_info=True)

    def __enter__(self) -> MLflowLogger:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.close("FINISHED" if exc_type is None else "FAILED")

    # -- events

    def _dispatch(self, event: str, info: Mapping[str, Any]) -> None:
        model_id = str(info["model_id"])
        if event == "model_added":
            self._child(model_id, info.get("params") or {})
        elif event == "epoch":
            from mlflow.entities import Metric

            run_id = self._child(model_id)
            now = int(time.time() * 1000)
            step = int(info["epoch"])
            metrics = [Metric(key, float(value), now, step) for key, value in (info.get("metrics") or {}).items()]
            if metrics:
                self._client.log_batch(run_id, metrics=metrics)
        elif event == "model_failed":
            run_id = self._child(model_id, info.get("params") or {})
            error = str(info.get("error") or "")
            if len(error) > _TAG_LIMIT:
                error = "...\n" + error[-(_TAG_LIMIT - 4):]
            self._client.set_tag(run_id, "cerebro.error", error)
        elif event == "model_ended":
            run_id = self._child(model_id)
            status = str(info.get("status"))
            self._client.set_terminated(run_id, _STATUS.get(status, "FINISHED"))
            self._state["ended"][model_id] = status
            self._save_state()

    def _child(self, model_id: str, params: Mapping[str, Any] | None = None) -> str:
        """The run of ``model_id``: created on first sight, reopened once per logger if resumed."""
        run_id = self._state["runs"].get(model_id)
        if run_id is None:
            run = self._client.create_run(
                self._state["experiment_id"],
                tags={"mlflow.parentRunId": self.parent_run_id, "mlflow.runName": model_id,
                      "cerebro.model_id": model_id},
            )
            run_id = run.info.run_id
            self._state["runs"][model_id] = run_id
            self._state["ended"].pop(model_id, None)
            self._reopened.add(model_id)
            self._save_state()
            if params:
                self._log_params(run_id, params)
            return run_id
        if model_id not in self._reopened:
            self._reopened.add(model_id)
            if model_id not in self._state["ended"]:
                self._reopen(run_id)
        if params:
            self._log_params(run_id, params)
        return run_id

    # -- MLflow helpers

    def _mlflow(self):
        return _allow_file_store(self._file_store)

    def _experiment_id(self) -> str:
        experiment = self._client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            return self._client.create_experiment(self.experiment_name)
        if experiment.lifecycle_stage == "deleted":
            raise CerebroError(
                f"MLflow experiment {self.experiment_name!r} at {self.tracking_uri} is deleted; restore it "
                "(MlflowClient.restore_experiment) or choose another experiment name")
        return experiment.experiment_id

    def _reopen(self, run_id: str) -> None:
        run = self._client.get_run(run_id)
        if run.info.status != "RUNNING":
            self._client.update_run(run_id, status="RUNNING")

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Log the params the run does not have yet (MLflow params are write-once)."""
        from mlflow.entities import Param

        if not params:
            return
        have = self._client.get_run(run_id).data.params
        todo = [Param(str(k), str(v)) for k, v in params.items() if str(k) not in have]
        for start in range(0, len(todo), 100):  # MLflow takes at most 100 params per batch
            self._client.log_batch(run_id, params=todo[start:start + 100])

    # -- state file

    def _load_state(self) -> dict[str, Any] | None:
        if not os.path.exists(self.state_path):
            return None
        with open(self.state_path, encoding="utf-8") as f:
            state = json.load(f)
        if state.get("tracking_uri") != self.tracking_uri:
            log.warning("MLflow state %s belongs to %s, not %s: starting new runs", self.state_path,
                        state.get("tracking_uri"), self.tracking_uri)
            return None
        try:
            self._client.get_run(state["parent_run_id"])
        except Exception:
            log.warning("MLflow parent run %s of %s no longer exists: starting new runs",
                        state.get("parent_run_id"), self.state_path, exc_info=True)
            return None
        state.setdefault("runs", {})
        state.setdefault("ended", {})
        return state

    def _save_state(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.state_path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".mlflow-state-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._state, f, indent=1, sort_keys=True)
            os.replace(tmp, self.state_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

