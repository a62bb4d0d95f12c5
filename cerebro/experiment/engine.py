"""The one loop that owns blocking: backend <-> scheduler <-> driver <-> journal.

The engine submits the scheduler's commands to the backend, waits for any completion and turns
what happened into a journal record (:mod:`cerebro.core.records`).  Each record is journaled
first (durable), then applied to the :class:`~cerebro.core.state.ExperimentState` by its one
reducer, then told to the listeners, and only then does the engine act on it (tell the
scheduler, delete superseded checkpoints).  Resume applies the journal's records to the same
reducer (:meth:`Engine.restore`), so the live run and the restarted one cannot drift.

Nothing else in cerebro waits.  The engine imports no framework, Spark or file-system code:
what an experiment writes (models, exploit copies, checkpoint names and deletion, the journal)
is the :class:`Workspace`'s.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Protocol

from ..backends.base import Backend, TaskDone, TaskFailed, WorkerDied, WorkerReady, WorkerSetup
from ..core.actions import ActionError, Continue, Exploit, Stop, check_actions, normalise, target_of
from ..core.events import (
    AbandonModel, EndEpoch, EvaluateSubEpoch, ModelAdded, ModelContinued, ModelRolledBack, ModelStopped,
    SubEpochFailed, SubEpochFinished, TrainSubEpoch, WorkerJoined, WorkerLost, WorkerRetired,
)
from ..core.mop import MOPScheduler
from ..core.order import ReportQueue
from ..core.records import (
    BestModel, CreationFailure, DriverUpdate, EpochResult, ModelCreation, ModelFailure, Record, Rollback, Suggestion,
    Visit, WorkerRetirement, record_from_dict,
)
from ..core.seeds import sub_epoch_seed
from ..core.state import ExperimentState, ExploitPlan, ModelState
from ..drivers.base import SearchDriver
from ..errors import CerebroError, StoreFullError, StoreIntegrityError
from .tasks import Task, TaskResult

log = logging.getLogger(__name__)

#: ``TaskFailed.cause`` values that stop the run instead of failing the model (see
#: :func:`cerebro.worker.failure_cause`), with the error each is raised as and the name of the
#: exception whose message (the traceback's last line naming it) becomes the error's.
_FATAL: dict[str, tuple[type[CerebroError], str]] = {
    "store_full": (StoreFullError, "StoreFullError"),
    "integrity": (StoreIntegrityError, "StoreIntegrityError"),
    "data": (CerebroError, "PreparedDataCorrupted"),
}


def _last_line(text: str) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""

__all__ = ["Engine", "EngineOutcome", "Workspace", "ModelInit", "ModelCreationFailed", "Listener"]


class ModelCreationFailed(Exception):
    """Raised by :meth:`Workspace.create_model` when a configuration cannot be built; carries
    the traceback text (the configuration is recorded as failed, the others go on)."""

    def __init__(self, traceback_text: str) -> None:
        super().__init__(traceback_text)
        self.traceback_text = traceback_text


@dataclass(frozen=True)
class ModelInit:
    """Where a new model's (or an exploit copy's) spec and initial state were stored."""

    spec_path: str
    checkpoint: str
    checksum: str | None = None
    task_extra: dict[str, Any] = field(default_factory=dict)   # e.g. {"features": [...]} for every task
    framework: str | None = None   # the model's framework ("keras", "torch"): workers import it at start


class Workspace(Protocol):
    """What an experiment writes, as the engine sees it (see :mod:`cerebro.experiment.workspace`
    for the store-backed one).  Every method is called from the engine's loop only."""

    def create_model(self, model_id: str, index: int, params: dict[str, Any]) -> ModelInit:
        """Build a configuration and store its spec and initial state.  Raises
        :class:`ModelCreationFailed` for a configuration that cannot be built, ValueError for a
        problem that concerns every configuration (refused before any training)."""

    def exploit(self, plan: ExploitPlan, params: dict[str, Any]) -> ModelInit:
        """Store a copy of ``plan.source_checkpoint`` for ``plan.target`` with ``params``."""

    def checkpoint_path(self, model_id: str, epoch: int, hop: int, attempt: int) -> str:
        """Where the state after ``hop`` of ``epoch`` (attempt ``attempt``) is written.  Pure."""

    def delete_checkpoint(self, path: str) -> None:
        """Delete a checkpoint nothing refers to any more (missing is fine)."""

    def journal(self, record: dict[str, Any]) -> None:
        """Append a record durably (returns once it is)."""


