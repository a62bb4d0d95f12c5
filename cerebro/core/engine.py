"""The one loop that owns blocking: backend <-> scheduler <-> driver <-> journal.

The engine submits the scheduler's commands to the backend, waits for any completion, feeds
what happened back to the scheduler and the search driver, and records every visit, epoch and
failure.  Nothing else in cerebro waits.  It imports no TensorFlow, Spark or file-system code:
model creation and checkpoint naming are injected by the caller.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from ..backends.base import Backend, TaskDone, TaskFailed, WorkerDied, WorkerReady, WorkerSetup
from ..drivers.base import Continue, Exploit, Pause, SearchDriver, Stop
from ..errors import CerebroError
from .events import (
    AbandonModel, EndEpoch, EvaluateSubEpoch, ModelAdded, ModelContinued, ModelRestored, ModelStopped,
    SubEpochFailed, SubEpochFinished, TrainSubEpoch, WorkerJoined, WorkerLost,
)
from .metrics import better
from .mop import MOPScheduler
from .seeds import sub_epoch_seed

log = logging.getLogger(__name__)


class ModelCreationFailed(Exception):
    """Raised by ``create_model`` when a configuration cannot be built; carries the traceback text."""

    def __init__(self, traceback_text: str) -> None:
        super().__init__(traceback_text)
        self.traceback_text = traceback_text


@dataclass(frozen=True)
class ModelInit:
    """What ``create_model`` returns: where the model's spec and initial state were stored."""

    spec_path: str
    checkpoint: str
    checksum: str | None = None
    task_extra: dict[str, Any] = field(default_factory=dict)   # merged into every task of the model


@dataclass
class ModelRecord:
    """The engine's bookkeeping for one model (configuration)."""

    model_id: str
    index: int
    params: dict[str, Any]
    spec_path: str
    checkpoint: str
    status: str = "running"            # running | paused | completed | stopped | failed
    epochs_done: int = 0
    hops: int = 0                      # committed training visits in the current epoch
    error: str | None = None
    checksum: str | None = None        # sha256 of the latest committed checkpoint
    spec_version: int = 0              # bumped when an exploit gives the model new parameters
    epoch_checkpoint: str = ""         # the state at its last epoch boundary (what PBT copies)
    task_extra: dict[str, Any] = field(default_factory=dict)
    epoch_checksum: str | None = None
    sums: dict[tuple[int, str], dict[str, float]] = field(default_factory=dict)


class Listener(Protocol):
    def __call__(self, event: str, info: Mapping[str, Any]) -> None: ...


@dataclass
class EngineOutcome:
    models: dict[str, ModelRecord]
    history: list[dict[str, Any]]
    visits: list[dict[str, Any]]
    evaluations: list[dict[str, Any]]
    failures: dict[str, str]
    started: float
    finished: float
    best_checkpoint: dict[str, Any] | None = None


def _weighted(sums: Mapping[str, float]) -> dict[str, float]:
    rows = sums.get("rows", 0.0)
    return {k: v / rows for k, v in sums.items() if k != "rows"} if rows else {}


