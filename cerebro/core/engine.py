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
from ..drivers.base import Continue, SearchDriver, Stop
from ..errors import CerebroError
from .events import (
    AbandonModel, EndEpoch, EvaluateSubEpoch, ModelAdded, ModelContinued, ModelStopped,
    SubEpochFailed, SubEpochFinished, TrainSubEpoch, WorkerJoined, WorkerLost,
)
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


@dataclass
class ModelRecord:
    """The engine's bookkeeping for one model (configuration)."""

    model_id: str
    index: int
    params: dict[str, Any]
    spec_path: str
    checkpoint: str
    status: str = "running"            # running | completed | stopped | failed
    epochs_done: int = 0
    hops: int = 0                      # committed training visits in the current epoch
    error: str | None = None
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


def _weighted(sums: Mapping[str, float]) -> dict[str, float]:
    rows = sums.get("rows", 0.0)
    return {k: v / rows for k, v in sums.items() if k != "rows"} if rows else {}


class Engine:
    """Runs one model selection to completion.  Not reusable: call :meth:`run` once."""

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
        seed: int = 0,
        listener: Listener | None = None,
        journal: Callable[[dict[str, Any]], None] | None = None,
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
        self.seed = seed
        self.listener = listener
        self.journal = journal
        self.max_worker_restarts = max_worker_restarts
        self.clock = clock
        self.poll_interval = poll_interval
        self.num_workers = backend.num_workers

        self.models: dict[str, ModelRecord] = {}
        self.history: list[dict[str, Any]] = []
        self.visits: list[dict[str, Any]] = []
        self.evaluations: list[dict[str, Any]] = []
        self.failures: dict[str, str] = {}
        self._tasks: dict[int, tuple[TrainSubEpoch | EvaluateSubEpoch, float]] = {}
        self._next_task = 0
        self._alive: set[int] = set()
        self._starting: dict[int, float] = {}
        self._deaths: dict[int, int] = {}
        self._exhausted = False        # the driver will never suggest again
        self._next_index = 0
        self._failed_configs = 0

    # ------------------------------------------------------------------ public

    def run(self) -> EngineOutcome:
        """Start the workers, train until the driver and the scheduler are done, return the record.

        Blocks.  Raises :class:`CerebroError` when workers cannot start or keep dying.
        """
        started = self.clock()
        # Models are created first: a configuration problem that concerns every model (say an
        # evaluation metric they do not compute) is refused before any worker starts.
        self._fill()
        self.backend.start(self.setup)
        now = self.clock()
        self._starting = {w: now for w in range(self.num_workers)}
        while not self._done():
            events = self.backend.wait(self.poll_interval)
            for ev in events:
                self._on_backend_event(ev)
            self._check_start_timeouts()
        return EngineOutcome(
            self.models, self.history, self.visits, self.evaluations, self.failures, started, self.clock()
        )

    # ------------------------------------------------------------------ driver side

    def _done(self) -> bool:
        return self.scheduler.idle and not self._tasks and (self._exhausted or not self._fill())

    def _fill(self) -> bool:
        """Ask the driver for configurations; create and add them.  True if any model was added."""
        if self._exhausted:
            return False
        active = sum(1 for m in self.models.values() if m.status == "running")
        proposals = self.driver.suggest(active)
        if proposals is None:
            self._exhausted = True
            return False
        added = []
        for params in proposals:
            index = self._next_index
            self._next_index += 1
            model_id = f"model_{index:03d}"
            try:
                init = self.create_model(model_id, index, dict(params))
            except ModelCreationFailed as exc:
                self._failed_configs += 1
                self.failures[model_id] = exc.traceback_text
                self.models[model_id] = ModelRecord(model_id, index, dict(params), "", "", status="failed", error=exc.traceback_text)
                log.warning("configuration %s %s could not be built:\n%s", model_id, dict(params), exc.traceback_text)
                self._emit("model_failed", model_id=model_id, params=dict(params), error=exc.traceback_text)
                self.driver.on_model_failed(None, dict(params), exc.traceback_text)
                continue
            self.models[model_id] = ModelRecord(model_id, index, dict(params), init.spec_path, init.checkpoint)
            self.driver.on_model_added(model_id, dict(params))
            self._record({"type": "model_added", "model_id": model_id, "index": index, "params": dict(params)})
            self._emit("model_added", model_id=model_id, params=dict(params))
            added.append(ModelAdded(model_id, index))
        if added:
            self._handle(*added)
        return bool(added)

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
                raise CerebroError(
                    f"worker {w} did not start within start_timeout={self.backend.start_timeout:g} s "
                    f"(check the worker logs{' in ' + self.setup.log_dir if self.setup.log_dir else ''})"
                )

    @staticmethod
    def _kind(cmd) -> str:
        return "train" if isinstance(cmd, TrainSubEpoch) else "eval"

    def _on_done(self, ev: TaskDone) -> None:
        cmd, start = self._tasks.pop(ev.task_id)
        model = self.models[cmd.model_id]
        result = ev.result
        kind = self._kind(cmd)
        sums = model.sums.setdefault((cmd.epoch, kind), {})
        rows = float(result.get("rows", 0))
        for name, value in result.get("metrics", {}).items():
            sums[name] = sums.get(name, 0.0) + float(value) * rows
        sums["rows"] = sums.get("rows", 0.0) + rows
        if kind == "train":
            previous = model.checkpoint
            model.checkpoint = result["checkpoint"]
            model.hops += 1
            if self.delete is not None and previous and previous != model.checkpoint:
                self.delete(previous)  # superseded: the new one is durable (keep-latest retention)
        self._record_attempt(cmd, start, "ok", result, None)
        self._handle(SubEpochFinished(cmd.model_id, cmd.worker, cmd.epoch, cmd.partition, kind))

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
        if status == "failed":
            model = self.models[cmd.model_id]
            if isinstance(cmd, TrainSubEpoch) and self.delete is not None:
                # A failed attempt may have written its output before dying: never leave it behind.
                self.delete(self.checkpoint_path(cmd.model_id, cmd.epoch, model.hops + 1, cmd.attempt))
            if model.error is None:
                # The first failure of a model is shown at once, not hidden behind retries.
                log.warning("%s of %s (epoch %d, partition %d, attempt %d) failed:\n%s",
                            self._kind(cmd), cmd.model_id, cmd.epoch, cmd.partition, cmd.attempt + 1, error)
            model.error = model.error or error
        self._record({"type": "visit", "kind": self._kind(cmd), **row, "error": error})
        self._emit("visit", kind=self._kind(cmd), **row)

    # ------------------------------------------------------------------ scheduler side

    def _handle(self, *events) -> None:
        pending = deque(self.scheduler.handle(*events))
        while pending:
            cmd = pending.popleft()
            if isinstance(cmd, (TrainSubEpoch, EvaluateSubEpoch)):
                self._submit(cmd)
            elif isinstance(cmd, EndEpoch):
                follow = self._end_epoch(cmd)
                if follow is not None:
                    pending.extend(self.scheduler.handle(follow))
                if self.models[cmd.model_id].status != "running":
                    self._fill()
            elif isinstance(cmd, AbandonModel):
                self._abandon(cmd)
                self._fill()
            else:  # pragma: no cover - the scheduler emits nothing else
                raise CerebroError(f"unknown scheduler command {cmd!r}")

    def _submit(self, cmd: TrainSubEpoch | EvaluateSubEpoch) -> None:
        model = self.models[cmd.model_id]
        task: dict[str, Any] = {
            "kind": self._kind(cmd), "model_id": cmd.model_id, "spec": model.spec_path,
            "checkpoint": model.checkpoint, "epoch": cmd.epoch, "partition": cmd.partition,
        }
        if isinstance(cmd, TrainSubEpoch):
            task["out"] = self.checkpoint_path(cmd.model_id, cmd.epoch, model.hops + 1, cmd.attempt)
            task["seed"] = sub_epoch_seed(self.seed, model.index, cmd.epoch, cmd.partition)
        task_id = self._next_task
        self._next_task += 1
        self._tasks[task_id] = (cmd, self.clock())
        self.backend.submit(cmd.worker, task_id, task)

    def _end_epoch(self, cmd: EndEpoch):
        model = self.models[cmd.model_id]
        train = _weighted(model.sums.pop((cmd.epoch, "train"), {}))
        val = _weighted(model.sums.pop((cmd.epoch, "eval"), {}))
        metrics = {f"train_{k}": v for k, v in train.items()}
        metrics.update({f"val_{k}": v for k, v in val.items()})
        model.epochs_done = cmd.epoch
        model.hops = 0
        self.history.append({"model_id": model.model_id, "epoch": cmd.epoch, **metrics})
        decision = self.driver.on_epoch_end(model.model_id, cmd.epoch, metrics)
        self._record({"type": "epoch", "model_id": model.model_id, "epoch": cmd.epoch, "metrics": metrics,
                      "decision": type(decision).__name__, "final": cmd.final})
        self._emit("epoch", model_id=model.model_id, epoch=cmd.epoch, metrics=metrics)
        if cmd.final:
            model.status = "stopped"
            return None
        if isinstance(decision, Continue):
            return ModelContinued(model.model_id)
        if not isinstance(decision, Stop):
            raise CerebroError(f"search driver returned {decision!r}; expected Continue() or Stop()")
        model.status = "completed" if decision.reason == "finished" else "stopped"
        return ModelStopped(model.model_id)

    def _abandon(self, cmd: AbandonModel) -> None:
        model = self.models[cmd.model_id]
        model.status = "failed"
        error = cmd.error or model.error or "unknown error"
        self.failures[model.model_id] = error
        self._record({"type": "model_failed", "model_id": model.model_id, "epoch": cmd.epoch, "error": error})
        self._emit("model_failed", model_id=model.model_id, params=model.params, error=error)
        self.driver.on_model_failed(model.model_id, model.params, error)

    # ------------------------------------------------------------------ records

    def _record(self, record: dict[str, Any]) -> None:
        if self.journal is not None:
            self.journal({"time": self.clock(), **record})

    def _emit(self, event: str, **info: Any) -> None:
        if self.listener is not None:
            self.listener(event, info)


def make_rng(seed: int) -> np.random.Generator:
    """The experiment's one generator for search decisions (drivers get it through ``bind``)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), 2]))