class Listener(Protocol):
    def __call__(self, event: str, info: Mapping[str, Any]) -> None: ...


@dataclass
class EngineOutcome:
    models: dict[str, ModelState]
    history: list[dict[str, Any]]
    visits: list[dict[str, Any]]
    evaluations: list[dict[str, Any]]
    failures: dict[str, str]
    started: float
    finished: float
    best_checkpoint: dict[str, Any] | None = None


class Engine:
    """Runs one model selection to completion.  Not reusable: call :meth:`run` once.

    Checkpoint retention is :meth:`ExperimentState.kept_checkpoints`: whatever a commit
    leaves unreferenced is deleted right after the record that superseded it is journaled.
    ``after_commit(record, state)``, when given, is called after every record is applied (for
    tests and tools that watch the state evolve).

    Failures (see docs/durability.md, "Failures"): a worker that dies is restarted, at once the
    first time, then after ``restart_backoff`` seconds doubling up to ``restart_backoff_max``
    (scheduled, never slept: the other workers keep training); one that dies more than
    ``max_worker_restarts`` times in a row without finishing a task is retired and its
    partitions served by the others (where the backend allows it), and only when no worker is
    left does the run stop.  A task whose input checkpoint is unusable rolls the model back to
    the state its epoch started from, at most ``max_rollbacks`` times per model and epoch.
    """

    def __init__(
        self,
        *,
        backend: Backend,
        setup: WorkerSetup,
        scheduler: MOPScheduler,
        driver: SearchDriver,
        workspace: Workspace,
        seed: int = 0,
        metric: str | None = None,
        mode: str = "min",
        listener: Listener | None = None,
        max_consecutive_failures: int | None = None,
        max_worker_restarts: int = 3,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 1.0,
        after_commit: Callable[[Record, ExperimentState], None] | None = None,
        restart_backoff: float = 0.5,
        restart_backoff_max: float = 8.0,
        max_rollbacks: int = 2,
    ) -> None:
        self.backend = backend
        self.setup = setup
        self.scheduler = scheduler
        self.driver = driver
        self.workspace = workspace
        self.seed = seed
        self.listener = listener
        self.max_consecutive_failures = max_consecutive_failures
        self.max_worker_restarts = max_worker_restarts
        self.restart_backoff = restart_backoff
        self.restart_backoff_max = restart_backoff_max
        self.max_rollbacks = max_rollbacks
        self.clock = clock
        self.poll_interval = poll_interval
        self.after_commit = after_commit
        self.num_workers = backend.num_workers
        self.state = ExperimentState(metric=metric, mode=mode)

        self._tasks: dict[int, tuple[Task, TrainSubEpoch | EvaluateSubEpoch, float]] = {}
        self._next_task = 0
        self._alive: set[int] = set()
        self._starting: dict[int, float] = {}
        self._deaths: dict[int, int] = {}       # deaths in a row without a finished task
        self._failed_starts: dict[int, int] = {}   # of those, deaths before the worker was ready
        self._reasons: dict[int, str] = {}      # worker -> why it died last
        self._restart_at: dict[int, float] = {}   # worker -> when its backed-off restart is due
        self._retired: set[int] = set()
        self._where: dict[int, tuple[str, str]] = {}   # worker -> (host, device), from WorkerReady
        self._building: set[int] = set()   # indices a running _fill is building
        self._frameworks: set[str] = set()  # frameworks of the models this run created
        # Reports for the driver, delivered in the canonical order under the deterministic scheduler.
        self._reports: ReportQueue = ReportQueue(canonical=scheduler.mode == "deterministic")
        self._delivering = False

    # ------------------------------------------------------------------ public

    def run(self) -> EngineOutcome:
        """Start the workers, train until the driver and the scheduler are done, return the record.

        Blocks.  Raises :class:`CerebroError` when workers cannot start, when every worker keeps
        dying (or, on a backend that cannot retire workers, any), or when
        ``max_consecutive_failures`` configurations failed in a row.
        """
        started = self.clock()
        # Models are created first: a configuration problem that concerns every model (say an
        # evaluation metric they do not compute) is refused before any worker starts.
        self._fill()
        # Workers import the frameworks of the models created so far while they start.
        self.backend.start(replace(self.setup, frameworks=tuple(sorted(self._frameworks))))
        try:
            now = self.clock()
            self._starting = {w: now for w in range(self.num_workers)}
            while not self._done():
                for ev in self.backend.wait(self._wait_timeout()):
                    self._on_backend_event(ev)
                self._restart_due()
                self._check_start_timeouts()
        finally:
            self.backend.release()
        s = self.state
        return EngineOutcome(s.models, s.history, s.visits, s.evaluations, s.failures, started, self.clock(), s.best)

    def restore(self, records: list[dict[str, Any]]) -> None:
        """Rebuild the state from a journal's records (the same reducer as the live run), give
        the driver its saved state and the scheduler its models back; call before :meth:`run`."""
        for r in records:
            self.state.apply(record_from_dict(r))
        s = self.state
        if s.driver_state is not None:
            self.driver.set_state(s.driver_state)
        # Announcements journaled after the driver's last saved state: tell the driver again.
        # A failure's answer (actions about paused models, then the driver's state) was never
        # journaled: it is applied as the live run would have, before any other report.
        answers = []
        for note in s.announcements:
            if note[0] == "added":
                self.driver.on_model_added(note[1], dict(note[2]))
            else:
                answers.append(self.driver.on_model_failed(note[1], dict(note[2]), note[3]))
        log.info("restored %d models (%d visits, %d epochs) from the journal", len(s.models), len(s.visits), len(s.history))
        events = s.restored_events()
        self._delivering = True   # the scheduler gets its models back first; reports wait
        try:
            if events:
                self._handle(*events)
            for answer in answers:
                self._driver_reacts(answer)
        finally:
            self._delivering = False
        self._deliver()

    # ------------------------------------------------------------------ committing

    def _commit(self, record: Record) -> None:
        """Journal, then apply: the one way the experiment's state changes."""
        self.workspace.journal(record.to_dict())
        self.state.apply(record)
        if self.after_commit is not None:
            self.after_commit(record, self.state)

    def _driver_payload(self) -> dict:
        """The driver's state for the next record: a delta against the last journaled one, or a
        snapshot (:mod:`cerebro.core.statediff`), so the journal grows linearly with the search."""
        return self.state.driver_payload(self.driver.get_state())

    def _discard(self, *paths: str | None) -> None:
        """Delete those of ``paths`` that the committed state no longer keeps."""
        keep = self.state.kept_checkpoints()
        for path in dict.fromkeys(p for p in paths if p):
            if path not in keep:
                self.workspace.delete_checkpoint(path)

    # ------------------------------------------------------------------ driver side

    def _done(self) -> bool:
        if self.scheduler.idle and not self._tasks and (self.state.exhausted or not self._fill()):
            return True
        models = self.state.models
        paused = [m for m, r in models.items() if r.status == "paused"]
        if paused and not self._tasks and not any(r.status == "running" for r in models.values()) \
                and (self.state.exhausted or not self._fill()):
            # Nothing runs, nothing will be proposed, and nobody will ever resume these models.
            raise CerebroError(
                f"the search driver left {len(paused)} model(s) paused ({', '.join(paused[:5])}) with nothing "
                "running and nothing new to propose; a driver must eventually continue or stop every model it pauses"
            )
        return False

    def _decide(self, decision: Any, reporting: str | None, epoch: int | None) -> list:
        """The driver's answer as checked actions (see :mod:`cerebro.core.actions`)."""
        try:
            actions = normalise(decision, reporting)
            check_actions(actions, reporting, self.state.statuses(), self.state.epochs(reporting, epoch),
                          self.driver.space or None)
        except ActionError as exc:
            raise CerebroError(f"search driver action refused: {exc}") from None
        return actions

    def _driver_reacts(self, decision: Any) -> None:
        """Apply actions a driver returned outside on_epoch_end (e.g. after a failure a rung may
        be complete: promote the paused models); journal them with the driver's state."""
        actions = self._decide(decision, None, None)
        applied, events, discard = self._describe(actions, None, None)
        self._commit(DriverUpdate(self._driver_payload(), applied, time=self.clock()))
        self._discard(*discard)
        if events:
            self._handle(*self._due(events))

    def _fill(self) -> bool:
        """Ask the driver for configurations; create and add them.  True if any model was added.

        The suggestion is journaled (with the driver's new state) before any model is built,
        so a crash halfway through building them loses none and duplicates none on resume.
        """
        s = self.state
        todo = [(i, p) for i, p in sorted(s.unbuilt.items()) if i not in self._building]
        if not todo:
            if s.exhausted or s.unbuilt:
                return False
            proposals = self.driver.suggest(s.active())
            if proposals is None:
                self._commit(DriverUpdate(self._driver_payload(), exhausted=True, time=self.clock()))
                return False
            todo = [(s.next_index + i, dict(p)) for i, p in enumerate(proposals)]
            if not todo:
                return False
            self._commit(Suggestion(todo[0][0], [p for _, p in todo], self._driver_payload(), time=self.clock()))
        self._building.update(i for i, _ in todo)
        # Each model goes to the scheduler as soon as it is built, so a free worker trains it
        # while the next one is built; no report is delivered halfway through the suggestion.
        delivering, self._delivering = self._delivering, True
        try:
            for index, params in todo:
                model_id = f"model_{index:03d}"
                try:
                    init = self.workspace.create_model(model_id, index, dict(params))
                except ModelCreationFailed as exc:
                    log.warning("configuration %s %s could not be built:\n%s", model_id, dict(params), exc.traceback_text)
                    self._commit(CreationFailure(model_id, index, dict(params), exc.traceback_text, time=self.clock()))
                    self._emit("model_failed", model_id=model_id, params=dict(params), error=exc.traceback_text)
                    self._emit("model_ended", model_id=model_id, status="failed")
                    self._driver_reacts(self.driver.on_model_failed(None, dict(params), exc.traceback_text))
                    self._check_failures(exc.traceback_text)
                    continue
                if init.framework:
                    self._frameworks.add(init.framework)
                self.driver.on_model_added(model_id, dict(params))
                self._commit(ModelCreation(model_id, index, dict(params), init.spec_path, init.checkpoint, init.checksum,
                                           dict(init.task_extra), time=self.clock()))
                self._emit("model_added", model_id=model_id, params=dict(params), index=index)
                self._handle(ModelAdded(model_id, index, due=self.state.models[model_id].tick or 0))
        finally:
            self._building.difference_update(i for i, _ in todo)
            self._delivering = delivering
        if not delivering:
            self._deliver()
        # True when the driver proposed anything, even if none of it could be built: it may
        # propose more (TPE), so the run is not over.
        return True

    def _check_failures(self, error: str) -> None:
        limit = self.max_consecutive_failures
        count = self.state.consecutive_failures
        if limit is not None and count >= limit:
            raise CerebroError(
                f"{count} configurations failed in a row (max_consecutive_failures={limit}); "
                f"stopping the experiment. Last failure:\n{error}"
            )

    # ------------------------------------------------------------------ backend side

    def _on_backend_event(self, ev) -> None:
        if isinstance(ev, WorkerReady):
            if ev.worker in self._retired:
                log.debug("ignoring worker %d's ready message: it was retired", ev.worker)
                return
            self._restart_at.pop(ev.worker, None)   # (a Spark stage relaunched by another worker's restart)
            self._failed_starts[ev.worker] = 0
            self._starting.pop(ev.worker, None)
            self._alive.add(ev.worker)
            self._where[ev.worker] = (ev.host, ev.device)
            log.debug("worker %d ready (pid %s, %s on %s)", ev.worker, ev.pid, ev.device, ev.host)
            self._emit("worker_ready", worker=ev.worker, pid=ev.pid)
            self._handle(WorkerJoined(ev.worker))
        elif isinstance(ev, TaskDone):
            self._deaths[ev.worker] = 0
            self._on_done(ev)
        elif isinstance(ev, TaskFailed):
            fatal = _FATAL.get(ev.cause or "")
            if fatal is not None:
                # Not the model's fault, and no retry helps (a full store, a file changed in it):
                # stop the run with the worker's own message; nothing about this attempt is
                # committed, so a resume redoes it.
                error, name = fatal
                lines = [ln for ln in ev.error.strip().splitlines() if ln.split(":", 1)[0].endswith(name)]
                raise error(lines[-1].split(": ", 1)[-1] if lines else _last_line(ev.error))
            if ev.cause == "checkpoint":
                self._on_checkpoint_lost(ev)
                return
            task, cmd, start = self._tasks.pop(ev.task_id)
            self._record_attempt(task, cmd, start, "failed", None, ev.error)
            # An error of the model or its data fails the same way again: no retries for it.
            self._handle(SubEpochFailed(cmd.model_id, cmd.worker, cmd.epoch, cmd.partition, task.kind, ev.error,
                                        retryable=ev.cause != "deterministic"))
        elif isinstance(ev, WorkerDied):
            self._on_worker_died(ev)

    def _on_worker_died(self, ev: WorkerDied) -> None:
        w = ev.worker
        if w in self._retired:
            return
        deaths = self._deaths[w] = self._deaths.get(w, 0) + 1
        if w not in self._alive:
            self._failed_starts[w] = self._failed_starts.get(w, 0) + 1
        self._reasons[w] = ev.reason
        self._starting.pop(w, None)
        self._restart_at.pop(w, None)
        for tid in [tid for tid, (_, cmd, _) in self._tasks.items() if cmd.worker == w]:
            task, cmd, start = self._tasks.pop(tid)
            self._record_attempt(task, cmd, start, "failed", None, f"worker {w} died: {ev.reason}")
        retire = deaths > self.max_worker_restarts
        delay = 0.0 if retire else self._backoff(deaths)
        log.warning("worker %d died (%s); %s", w, _last_line(ev.reason) or "no reason given",
                    "taking it out of the pool" if retire else f"restarting it in {delay:g} s" if delay else "restarting it")
        self._emit("worker_died", worker=w, reason=ev.reason)
        if w in self._alive:
            self._alive.discard(w)
            self._handle(WorkerLost(w, ev.reason))
        if retire:
            self._retire(w)
        elif delay > 0:
            # Scheduled, not slept: the loop goes on serving the other workers meanwhile.
            self._restart_at[w] = self.clock() + delay
        else:
            self._restart(w)

    def _backoff(self, deaths: int) -> float:
        """Seconds before restarting a worker after its ``deaths``-th death in a row: none after
        the first (a one-off crash), then ``restart_backoff`` doubling, at most ``restart_backoff_max``."""
        if deaths <= 1 or self.restart_backoff <= 0:
            return 0.0
        return min(self.restart_backoff_max, self.restart_backoff * 2.0 ** (deaths - 2))

    def _restart(self, w: int) -> None:
        self.backend.restart(w)
        self._starting[w] = self.clock()

    def _restart_due(self) -> None:
        if not self._restart_at:
            return
        now = self.clock()
        for w in sorted(w for w, at in self._restart_at.items() if at <= now):
            del self._restart_at[w]
            self._restart(w)

    def _wait_timeout(self) -> float:
        """How long the backend may block: until the next backed-off restart is due, at most
        ``poll_interval``."""
        if not self._restart_at:
            return self.poll_interval
        return max(0.0, min(self.poll_interval, min(self._restart_at.values()) - self.clock()))

    def _retire(self, w: int) -> None:
        """Take worker ``w``, which keeps dying, out of the pool: the scheduler moves its partitions
        to the workers left, so every model still sees every partition each epoch."""
        deaths, reason = self._deaths[w], self._reasons.get(w, "")
        what = (f"{deaths} failed starts" if self._failed_starts.get(w, 0) >= deaths
                else f"dying {deaths} times in a row without finishing a task")
        if not self.backend.can_retire_workers:
            raise CerebroError(
                f"worker {w} died {deaths} times in a row without finishing a task; giving up "
                f"({type(self.backend).__name__} cannot take a worker out of its pool). Last reason:\n{reason}"
            )
        left = [x for x in range(self.num_workers) if x != w and x not in self._retired]
        if not left:
            summary = "; ".join(
                f"worker {x}: {'retired, ' if x in self._retired else ''}{self._deaths.get(x, 0)} deaths in a row, "
                f"last: {_last_line(self._reasons.get(x, '')) or 'no reason given'}" for x in range(self.num_workers))
            raise CerebroError(
                f"no worker is left to train on: every worker died {self.max_worker_restarts + 1} times in a row without "
                f"finishing a task ({summary}); giving up. Last reason of worker {w}:\n{reason}"
            )
        before = self.scheduler.servers
        commands = self.scheduler.handle(WorkerRetired(w, reason))
        after = self.scheduler.servers
        moved = [[q, after[q]] for q in sorted(before) if before[q] == w]
        self._retired.add(w)
        self._commit(WorkerRetirement(w, deaths, moved, reason, time=self.clock()))
        served = ", ".join(f"partition {q} is served by worker {to}" for q, to in moved)
        log.warning("experiment degraded: worker %d retired after %s; %s (the run goes on with %d of %d workers; "
                    "last reason: %s)", w, what, served, len(left), self.num_workers,
                    _last_line(reason) or "no reason given")
        self._emit("worker_retired", worker=w, deaths=deaths, reason=reason, moved=moved)
        self._process(commands)

    def _on_checkpoint_lost(self, ev: TaskFailed) -> None:
        """A task's input checkpoint is missing or corrupted: roll the model back to the state its
        epoch started from (journaled); when that state is the one lost (or the model rolled back
        ``max_rollbacks`` times this epoch) it is an ordinary failure, saying what was lost: the
        visit is retried (a read may fail for a passing reason) and the model abandoned after
        its retries."""
        task, cmd, start = self._tasks.pop(ev.task_id)
        self._record_attempt(task, cmd, start, "failed", None, ev.error)
        model = self.state.models[cmd.model_id]
        lost, target, reason = task.checkpoint, model.start_checkpoint, _last_line(ev.error)
        if target and lost != target and model.rollbacks < self.max_rollbacks:
            self._commit(Rollback(model.model_id, cmd.epoch, lost, target, model.start_checksum, reason,
                                  time=self.clock()))
            self._discard(lost)
            log.warning("%s: its latest checkpoint is unusable (%s); rolling back to the state epoch %d started from "
                        "(%s) and training that epoch again", model.model_id, reason, cmd.epoch, target)
            self._emit("rollback", model_id=model.model_id, epoch=cmd.epoch, from_checkpoint=lost,
                       to_checkpoint=target, reason=reason)
            self._handle(ModelRolledBack(cmd.model_id, cmd.worker, cmd.epoch, cmd.partition, task.kind))
            return
        if lost == target:
            earlier = model.lost[-1] if model.lost else None
            what = (f"both its latest checkpoint {earlier} and {lost}, the state epoch {cmd.epoch} started from, are lost"
                    if earlier else f"checkpoint {lost}, the state epoch {cmd.epoch} started from, is lost")
            error = (f"{model.model_id}: {what} (missing or corrupted in the store) and retention keeps no older "
                     f"state of this epoch to fall back on.\n{ev.error}")
        else:
            error = (f"{model.model_id}: its checkpoints were lost {model.rollbacks + 1} times in epoch {cmd.epoch} "
                     f"({', '.join(model.lost + [lost])}); giving up after {model.rollbacks} rollbacks "
                     f"(max_rollbacks={self.max_rollbacks}).\n{ev.error}")
        self._handle(SubEpochFailed(cmd.model_id, cmd.worker, cmd.epoch, cmd.partition, task.kind, error))

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

    def _on_done(self, ev: TaskDone) -> None:
        task, cmd, start = self._tasks.pop(ev.task_id)
        result: TaskResult = ev.result
        previous = self.state.models[cmd.model_id].checkpoint
        # Journal first: only then is the new checkpoint the committed one, and only then may
        # the superseded one go (a crash in between must never leave the journal pointing at
        # a deleted file).
        self._record_attempt(task, cmd, start, "ok", result, None)
        if task.kind == "train":
            self._discard(previous)
        self._handle(SubEpochFinished(cmd.model_id, cmd.worker, cmd.epoch, cmd.partition, task.kind))

    def _record_attempt(self, task: Task, cmd, start: float, status: str, result: TaskResult | None,
                        error: str | None) -> None:
        end = self.clock()
        timing = result.timing if result is not None else {}
        host, device = self._where.get(cmd.worker, ("", ""))
        record = Visit(
            task.kind, cmd.model_id, cmd.epoch, cmd.partition, cmd.worker, start, end,
            int(result.rows) if result is not None else 0, status, cmd.attempt,
            timing.get("load", 0.0), timing.get("compute", 0.0), timing.get("save", 0.0), error,
            dict(result.metrics) if result is not None else {},
            result.checkpoint if status == "ok" and task.kind == "train" else None,
            result.checksum if status == "ok" and task.kind == "train" else None,
            time=end, host=host, device=device, build_s=timing.get("build", 0.0),
        )
        model = self.state.models[cmd.model_id]
        first_failure = status == "failed" and model.error is None
        self._commit(record)
        if status == "failed":
            if task.kind == "train" and task.out:
                # A failed attempt may have written its output before dying: never leave it behind.
                self.workspace.delete_checkpoint(task.out)
            if first_failure:
                # The first failure of a model is shown at once, not hidden behind retries.
                log.warning("%s of %s (epoch %d, partition %d, attempt %d) failed:\n%s",
                            task.kind, cmd.model_id, cmd.epoch, cmd.partition, cmd.attempt + 1, error)
        self._emit("visit", kind=task.kind, **record.row())

    # ------------------------------------------------------------------ scheduler side

    def _handle(self, *events) -> None:
        self._process(self.scheduler.handle(*events))

    def _process(self, commands: list) -> None:
        """Carry out the scheduler's commands: submit visits; queue reports (EndEpoch,
        AbandonModel) for the driver, then deliver those that may be delivered now."""
        for cmd in commands:
            if isinstance(cmd, (TrainSubEpoch, EvaluateSubEpoch)):
                self._submit(cmd)
            elif isinstance(cmd, (EndEpoch, AbandonModel)):
                self._reports.add(cmd.model_id, cmd)
            else:  # pragma: no cover - the scheduler emits nothing else
                raise CerebroError(f"unknown scheduler command {cmd!r}")
        self._deliver()

    def _deliver(self) -> None:
        """Tell the driver the reports it may hear now, one at a time, in the canonical order
        under the deterministic scheduler (see :mod:`cerebro.core.order`): a report waits until
        every report due before it has arrived and been decided.  After each, the driver may
        propose configurations (:meth:`_fill`), so suggestions too come at canonical points."""
        if self._delivering:
            return   # called back from a delivery: the loop below picks up what was queued
        if not self._reports:
            return   # nothing held: no need to walk every model for the reports awaited
        self._delivering = True
        try:
            while True:
                awaited = self.state.awaited()
                cmd = self._reports.pop(awaited)
                if cmd is None:
                    self._check_order(awaited)
                    return
                if isinstance(cmd, EndEpoch):
                    before = self.state.statuses()
                    follow = self._end_epoch(cmd)
                    if follow:
                        self._process(self.scheduler.handle(*self._due(follow)))
                    for mid, rec in self.state.models.items():
                        if rec.status in ("completed", "stopped") and before.get(mid) != rec.status:
                            self._emit("model_ended", model_id=mid, status=rec.status)
                else:
                    self._abandon(cmd)
                self._fill()
        finally:
            self._delivering = False

    def _due(self, events: list) -> list:
        """Continued models with the tick of their next report, now that the decision is
        committed (the deterministic scheduler prefers the report due first)."""
        return [replace(ev, due=self.state.models[ev.model_id].tick or 0) if isinstance(ev, ModelContinued) else ev
                for ev in events]

    def _check_order(self, awaited: Mapping[str, tuple[int, int]]) -> None:
        """A report that can never be delivered is a bug, never a silent hang: the report due
        first must belong to a model the scheduler still runs."""
        first = self._reports.first_awaited(awaited)
        if self._reports and (first is None or self.scheduler.status(first) != "running"):
            raise CerebroError(
                f"internal error: the driver waits on a report of {first} (key {awaited.get(first)}), which the "
                f"scheduler will never send ({self.scheduler.status(first) if first else 'no model awaited'}); "
                f"held reports: {self._reports.held()}"
            )

    def _submit(self, cmd: TrainSubEpoch | EvaluateSubEpoch) -> None:
        model = self.state.models[cmd.model_id]
        features = model.task_extra.get("features")
        task = Task(
            "train" if isinstance(cmd, TrainSubEpoch) else "eval", cmd.model_id, model.spec_path, model.checkpoint,
            model.checksum, cmd.epoch, cmd.partition, features=tuple(features) if features else None,
        )
        if isinstance(cmd, TrainSubEpoch):
            # After a rollback the epoch's hops are trained again: later attempt numbers keep every
            # checkpoint name written once (a worker's cache knows a state by its name).
            attempt = cmd.attempt + model.rollbacks * (self.scheduler.max_retries + 1)
            task = replace(task, out=self.workspace.checkpoint_path(cmd.model_id, cmd.epoch, model.hops + 1, attempt),
                           seed=sub_epoch_seed(self.seed, model.index, cmd.epoch, cmd.partition),
                           epoch_end=model.hops + 1 == self.num_workers)
        task_id = self._next_task
        self._next_task += 1
        self._tasks[task_id] = (task, cmd, self.clock())
        self.backend.submit(cmd.worker, task_id, task)

    def _end_epoch(self, cmd: EndEpoch) -> list:
        """Aggregate the epoch, ask the driver, apply its actions; return scheduler events."""
        s = self.state
        model = s.models[cmd.model_id]
        metrics = s.epoch_metrics(model.model_id, cmd.epoch)
        if s.improves_best(metrics):
            previous_best = s.best["checkpoint"] if s.best else None
            self._commit(BestModel(model.model_id, cmd.epoch, metrics[s.metric], model.checkpoint, model.checksum,
                                   time=self.clock()))
            self._discard(previous_best)
        decision = self.driver.on_epoch_end(model.model_id, cmd.epoch, metrics)
        actions = self._decide(decision, model.model_id, cmd.epoch)
        prefix: list[dict[str, Any]] = []
        if cmd.final:
            prefix = [{"model_id": model.model_id, "action": "stop", "status": "stopped", "reason": "stop requested"}]
            actions = [a for a in actions if target_of(a) != model.model_id]
        previous_boundary, previous_start = model.epoch_checkpoint, model.start_checkpoint
        applied, events, discard = self._describe(actions, model.model_id, cmd.epoch)
        # One record holds the epoch, every action taken on it and the driver's new state: a
        # crash before it is written makes resume evaluate and decide this epoch again.
        self._commit(EpochResult(model.model_id, cmd.epoch, metrics, dict(model.params), cmd.final, prefix + applied,
                                 model.checkpoint, model.checksum, self._driver_payload(), time=self.clock()))
        self._discard(previous_boundary, previous_start, *discard)
        self._emit("epoch", model_id=model.model_id, epoch=cmd.epoch, metrics=metrics)
        return events

    def _describe(self, actions: list, reporting: str | None, epoch: int | None):
        """Carry out the side effects of checked actions (an exploit's copy in the store) and
        describe each as a record entry.  Returns (entries, scheduler events, checkpoints the
        actions may have superseded)."""
        applied: list[dict[str, Any]] = []
        events: list = []
        discard: list[str] = []
        statuses = self.state.statuses()
        if reporting is not None:
            statuses[reporting] = "paused"   # unless an action says otherwise
        for a in actions:
            target = target_of(a)
            if isinstance(a, Exploit):
                plan = self.state.exploit_plan(a, reporting, epoch)
                init = self.workspace.exploit(plan, dict(a.params))
                old = self.state.models[target]
                discard.extend((old.checkpoint, old.start_checkpoint))
                self._emit("exploit", model_id=target, source=a.source, params=dict(a.params))
                applied.append({"model_id": target, "action": "exploit", "status": statuses[target], "source": a.source,
                                "source_checkpoint": plan.source_checkpoint, "epoch": plan.next_epoch - 1,
                                "old_params": dict(old.params), "params": dict(a.params), "spec": init.spec_path,
                                "checkpoint": init.checkpoint, "checksum": init.checksum, "spec_version": plan.spec_version})
                continue
            if isinstance(a, Continue):
                status, action = "running", "continue"
                events.append(ModelContinued(target))
            elif isinstance(a, Stop):
                status, action = ("completed" if a.reason == "finished" else "stopped"), "stop"
                events.append(ModelStopped(target))
            else:
                status, action = "paused", "pause"
            statuses[target] = status
            applied.append({"model_id": target, "action": action, "status": status, "reason": getattr(a, "reason", "")})
        return applied, events, discard

    def _abandon(self, cmd: AbandonModel) -> None:
        model = self.state.models[cmd.model_id]
        error = cmd.error or model.error or "unknown error"
        self._commit(ModelFailure(model.model_id, cmd.epoch, error, time=self.clock()))
        self._emit("model_failed", model_id=model.model_id, params=model.params, error=error)
        self._emit("model_ended", model_id=model.model_id, status="failed")
        self._driver_reacts(self.driver.on_model_failed(model.model_id, model.params, error))
        self._check_failures(error)

    # ------------------------------------------------------------------ listeners

    def _emit(self, event: str, **info: Any) -> None:
        if self.listener is not None:
            self.listener(event, info)