class Engine:
    """Runs one model selection to completion.  Not reusable: call :meth:`run` once.

    Every committed fact (model created, visit committed or failed, epoch evaluated and
    decided, driver state, best checkpoint) goes to ``journal`` before the engine acts on it,
    so that :meth:`restore` can rebuild the whole state after the driver process died.
    Checkpoint retention: the latest committed checkpoint of every model plus the
    checkpoint of the best (model, epoch) by ``metric``/``mode`` so far; everything else is
    deleted as soon as it is superseded and journaled.
    """

    def __init__(
        self,
        *,
        backend: Backend,
        setup: WorkerSetup,
        scheduler: MOPScheduler,
        driver: SearchDriver,
        create_model: Callable[[str, int, dict[str, Any]], ModelInit],
        checkpoint_path: Callable[[str, int, int, int], str],
        delete: Callable[[str], None] | None = None,
        exploit: Callable[["ModelRecord", "ModelRecord", dict[str, Any]], ModelInit] | None = None,
        seed: int = 0,
        listener: Listener | None = None,
        journal: Callable[[dict[str, Any]], None] | None = None,
        metric: str | None = None,
        mode: str = "min",
        max_consecutive_failures: int | None = None,
        max_worker_restarts: int = 3,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 1.0,
    ) -> None:
        self.backend = backend
        self.setup = setup
        self.scheduler = scheduler
        self.driver = driver
        self.create_model = create_model
        self.checkpoint_path = checkpoint_path
        self.delete = delete
        self.exploit = exploit
        self.seed = seed
        self.listener = listener
        self.journal = journal
        self.metric = metric
        self.mode = mode
        self.max_consecutive_failures = max_consecutive_failures
        self.max_worker_restarts = max_worker_restarts
        self.clock = clock
        self.poll_interval = poll_interval
        self.num_workers = backend.num_workers

        self.models: dict[str, ModelRecord] = {}
        self.history: list[dict[str, Any]] = []
        self.visits: list[dict[str, Any]] = []
        self.evaluations: list[dict[str, Any]] = []
        self.failures: dict[str, str] = {}
        self.best: dict[str, Any] | None = None   # {"model_id", "epoch", "score", "checkpoint", "checksum"}
        self._tasks: dict[int, tuple[TrainSubEpoch | EvaluateSubEpoch, float]] = {}
        self._next_task = 0
        self._alive: set[int] = set()
        self._starting: dict[int, float] = {}
        self._deaths: dict[int, int] = {}
        self._exhausted = False        # the driver will never suggest again
        self._next_index = 0
        self._unbuilt: list[tuple[int, dict[str, Any]]] = []   # suggested, journaled, not built yet
        self._consecutive_failures = 0

    # ------------------------------------------------------------------ public

    def run(self) -> EngineOutcome:
        """Start the workers, train until the driver and the scheduler are done, return the record.

        Blocks.  Raises :class:`CerebroError` when workers cannot start or keep dying, or when
        ``max_consecutive_failures`` configurations failed in a row.
        """
        started = self.clock()
        # Models are created first: a configuration problem that concerns every model (say an
        # evaluation metric they do not compute) is refused before any worker starts.
        self._fill()
        self.backend.start(self.setup)
        try:
            now = self.clock()
            self._starting = {w: now for w in range(self.num_workers)}
            while not self._done():
                events = self.backend.wait(self.poll_interval)
                for ev in events:
                    self._on_backend_event(ev)
                self._check_start_timeouts()
        finally:
            self.backend.release()
        return EngineOutcome(
            self.models, self.history, self.visits, self.evaluations, self.failures, started, self.clock(),
            self.best,
        )

    def restore(self, records: list[dict[str, Any]]) -> None:
        """Rebuild models, records, driver and scheduler state from a journal; call before :meth:`run`.

        Visits that were in flight when the journal ends were never committed: the scheduler
        wants them again, so at most one sub-epoch per model is redone.
        """
        trained: dict[str, dict[int, list[int]]] = {}
        evaluated: dict[str, dict[int, list[int]]] = {}
        unbuilt: dict[int, dict[str, Any]] = {}
        driver_state = None
        announced_since_state: list[dict[str, Any]] = []
        for r in records:
            t = r.get("type")
            if "state" in r:
                announced_since_state = []
            elif t in ("model_added", "creation_failed"):
                announced_since_state.append(r)
            if t in ("model_added", "creation_failed"):
                unbuilt.pop(r["index"], None)
            if t == "model_added":
                self.models[r["model_id"]] = ModelRecord(
                    r["model_id"], r["index"], dict(r["params"]), r["spec"], r["checkpoint"], checksum=r.get("checksum"),
                    task_extra=dict(r.get("extra", {})))
                self._next_index = max(self._next_index, r["index"] + 1)
            elif t == "creation_failed":
                self.models[r["model_id"]] = ModelRecord(
                    r["model_id"], r["index"], dict(r["params"]), "", "", status="failed", error=r["error"])
                self.failures[r["model_id"]] = r["error"]
                self._next_index = max(self._next_index, r["index"] + 1)
            elif t == "visit":
                row = {k: r[k] for k in _VISIT_COLUMNS}
                (self.visits if r["kind"] == "train" else self.evaluations).append(row)
                m = self.models[r["model_id"]]
                if r["status"] == "ok":
                    self._accumulate(m, r["epoch"], r["kind"], r["rows"], r.get("metrics", {}))
                    seen = trained if r["kind"] == "train" else evaluated
                    seen.setdefault(m.model_id, {}).setdefault(r["epoch"], []).append(r["partition"])
                    if r["kind"] == "train":
                        m.checkpoint, m.checksum = r["checkpoint"], r.get("checksum")
                elif m.error is None:
                    m.error = r.get("error")
            elif t == "epoch":
                m = self.models[r["model_id"]]
                m.sums.pop((r["epoch"], "train"), None)
                m.sums.pop((r["epoch"], "eval"), None)
                m.epochs_done = r["epoch"]
                m.status = "paused"
                m.epoch_checkpoint, m.epoch_checksum = r.get("checkpoint", m.checkpoint), r.get("checksum")
                self.history.append({"model_id": m.model_id, "epoch": r["epoch"], **r["metrics"],
                                     "__params": dict(r.get("params", m.params))})
                driver_state = r["state"]
                self._restore_actions(r["actions"])
            elif t == "model_failed":
                m = self.models[r["model_id"]]
                m.status = "failed"
                self.failures[m.model_id] = r["error"]
            elif t == "suggested":
                driver_state = r["state"]
                first = r["first_index"]
                unbuilt.update({first + i: dict(p) for i, p in enumerate(r["configs"])})
                self._next_index = max(self._next_index, first + len(r["configs"]))
            elif t == "driver":
                driver_state = r["state"]
                self._restore_actions(r.get("actions", ()))
            elif t == "best":
                self.best = {k: r[k] for k in ("model_id", "epoch", "score", "checkpoint", "checksum")}
        if driver_state is not None:
            self.driver.set_state(driver_state)
        # Announcements journaled after the driver's last saved state: tell the driver again.
        for r in announced_since_state:
            if r["type"] == "model_added":
                self.driver.on_model_added(r["model_id"], dict(r["params"]))
            else:
                self.driver.on_model_failed(None, dict(r["params"]), r["error"])
        self._unbuilt = sorted(unbuilt.items())
        events = []
        for m in self.models.values():
            if m.status == "failed":
                if m.spec_path:
                    events.append(ModelRestored(m.model_id, m.index, max(m.epochs_done, 1), "failed"))
                continue
            if m.status in ("completed", "stopped"):
                events.append(ModelRestored(m.model_id, m.index, max(m.epochs_done, 1), "ended"))
                continue
            if m.status == "paused":
                events.append(ModelRestored(m.model_id, m.index, m.epochs_done, "awaiting"))
                continue
            epoch = m.epochs_done + 1
            done_train = tuple(trained.get(m.model_id, {}).get(epoch, ()))
            done_eval = tuple(evaluated.get(m.model_id, {}).get(epoch, ()))
            m.hops = len(done_train)
            events.append(ModelRestored(m.model_id, m.index, epoch, "running", done_train, done_eval))
        log.info("restored %d models (%d visits, %d epochs) from the journal", len(self.models), len(self.visits), len(self.history))
        if events:
            self._handle(*events)

    def _restore_actions(self, actions) -> None:
        for a in actions:
            target = self.models[a["model_id"]]
            if a["action"] == "exploit":
                target.params, target.spec_path = dict(a["params"]), a["spec"]
                target.checkpoint, target.checksum = a["checkpoint"], a["checksum"]
                target.epoch_checkpoint, target.epoch_checksum = a["checkpoint"], a["checksum"]
                target.spec_version = a["spec_version"]
            else:
                target.status = a["status"]

    # ------------------------------------------------------------------ driver side

    def _done(self) -> bool:
        if self.scheduler.idle and not self._tasks and (self._exhausted or not self._fill()):
            return True
        paused = [m for m, r in self.models.items() if r.status == "paused"]
        if paused and not self._tasks and not any(r.status == "running" for r in self.models.values()) \
                and (self._exhausted or not self._fill()):
            # Nothing runs, nothing will be proposed, and nobody will ever resume these models.
            raise CerebroError(
                f"the search driver left {len(paused)} model(s) paused ({', '.join(paused[:5])}) with nothing "
                "running and nothing new to propose; a driver must eventually continue or stop every model it pauses"
            )
        return False

    def _driver_changed(self) -> None:
        self._record({"type": "driver", "state": self.driver.get_state()})

    def _driver_reacts(self, decision) -> None:
        """Apply actions a driver returned outside on_epoch_end (e.g. after a failure a rung may
        be complete: promote the paused models); journal them with the driver's state."""
        actions = [] if decision is None else self._normalise(decision, None)
        applied: list[dict[str, Any]] = []
        events = self._apply_actions(actions, None, applied)
        self._record({"type": "driver", "actions": applied, "state": self.driver.get_state()})
        if events:
            self._handle(*events)

    def _fill(self) -> bool:
        """Ask the driver for configurations; create and add them.  True if any model was added.

        The suggestion is journaled (with the driver's new state) before any model is built,
        so a crash halfway through building them loses none and duplicates none on resume.
        """
        if self._unbuilt:
            todo, self._unbuilt = self._unbuilt, []
        else:
            if self._exhausted:
                return False
            active = sum(1 for m in self.models.values() if m.status == "running")
            proposals = self.driver.suggest(active)
            if proposals is None:
                self._exhausted = True
                self._driver_changed()
                return False
            todo = [(self._next_index + i, dict(p)) for i, p in enumerate(proposals)]
            if not todo:
                return False
            self._next_index += len(todo)
            self._record({"type": "suggested", "first_index": todo[0][0], "configs": [p for _, p in todo],
                          "state": self.driver.get_state()})
        added = []
        for index, params in todo:
            model_id = f"model_{index:03d}"
            try:
                init = self.create_model(model_id, index, dict(params))
            except ModelCreationFailed as exc:
                self.failures[model_id] = exc.traceback_text
                self.models[model_id] = ModelRecord(model_id, index, dict(params), "", "", status="failed", error=exc.traceback_text)
                log.warning("configuration %s %s could not be built:\n%s", model_id, dict(params), exc.traceback_text)
                self._record({"type": "creation_failed", "model_id": model_id, "index": index, "params": dict(params),
                              "error": exc.traceback_text})
                self._emit("model_failed", model_id=model_id, params=dict(params), error=exc.traceback_text)
                self._emit("model_ended", model_id=model_id, status="failed")
                self._driver_reacts(self.driver.on_model_failed(None, dict(params), exc.traceback_text))
                self._count_failure(exc.traceback_text)
                continue
            self.models[model_id] = ModelRecord(model_id, index, dict(params), init.spec_path, init.checkpoint,
                                                checksum=init.checksum, task_extra=dict(init.task_extra))
            self.driver.on_model_added(model_id, dict(params))
            self._record({"type": "model_added", "model_id": model_id, "index": index, "params": dict(params),
                          "spec": init.spec_path, "checkpoint": init.checkpoint, "checksum": init.checksum,
                          "extra": dict(init.task_extra)})
            self._emit("model_added", model_id=model_id, params=dict(params))
            added.append(ModelAdded(model_id, index))
        if added:
            self._handle(*added)
        # True when the driver proposed anything, even if none of it could be built: it may
        # propose more (TPE), so the run is not over.
        return bool(todo)

    def _count_failure(self, error: str) -> None:
        self._consecutive_failures += 1
        limit = self.max_consecutive_failures
        if limit is not None and self._consecutive_failures >= limit:
            raise CerebroError(
                f"{self._consecutive_failures} configurations failed in a row (max_consecutive_failures={limit}); "
                f"stopping the experiment. Last failure:\n{error}"
            )

    # ------------------------------------------------------------------ backend side

    def _on_backend_event(self, ev) -> None:
        if isinstance(ev, WorkerReady):
            self._starting.pop(ev.worker, None)
            self._alive.add(ev.worker)
            log.debug("worker %d ready (pid %s)", ev.worker, ev.pid)
            self._emit("worker_ready", worker=ev.worker, pid=ev.pid)
            self._handle(WorkerJoined(ev.worker))
        elif isinstance(ev, TaskDone):
            self._deaths[ev.worker] = 0
            self._on_done(ev)
        elif isinstance(ev, TaskFailed):
            cmd, start = self._tasks.pop(ev.task_id)
            self._record_attempt(cmd, start, "failed", {}, ev.error)
            self._handle(SubEpochFailed(cmd.model_id, cmd.worker, cmd.epoch, cmd.partition, self._kind(cmd), ev.error))
        elif isinstance(ev, WorkerDied):
            self._on_worker_died(ev)

    def _on_worker_died(self, ev: WorkerDied) -> None:
        w = ev.worker
        self._deaths[w] = self._deaths.get(w, 0) + 1
        lost = [tid for tid, (cmd, _) in self._tasks.items() if cmd.worker == w]
        for tid in lost:
            cmd, start = self._tasks.pop(tid)
            self._record_attempt(cmd, start, "failed", {}, f"worker {w} died: {ev.reason}")
        log.warning("worker %d died (%s); restarting it", w, ev.reason.strip().splitlines()[-1] if ev.reason.strip() else "no reason given")
        self._emit("worker_died", worker=w, reason=ev.reason)
        if w in self._alive:
            self._alive.discard(w)
            self._handle(WorkerLost(w, ev.reason))
        if self._deaths[w] > self.max_worker_restarts:
            raise CerebroError(
                f"worker {w} died {self._deaths[w]} times in a row without finishing a task; giving up. Last reason:\n{ev.reason}"
            )
        self.backend.restart(w)
        self._starting[w] = self.clock()

    def _check_start_timeouts(self) -> None:
        now = self.clock()
        for w, since in self._starting.items():
            if now - since > self.backend.start_timeout:
                problem = self.backend.startup_problem()
                raise CerebroError(
                    f"worker {w} did not start within start_timeout={self.backend.start_timeout:g} s "
                    + (f": {problem}" if problem else
                       f"(check the worker logs{' in ' + self.setup.log_dir if self.setup.log_dir else ''})")
                )

    @staticmethod
    def _kind(cmd) -> str:
        return "train" if isinstance(cmd, TrainSubEpoch) else "eval"

    @staticmethod
    def _accumulate(model: ModelRecord, epoch: int, kind: str, rows: float, metrics: Mapping[str, float]) -> None:
        sums = model.sums.setdefault((epoch, kind), {})
        for name, value in metrics.items():
            sums[name] = sums.get(name, 0.0) + float(value) * rows
        sums["rows"] = sums.get("rows", 0.0) + rows

    def _on_done(self, ev: TaskDone) -> None:
        cmd, start = self._tasks.pop(ev.task_id)
        model = self.models[cmd.model_id]
        result = ev.result
        kind = self._kind(cmd)
        self._accumulate(model, cmd.epoch, kind, float(result.get("rows", 0)), result.get("metrics", {}))
        previous = model.checkpoint
        if kind == "train":
            model.checkpoint, model.checksum = result["checkpoint"], result.get("checksum")
            model.hops += 1
        # Journal first: only then is the new checkpoint the committed one, and only then may
        # the superseded one go (a crash in between must never leave the journal pointing at
        # a deleted file).
        self._record_attempt(cmd, start, "ok", result, None)
        if kind == "train":
            self._discard_checkpoint(previous)
        self._handle(SubEpochFinished(cmd.model_id, cmd.worker, cmd.epoch, cmd.partition, kind))

    def _discard_checkpoint(self, path: str) -> None:
        if self.delete is None or not path:
            return
        if self.best is not None and self.best["checkpoint"] == path:
            return  # the best (model, epoch) so far keeps its checkpoint
        if any(m.checkpoint == path or m.epoch_checkpoint == path for m in self.models.values()):
            return
        self.delete(path)

    def _record_attempt(self, cmd, start: float, status: str, result: Mapping[str, Any], error: str | None) -> None:
        end = self.clock()
        timing = result.get("timing", {})
        row = {
            "model_id": cmd.model_id, "epoch": cmd.epoch, "partition": cmd.partition, "worker": cmd.worker,
            "start": start, "end": end, "rows": int(result.get("rows", 0)), "status": status,
            "attempt": cmd.attempt, "load_s": timing.get("load", 0.0), "compute_s": timing.get("compute", 0.0),
            "save_s": timing.get("save", 0.0),
        }
        if isinstance(cmd, TrainSubEpoch):
            self.visits.append(row)
        else:
            self.evaluations.append(row)
        model = self.models[cmd.model_id]
        record = {"type": "visit", "kind": self._kind(cmd), **row, "error": error,
                  "metrics": dict(result.get("metrics", {}))}
        if status == "ok" and isinstance(cmd, TrainSubEpoch):
            record["checkpoint"], record["checksum"] = model.checkpoint, model.checksum
        self._record(record)
        if status == "failed":
            if isinstance(cmd, TrainSubEpoch) and self.delete is not None:
                # A failed attempt may have written its output before dying: never leave it behind.
                self.delete(self.checkpoint_path(cmd.model_id, cmd.epoch, model.hops + 1, cmd.attempt))
            if model.error is None:
                # The first failure of a model is shown at once, not hidden behind retries.
                log.warning("%s of %s (epoch %d, partition %d, attempt %d) failed:\n%s",
                            self._kind(cmd), cmd.model_id, cmd.epoch, cmd.partition, cmd.attempt + 1, error)
            model.error = model.error or error
        self._emit("visit", kind=self._kind(cmd), **row)

    # ------------------------------------------------------------------ scheduler side

    def _handle(self, *events) -> None:
        pending = deque(self.scheduler.handle(*events))
        while pending:
            cmd = pending.popleft()
            if isinstance(cmd, (TrainSubEpoch, EvaluateSubEpoch)):
                self._submit(cmd)
            elif isinstance(cmd, EndEpoch):
                before = {m: r.status for m, r in self.models.items()}
                follow = self._end_epoch(cmd)
                if follow:
                    pending.extend(self.scheduler.handle(*follow))
                for mid, rec in self.models.items():
                    if rec.status in ("completed", "stopped") and before.get(mid) != rec.status:
                        self._emit("model_ended", model_id=mid, status=rec.status)
                self._fill()
            elif isinstance(cmd, AbandonModel):
                self._abandon(cmd)
                self._fill()
            else:  # pragma: no cover - the scheduler emits nothing else
                raise CerebroError(f"unknown scheduler command {cmd!r}")

    def _submit(self, cmd: TrainSubEpoch | EvaluateSubEpoch) -> None:
        model = self.models[cmd.model_id]
        task: dict[str, Any] = {
            **model.task_extra,
            "kind": self._kind(cmd), "model_id": cmd.model_id, "spec": model.spec_path,
            "checkpoint": model.checkpoint, "checksum": model.checksum, "epoch": cmd.epoch, "partition": cmd.partition,
        }
        if isinstance(cmd, TrainSubEpoch):
            task["out"] = self.checkpoint_path(cmd.model_id, cmd.epoch, model.hops + 1, cmd.attempt)
            task["seed"] = sub_epoch_seed(self.seed, model.index, cmd.epoch, cmd.partition)
        task_id = self._next_task
        self._next_task += 1
        self._tasks[task_id] = (cmd, self.clock())
        self.backend.submit(cmd.worker, task_id, task)

    def _end_epoch(self, cmd: EndEpoch) -> list:
        """Aggregate the epoch, ask the driver, apply its actions; return scheduler events."""
        model = self.models[cmd.model_id]
        train = _weighted(model.sums.pop((cmd.epoch, "train"), {}))
        val = _weighted(model.sums.pop((cmd.epoch, "eval"), {}))
        metrics = {f"train_{k}": v for k, v in train.items()}
        metrics.update({f"val_{k}": v for k, v in val.items()})
        model.epochs_done = cmd.epoch
        model.hops = 0
        previous_boundary = model.epoch_checkpoint
        model.epoch_checkpoint, model.epoch_checksum = model.checkpoint, model.checksum
        self._consecutive_failures = 0
        self.history.append({"model_id": model.model_id, "epoch": cmd.epoch, **metrics, "__params": dict(model.params)})
        self._update_best(model, cmd.epoch, metrics)
        decision = self.driver.on_epoch_end(model.model_id, cmd.epoch, metrics)
        actions = self._normalise(decision, model.model_id)
        params_at_epoch = dict(model.params)
        model.status = "paused"  # unless an action says otherwise
        applied: list[dict[str, Any]] = []
        if cmd.final:
            model.status = "stopped"
            applied.append({"model_id": model.model_id, "action": "stop", "status": "stopped", "reason": "stop requested"})
            actions = [a for a in actions if self._target(a) != model.model_id]
        events = self._apply_actions(actions, model.model_id, applied)
        # One record holds the epoch, every action taken on it and the driver's new state: a
        # crash before it is written makes resume evaluate and decide this epoch again.
        self._record({"type": "epoch", "model_id": model.model_id, "epoch": cmd.epoch, "metrics": metrics,
                      "params": params_at_epoch, "final": cmd.final, "actions": applied,
                      "checkpoint": model.epoch_checkpoint, "checksum": model.epoch_checksum,
                      "state": self.driver.get_state()})
        if previous_boundary != model.epoch_checkpoint:
            self._discard_checkpoint(previous_boundary)
        self._emit("epoch", model_id=model.model_id, epoch=cmd.epoch, metrics=metrics)
        return events

    @staticmethod
    def _target(action) -> str | None:
        return action.target if isinstance(action, Exploit) else action.model_id

    def _normalise(self, decision, reporting: str | None) -> list:
        actions = list(decision) if isinstance(decision, (list, tuple)) else [decision]
        out = []
        for a in actions:
            if isinstance(a, (Continue, Pause)) and a.model_id is None:
                a = type(a)(reporting)
            elif isinstance(a, Stop) and a.model_id is None:
                a = Stop(a.reason, reporting)
            elif not isinstance(a, (Continue, Pause, Stop, Exploit)):
                raise CerebroError(f"search driver returned {a!r}; expected Continue, Stop, Pause or Exploit actions")
            target = self._target(a)
            if target is None or target not in self.models:
                raise CerebroError(f"search driver action {a!r} names an unknown model")
            out.append(a)
        return out

    def _apply_actions(self, actions: list, reporting: str | None, applied: list[dict[str, Any]]) -> list:
        """Apply the driver's actions; describe each in ``applied``; return scheduler events."""
        events: list = []
        for a in actions:
            target = self.models[self._target(a)]
            if target.model_id != reporting and target.status != "paused":
                raise CerebroError(
                    f"search driver action {a!r}: {target.model_id} is {target.status}; only the model whose epoch "
                    "ended or a paused model can be continued, stopped, paused or exploited"
                )
            if isinstance(a, Exploit):
                applied.append(self._exploit(target, self.models[a.source], dict(a.params)))
                continue
            if isinstance(a, Continue):
                target.status = "running"
                events.append(ModelContinued(target.model_id))
                action = "continue"
            elif isinstance(a, Stop):
                target.status = "completed" if a.reason == "finished" else "stopped"
                events.append(ModelStopped(target.model_id))
                action = "stop"
            else:
                target.status = "paused"
                action = "pause"
            applied.append({"model_id": target.model_id, "action": action, "status": target.status,
                            "reason": getattr(a, "reason", "")})
        return events

    def _exploit(self, target: ModelRecord, source: ModelRecord, params: dict[str, Any]) -> dict[str, Any]:
        if self.exploit is None:
            raise CerebroError("this engine cannot exploit: no exploit adapter was given")
        if source.status == "failed" or not source.epoch_checkpoint:
            raise CerebroError(f"cannot exploit {source.model_id}: it has not completed an epoch ({source.status})")
        target.spec_version += 1
        init = self.exploit(target, source, params)
        previous = target.checkpoint
        target.epoch_checkpoint, target.epoch_checksum = init.checkpoint, init.checksum
        old_params = dict(target.params)
        target.params, target.spec_path, target.checkpoint, target.checksum = params, init.spec_path, init.checkpoint, init.checksum
        self._discard_checkpoint(previous)
        self._emit("exploit", model_id=target.model_id, source=source.model_id, params=params)
        return {"model_id": target.model_id, "action": "exploit", "status": target.status, "source": source.model_id,
                "source_checkpoint": source.epoch_checkpoint, "epoch": target.epochs_done, "old_params": old_params, "params": params, "spec": init.spec_path,
                "checkpoint": init.checkpoint, "checksum": init.checksum, "spec_version": target.spec_version}

    def _update_best(self, model: ModelRecord, epoch: int, metrics: Mapping[str, float]) -> None:
        score = metrics.get(self.metric) if self.metric else None
        if score is None or (self.best is not None and not better(score, self.best["score"], self.mode)):
            return
        previous = self.best["checkpoint"] if self.best else None
        self.best = {"model_id": model.model_id, "epoch": epoch, "score": score,
                     "checkpoint": model.checkpoint, "checksum": model.checksum}
        self._record({"type": "best", **self.best})
        if previous and previous != model.checkpoint:
            self._discard_checkpoint(previous)

    def _abandon(self, cmd: AbandonModel) -> None:
        model = self.models[cmd.model_id]
        model.status = "failed"
        error = cmd.error or model.error or "unknown error"
        self.failures[model.model_id] = error
        self._record({"type": "model_failed", "model_id": model.model_id, "epoch": cmd.epoch, "error": error})
        self._emit("model_failed", model_id=model.model_id, params=model.params, error=error)
        self._emit("model_ended", model_id=model.model_id, status="failed")
        self._driver_reacts(self.driver.on_model_failed(model.model_id, model.params, error))
        self._count_failure(error)

    # ------------------------------------------------------------------ records

    def _record(self, record: dict[str, Any]) -> None:
        if self.journal is not None:
            self.journal({"time": self.clock(), **record})

    def _emit(self, event: str, **info: Any) -> None:
        if self.listener is not None:
            self.listener(event, info)


_VISIT_COLUMNS = ("model_id", "epoch", "partition", "worker", "start", "end", "rows", "status", "attempt",
                  "load_s", "compute_s", "save_s")


def make_rng(seed: int) -> np.random.Generator:
    """The experiment's one generator for search decisions (drivers get it through ``bind``)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), 2]))
