"""The model hopper parallelism (MOP) scheduler: a pure state machine.

Data is partitioned once: worker ``w`` owns training partition ``w`` and validation partition
``w``.  A model's epoch is one *train* visit on every partition (each on the worker serving
it), followed by one *eval* visit on every validation partition.  Each partition is served by
exactly one worker: its owner, until that worker is retired (:class:`WorkerRetired`, a worker
that keeps dying); its partitions then move to the workers left, which serve several.  Between two visits
the model's checkpoint "hops" to another worker.  After the last eval visit the scheduler
emits :class:`~cerebro.core.events.EndEpoch` and the model waits until the search driver
answers with :class:`~cerebro.core.events.ModelContinued` or
:class:`~cerebro.core.events.ModelStopped`.

The scheduler is *pure* (in the style of Dask's ``worker_state_machine``): it does no I/O,
no logging, no sleeping and owns no threads; its state changes only through
:meth:`MOPScheduler.handle`, which takes events (what happened) and returns commands (what the
engine must do next).  Given the same sequence of ``handle`` calls it returns the same
commands, so an experiment's scheduling can be recorded and replayed.

Two modes:

``"dynamic"`` (work conserving)
    A model may take any partition it still needs in its current phase.  After every
    ``handle`` no alive, free worker is left idle while some free model needs a partition it
    serves.
    Free workers are matched greedily, fewest candidates first; each worker picks, in order of
    preference, (1) a model whose previous visit ran on this worker (its state is still in the
    worker's memory), (2) the model with the most visits left in its current epoch, (3) the
    lower epoch, (4) the lower ``index``.

``"deterministic"``
    A model's train visits in epoch ``e`` follow the fixed order :meth:`MOPScheduler.epoch_order`
    (one permutation drawn from ``(seed, e)``, read cyclically from the model's ``index``, so
    that models added together start on different workers), so what a model sees never depends on
    timing.  Eval visits may run in any order (evaluation does not change the model).  Within
    that restriction work is still assigned greedily, as in dynamic mode, with one more
    preference between (1) and (2): the model whose next report is due first in logical time
    (the ``due`` tick of :class:`ModelAdded`, :class:`ModelContinued` and :class:`ModelRestored`,
    see :mod:`cerebro.core.order`).  The driver hears reports in that order, so finishing them
    in that order keeps models from waiting on one another; a model that is ahead fills
    workers that would otherwise be idle.  (Preferences never change what a model learns.)
"""

from __future__ import annotations

import heapq
from typing import Union


from cerebro._checks import is_int
from cerebro.core.seeds import epoch_partition_order
from cerebro.errors import CerebroError

from cerebro.core.events import (
    AbandonModel,
    Command,
    EndEpoch,
    EvaluateSubEpoch,
    Event,
    Kind,
    ModelAdded,
    ModelContinued,
    ModelRestored,
    ModelRolledBack,
    ModelStopped,
    SubEpochFailed,
    SubEpochFinished,
    TrainSubEpoch,
    WorkerJoined,
    WorkerLost,
    WorkerRetired,
)

__all__ = ["MOPScheduler", "SchedulerError"]

_MODES = ("dynamic", "deterministic")

# Internal model phases.  TRAIN and EVAL are both reported as "running" by status().
_TRAIN = "train"
_EVAL = "eval"
_AWAITING = "awaiting"
_ENDED = "ended"
_FAILED = "failed"

Visit = Union[TrainSubEpoch, EvaluateSubEpoch]


class SchedulerError(CerebroError):
    """An event that makes no sense in the scheduler's current state.

    Examples: an unknown model, a worker number out of range, finishing or failing a visit
    that is not running, continuing a model that does not await a decision.  It always means
    the engine and the scheduler disagree, so it is raised, never ignored.
    """


class _Model:
    """The scheduler's record of one model (internal, mutable)."""

    __slots__ = (
        "model_id",
        "index",
        "epoch",
        "phase",
        "remaining_train",
        "committed_train",
        "remaining_eval",
        "committed_eval",
        "order",
        "running",
        "last_worker",
        "stop_requested",
        "attempts",
        "free_parts",
        "key",
        "due",
    )

    def __init__(self, model_id: str, index: int) -> None:
        self.model_id = model_id
        self.index = index
        self.epoch = 0
        self.phase = _TRAIN
        self.remaining_train: set[int] = set()
        self.committed_train: list[int] = []  # in commit order
        self.remaining_eval: set[int] = set()
        self.committed_eval: list[int] = []
        self.order: tuple[int, ...] | None = None  # deterministic mode only
        self.running: int | None = None  # worker running this model's visit
        # Worker of the model's previous visit while that worker still holds the model's state
        # in memory (cleared when the worker is lost).  Drives the affinity preference.
        self.last_worker: int | None = None
        self.stop_requested = False
        self.attempts: dict[tuple[int, Kind], int] = {}  # (partition, kind) -> failures, this epoch
        # Partitions under which the model is indexed as a candidate (empty unless free).
        self.free_parts: tuple[int, ...] = ()
        # Preference key (see _preference) fixed when the model was last indexed as free.
        self.key = -1
        self.due = 0  # deterministic mode: the logical tick of its next report (cerebro.core.order)

    def visits_left(self) -> int:
        """Train plus eval visits still to commit in the current epoch."""
        return len(self.remaining_train) + len(self.remaining_eval)


class MOPScheduler:
    """Assigns train and eval visits of models to workers (model hopper parallelism).

    Contract:

    * Workers and partitions are numbered ``0 .. num_partitions-1``; partition ``q`` is served
      by worker ``q`` until that worker is retired (:class:`WorkerRetired`), and a worker only
      ever runs visits on the partitions it serves (:attr:`servers`).  A worker is not alive
      until :class:`WorkerJoined`; a retired worker never joins again.
    * Every command returned by :meth:`handle` that is a :class:`TrainSubEpoch` or
      :class:`EvaluateSubEpoch` is *in flight* until the engine reports it with
      :class:`SubEpochFinished` / :class:`SubEpochFailed` (same model, worker, epoch,
      partition and kind) or the worker is lost (:class:`WorkerLost`).
    * Within one epoch each partition is committed exactly once for train and once for eval;
      eval starts only after every train visit of the epoch committed.
    * A failed visit (``SubEpochFailed``, or ``WorkerLost`` while it ran) is retried up to
      ``max_retries`` times (the command's ``attempt`` counts the earlier failures); one more
      failure abandons the model (:class:`AbandonModel`, status ``"failed"``).
      :class:`ModelRolledBack` ends the visit without counting a failure and restarts the
      model's epoch from scratch.
    * Invalid events raise :class:`SchedulerError`.  Each event is checked before it changes
      anything, so a ``handle`` call with a single invalid event leaves the scheduler as it
      was; in a multi-event call the events before the invalid one have been applied but their
      commands are lost, so the scheduler must then be treated as broken.
    """

    def __init__(self, num_partitions: int, *, mode: str = "dynamic", seed: int = 0, max_retries: int = 2) -> None:
        if not is_int(num_partitions) or num_partitions < 1:
            raise ValueError(f"num_partitions must be an integer >= 1, got {num_partitions!r}")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if not is_int(max_retries) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if not is_int(seed) or seed < 0:
            # numpy's SeedSequence rejects negative entropy; fail here rather than at ModelAdded.
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.num_partitions = int(num_partitions)
        self.mode = mode
        self.seed = int(seed)
        self.max_retries = int(max_retries)
        self._deterministic = mode == "deterministic"

        p = self.num_partitions
        self._models: dict[str, _Model] = {}
        self._by_index: dict[int, _Model] = {}  # index is unique; heap entries refer to it
        self._live: set[str] = set()  # models neither ended nor failed
        self._alive = [False] * p
        self._free_workers: set[int] = set()  # alive and not running anything
        self._server = list(range(p))  # partition -> the worker serving it
        self._serves: list[list[int]] = [[w] for w in range(p)]  # worker -> its partitions, sorted
        self._retired: set[int] = set()
        self._in_flight: dict[int, Visit] = {}
        # Candidate index, kept incrementally so that a decision never scans all models:
        #   _need[w]   free models that may run on worker w right now (in their current phase;
        #              in deterministic train phase only if w is their next partition),
        #   _heap[w]   preference keys (2)-(4) of those models, a min-heap of plain ints
        #              (cheap to compare); lazily cleaned: an entry is live iff its model
        #              is in _need[w] and still has that key,
        #   _affine[q] the subset of _need[q] whose previous visit ran on the worker serving q
        #              (preference 1).
        # Indexed by partition; worker w's candidates are those of the partitions it serves.
        self._need: list[set[str]] = [set() for _ in range(p)]
        self._heap: list[list[int]] = [[] for _ in range(p)]
        self._affine: list[set[str]] = [set() for _ in range(p)]
        self._pushes = 0  # heap pushes since the last _sweep
        self._sweep_at = 4096

    # ------------------------------------------------------------------ public API

    def handle(self, *events: Event) -> list[Command]:
        """Apply ``events`` in order, then assign work to every free, alive worker it can.

        Returns the commands in a deterministic order: first those caused by the events
        (:class:`EndEpoch`, :class:`AbandonModel`) in event order, then the new
        :class:`TrainSubEpoch` / :class:`EvaluateSubEpoch` assignments sorted by worker.
        ``handle()`` with no events only assigns.  Raises :class:`SchedulerError` on an event
        that makes no sense (see the class docstring for what is then left applied).
        """
        out: list[Command] = []
        for event in events:
            out.extend(self._apply(event))
        out.extend(self._assign())
        return out

    def status(self, model_id: str) -> str:
        """``"running"`` (inside an epoch, in flight or waiting for a worker), ``"awaiting"``
        (after a non-final :class:`EndEpoch`, until answered), ``"ended"`` or ``"failed"``."""
        phase = self._model(model_id).phase
        return "running" if phase in (_TRAIN, _EVAL) else phase

    def epoch_of(self, model_id: str) -> int:
        """The model's current epoch (1-based); for an ended or failed model its last epoch."""
        return self._model(model_id).epoch

    def epoch_order(self, model_id: str, epoch: int) -> tuple[int, ...]:
        """The fixed train partition order of ``model_id`` in ``epoch`` (1-based).

        With ``base = numpy.random.default_rng([seed, epoch]).permutation(num_partitions)`` and
        ``p = num_partitions``: ``tuple(base[(index + k) % p] for k in range(p))``.
        Deterministic mode follows it; in dynamic mode it is still defined but not followed.
        """
        m = self._model(model_id)
        if not is_int(epoch) or epoch < 1:
            raise SchedulerError(f"epoch must be an integer >= 1, got {epoch!r}")
        if m.order is not None and epoch == m.epoch:
            return m.order
        return self._order(m.index, int(epoch))

    @property
    def in_flight(self) -> dict[int, TrainSubEpoch | EvaluateSubEpoch]:
        """Worker -> the visit it is running (a copy, sorted by worker)."""
        return dict(sorted(self._in_flight.items()))

    @property
    def servers(self) -> dict[int, int]:
        """Partition -> the worker serving it (a copy)."""
        return dict(enumerate(self._server))

    @property
    def retired(self) -> frozenset[int]:
        """Workers taken out of the pool (:class:`WorkerRetired`)."""
        return frozenset(self._retired)

    @property
    def idle(self) -> bool:
        """Nothing in flight and every model ended or failed.

        A later :class:`ModelAdded` makes the scheduler busy again.
        """
        return not self._in_flight and not self._live

    # ------------------------------------------------------------------ invariants

    def validate(self) -> None:
        """Check every invariant; raise :class:`SchedulerError` naming the first one broken.

        Cost is O(models x partitions): meant for tests and debugging, not the hot path.
        """
        p = self.num_partitions
        everything = set(range(p))

        def fail(msg: str) -> None:
            raise SchedulerError(f"invariant broken: {msg}")

        expect_free = {w for w in range(p) if self._alive[w] and w not in self._in_flight}
        if self._free_workers != expect_free:
            fail(f"free workers {sorted(self._free_workers)} != alive and idle {sorted(expect_free)}")
        for w in range(p):
            if w in self._retired and (self._alive[w] or self._serves[w]):
                fail(f"retired worker {w} is alive or serves partitions {self._serves[w]}")
            if self._serves[w] != sorted(q for q in range(p) if self._server[q] == w):
                fail(f"worker {w} serves {self._serves[w]} but the partition map says otherwise")
        for q in range(p):
            if self._server[q] in self._retired:
                fail(f"partition {q} is served by retired worker {self._server[q]}")

        running_models: dict[str, int] = {}
        for w, cmd in self._in_flight.items():
            if not 0 <= w < p or not self._alive[w]:
                fail(f"worker {w} runs {cmd} but is not alive")
            if cmd.worker != w or not 0 <= cmd.partition < p or self._server[cmd.partition] != w:
                fail(f"worker {w} runs {cmd} on a partition it does not serve ({self._serves[w]})")
            if cmd.model_id in running_models:
                fail(f"model {cmd.model_id!r} runs on workers {running_models[cmd.model_id]} and {w}")
            running_models[cmd.model_id] = w
            m = self._models.get(cmd.model_id)
            if m is None:
                fail(f"worker {w} runs unknown model {cmd.model_id!r}")
            if m.running != w:
                fail(f"model {m.model_id!r} in flight on {w} but records running={m.running}")
            kind = _TRAIN if isinstance(cmd, TrainSubEpoch) else _EVAL
            if m.phase != kind or cmd.epoch != m.epoch:
                fail(f"{cmd} does not match model phase {m.phase} epoch {m.epoch}")
            remaining = m.remaining_train if kind == _TRAIN else m.remaining_eval
            if cmd.partition not in remaining:
                fail(f"{cmd} runs a partition the model does not need")
            if cmd.attempt != m.attempts.get((cmd.partition, kind), 0):
                fail(f"{cmd} attempt != recorded failures {m.attempts.get((cmd.partition, kind), 0)}")

        live = set()
        want_need: list[set[str]] = [set() for _ in range(p)]
        want_affine: list[set[str]] = [set() for _ in range(p)]
        for mid, m in self._models.items():
            if m.phase in (_TRAIN, _EVAL, _AWAITING):
                live.add(mid)
            if m.running is not None and running_models.get(mid) != m.running:
                fail(f"model {mid!r} records running on {m.running} but that worker does not run it")
            if m.phase not in (_TRAIN, _EVAL) and m.running is not None:
                fail(f"model {mid!r} is {m.phase} but running on {m.running}")
            if m.epoch < 1:
                fail(f"model {mid!r} has epoch {m.epoch}")
            for committed, remaining, what in (
                (m.committed_train, m.remaining_train, "train"),
                (m.committed_eval, m.remaining_eval, "eval"),
            ):
                if len(set(committed)) != len(committed):
                    fail(f"model {mid!r} committed a {what} partition twice in epoch {m.epoch}: {committed}")
                if set(committed) & remaining or set(committed) | remaining != everything:
                    fail(f"model {mid!r} {what}: committed {committed} and remaining {sorted(remaining)} inconsistent")
            if m.phase == _TRAIN and m.committed_eval:
                fail(f"model {mid!r} evaluated before finishing training")
            if m.phase == _EVAL and m.remaining_train:
                fail(f"model {mid!r} in eval phase with train left {sorted(m.remaining_train)}")
            if m.phase in (_AWAITING, _ENDED) and (m.remaining_train or m.remaining_eval):
                fail(f"model {mid!r} is {m.phase} with visits left")
            if self._deterministic:
                # (Recomputing epoch_order here would dominate validate(); the tests check the
                # order against numpy independently.)
                if m.order is None or sorted(m.order) != list(range(p)):
                    fail(f"model {mid!r} order {m.order} is not a permutation of the partitions")
                if tuple(m.committed_train) != m.order[: len(m.committed_train)]:
                    fail(f"model {mid!r} trained {m.committed_train}, not a prefix of {m.order}")
            if m.phase != _FAILED:
                for key, n in m.attempts.items():
                    if n > self.max_retries:
                        fail(f"model {mid!r} failed {key} {n} times but is not failed")
            # Candidate index: a free model is indexed under exactly the partitions it may take.
            expect = self._allowed(m) if m.phase in (_TRAIN, _EVAL) and m.running is None else ()
            if set(m.free_parts) != set(expect):
                fail(f"model {mid!r} indexed under {sorted(m.free_parts)}, expected {sorted(expect)}")
            if m.last_worker is not None and not self._alive[m.last_worker]:
                fail(f"model {mid!r} has affinity to worker {m.last_worker}, which is not alive")
            for q in expect:
                want_need[q].add(mid)
                if m.last_worker is not None and self._server[q] == m.last_worker:
                    want_affine[q].add(mid)
        if live != self._live:
            fail(f"live models {sorted(self._live)} != {sorted(live)}")
        for q in range(p):
            if self._need[q] != want_need[q]:
                fail(f"candidates of partition {q}: {sorted(self._need[q])} != {sorted(want_need[q])}")
            if self._affine[q] != want_affine[q]:
                fail(f"affine models of partition {q}: {sorted(self._affine[q])} != {sorted(want_affine[q])}")
            valid = set()
            for key in self._heap[q]:
                m = self._by_index.get(key & _INDEX_MASK)
                if m is not None and m.key == key:
                    valid.add(m.model_id)
            if not self._need[q] <= valid:
                fail(f"heap of partition {q} misses {sorted(self._need[q] - valid)}")
        # Work conservation (both modes, relative to what each mode allows): handle() always
        # ends with a maximal assignment, so no free worker can have a candidate.
        for w in self._free_workers:
            for q in self._serves[w]:
                if self._need[q]:
                    fail(f"worker {w} idle while models {sorted(self._need[q])} could run on its partition {q}")

    # ------------------------------------------------------------------ events

    def _apply(self, event: Event) -> list[Command]:
        if isinstance(event, SubEpochFinished):
            return self._on_finished(event)
        if isinstance(event, SubEpochFailed):
            return self._on_failed(event)
        if isinstance(event, WorkerJoined):
            return self._on_worker_joined(event)
        if isinstance(event, WorkerLost):
            return self._on_worker_lost(event)
        if isinstance(event, WorkerRetired):
            return self._on_worker_retired(event)
        if isinstance(event, ModelRolledBack):
            return self._on_rolled_back(event)
        if isinstance(event, ModelAdded):
            return self._on_model_added(event)
        if isinstance(event, ModelRestored):
            return self._on_model_restored(event)
        if isinstance(event, ModelContinued):
            return self._on_model_continued(event)
        if isinstance(event, ModelStopped):
            return self._on_model_stopped(event)
        raise SchedulerError(f"not an event: {event!r}")

    def _on_worker_joined(self, ev: WorkerJoined) -> list[Command]:
        w = self._worker(ev.worker)
        if self._alive[w]:
            raise SchedulerError(f"worker {w} joined but is already alive")
        if w in self._retired:
            raise SchedulerError(f"worker {w} joined but it was retired")
        self._alive[w] = True
        self._free_workers.add(w)
        return []

    def _on_worker_lost(self, ev: WorkerLost) -> list[Command]:
        w = self._worker(ev.worker)
        if not self._alive[w]:
            raise SchedulerError(f"worker {w} lost but it is not alive")
        self._alive[w] = False
        self._free_workers.discard(w)
        cmd = self._in_flight.pop(w, None)
        # The worker's memory is gone: no model's state is cached there any more.  Rare event,
        # so a scan of all models is fine.
        for q in self._serves[w]:
            self._affine[q].clear()  # its entries are exactly the models whose last worker is w
        for m in self._models.values():
            if m.last_worker == w:
                m.last_worker = None
        if cmd is None:
            return []
        m = self._models[cmd.model_id]
        m.running = None
        return self._fail(m, cmd.partition, _kind(cmd), ev.reason or f"worker {w} lost")

    def _on_worker_retired(self, ev: WorkerRetired) -> list[Command]:
        w = self._worker(ev.worker)
        if w in self._retired:
            raise SchedulerError(f"worker {w} retired twice")
        if self._alive[w]:
            raise SchedulerError(f"worker {w} retired while alive (report it lost first)")
        left = [x for x in range(self.num_partitions) if x != w and x not in self._retired]
        if not left:
            raise SchedulerError(f"worker {w} is the last worker of the pool: it cannot be retired")
        self._retired.add(w)
        moved, self._serves[w] = self._serves[w], []
        models = self._models
        for q in moved:
            # The fewest partitions first (spreads the load), then an alive worker, then the lower
            # number: a pure function of the events, so a replay moves them the same way.
            to = min(left, key=lambda x: (len(self._serves[x]), not self._alive[x], x))
            self._server[q] = to
            self._serves[to] = sorted(self._serves[to] + [q])
            # (w was lost before, so no model has it as last worker: _affine[q] is empty.)
            self._affine[q] = {mid for mid in self._need[q] if models[mid].last_worker == to}
        return []

    def _on_rolled_back(self, ev: ModelRolledBack) -> list[Command]:
        cmd = self._running_visit(ev)
        m = self._models[cmd.model_id]
        self._end_visit(cmd)
        m.last_worker = None  # whatever a worker holds of this model is not the state it restarts from
        # The epoch starts over from its boundary: every train and eval visit again, with fresh
        # retry counts; the same epoch number keeps the same deterministic order and seeds.
        self._start_epoch(m, m.epoch)
        return []

    def _on_model_added(self, ev: ModelAdded) -> list[Command]:
        due = self._due(ev)
        m = self._register(ev.model_id, ev.index)
        m.due = due
        self._start_epoch(m, 1)
        return []

    def _on_model_restored(self, ev: ModelRestored) -> list[Command]:
        p = self.num_partitions
        if ev.status not in ("running", "awaiting", "ended", "failed"):
            raise SchedulerError(f"model {ev.model_id!r} restored with unknown status {ev.status!r}")
        if not is_int(ev.epoch) or ev.epoch < 1:
            raise SchedulerError(f"model {ev.model_id!r} restored with epoch {ev.epoch!r}; expected an integer >= 1")
        for what, parts in (("trained", ev.trained), ("evaluated", ev.evaluated)):
            if len(set(parts)) != len(parts) or any(not 0 <= q < p for q in parts):
                raise SchedulerError(f"model {ev.model_id!r} restored with {what}={parts!r}: not distinct partitions of 0..{p - 1}")
        if ev.evaluated and len(ev.trained) != p:
            raise SchedulerError(f"model {ev.model_id!r} restored as evaluated before it finished training")
        if self._deterministic and ev.status == "running":
            order = self._order(int(ev.index), int(ev.epoch))
            if tuple(ev.trained) != order[: len(ev.trained)]:
                raise SchedulerError(f"model {ev.model_id!r} restored with trained={ev.trained}, not a prefix of its order {order}")
        due = self._due(ev)
        m = self._register(ev.model_id, ev.index)
        m.due = due
        self._start_epoch(m, int(ev.epoch))
        self._unindex(m)
        if ev.status in ("awaiting", "ended"):
            trained, evaluated = tuple(range(p)), tuple(range(p))
        else:
            trained, evaluated = tuple(ev.trained), tuple(ev.evaluated)
        for q in trained:
            m.remaining_train.discard(q)
            m.committed_train.append(q)
        for q in evaluated:
            m.remaining_eval.discard(q)
            m.committed_eval.append(q)
        if ev.status in ("ended", "failed"):
            m.phase = _ENDED if ev.status == "ended" else _FAILED
            self._live.discard(m.model_id)
            return []
        if ev.status == "awaiting":
            m.phase = _AWAITING
            return []
        if not m.remaining_train:
            m.phase = _EVAL
            if not m.remaining_eval:
                m.phase = _AWAITING
                return [EndEpoch(m.model_id, m.epoch)]
        self._index(m)
        return []

    def _register(self, model_id: str, index: int) -> _Model:
        ev = ModelAdded(model_id, index)
        if ev.model_id in self._models:
            raise SchedulerError(f"model {ev.model_id!r} added twice")
        index = ev.index
        if not is_int(index) or index < 0:
            raise SchedulerError(f"model {ev.model_id!r}: index must be an integer >= 0, got {index!r}")
        if index > _INDEX_MASK:
            raise SchedulerError(f"model {ev.model_id!r}: index {index} too large (max {_INDEX_MASK})")
        if int(index) in self._by_index:
            # The index seeds the model's partition orders and breaks ties: it must be unique.
            raise SchedulerError(f"model {ev.model_id!r}: index {index} already used by another model")
        m = _Model(ev.model_id, int(index))
        self._models[m.model_id] = m
        self._by_index[m.index] = m
        self._live.add(m.model_id)
        return m

    def _on_model_continued(self, ev: ModelContinued) -> list[Command]:
        m = self._model(ev.model_id)
        if m.phase != _AWAITING:
            raise SchedulerError(f"model {m.model_id!r} continued but it is {self.status(m.model_id)}, not awaiting")
        m.due = self._due(ev)
        self._start_epoch(m, m.epoch + 1)
        return []

    def _on_model_stopped(self, ev: ModelStopped) -> list[Command]:
        m = self._model(ev.model_id)
        if m.phase == _AWAITING:
            m.phase = _ENDED
            self._live.discard(m.model_id)
        elif m.phase in (_TRAIN, _EVAL):
            # Finish (train and evaluate) the current epoch first; its EndEpoch is final.
            m.stop_requested = True
        # Ended: no-op (spec).  Failed: no-op too, the model is already over; a stop may cross
        # an AbandonModel on its way to the engine.
        return []

    def _on_finished(self, ev: SubEpochFinished) -> list[Command]:
        cmd = self._running_visit(ev)
        m = self._models[cmd.model_id]
        self._end_visit(cmd)
        p = cmd.partition
        if ev.kind == _TRAIN:
            m.remaining_train.discard(p)
            m.committed_train.append(p)
            if not m.remaining_train:
                m.phase = _EVAL
        else:
            m.remaining_eval.discard(p)
            m.committed_eval.append(p)
            if not m.remaining_eval:
                if m.stop_requested:
                    m.phase = _ENDED
                    self._live.discard(m.model_id)
                    return [EndEpoch(m.model_id, m.epoch, final=True)]
                m.phase = _AWAITING
                return [EndEpoch(m.model_id, m.epoch)]
        self._index(m)
        return []

    def _on_failed(self, ev: SubEpochFailed) -> list[Command]:
        cmd = self._running_visit(ev)
        m = self._models[cmd.model_id]
        self._end_visit(cmd)
        # What the failed visit left in the worker's memory is not the committed state: the
        # retry reloads the checkpoint wherever it runs, so there is no affinity to keep.
        m.last_worker = None
        return self._fail(m, cmd.partition, ev.kind, ev.error, ev.retryable)

    # ------------------------------------------------------------------ transitions

    def _due(self, ev: ModelAdded | ModelContinued | ModelRestored) -> int:
        """The event's due tick, checked (before the event changes anything); 0 in dynamic mode."""
        if not is_int(ev.due) or ev.due < 0:
            raise SchedulerError(f"model {ev.model_id!r}: due must be an integer >= 0, got {ev.due!r}")
        return int(ev.due) if self._deterministic else 0

    def _start_epoch(self, m: _Model, epoch: int) -> None:
        p = self.num_partitions
        m.epoch = epoch
        m.phase = _TRAIN
        m.remaining_train = set(range(p))
        m.committed_train = []
        m.remaining_eval = set(range(p))
        m.committed_eval = []
        m.attempts = {}
        if self._deterministic:
            m.order = self._order(m.index, epoch)
        self._index(m)

    def _end_visit(self, cmd: Visit) -> None:
        """The visit on ``cmd.worker`` is over (committed or failed); worker and model free."""
        w = cmd.worker
        del self._in_flight[w]
        self._free_workers.add(w)  # it was in flight, so it is alive
        self._models[cmd.model_id].running = None

    def _fail(self, m: _Model, partition: int, kind: Kind, error: str, retryable: bool = True) -> list[Command]:
        key = (partition, kind)
        m.attempts[key] = m.attempts.get(key, 0) + 1
        if m.attempts[key] > self.max_retries or not retryable:
            m.phase = _FAILED
            self._live.discard(m.model_id)
            return [AbandonModel(m.model_id, m.epoch, partition, kind, error)]
        self._index(m)  # free again; the same visit is still needed and will be retried
        return []

    # ------------------------------------------------------------------ assignment

    def _assign(self) -> list[Command]:
        """Greedy maximal matching of free workers to free models.

        Workers are served fewest candidates first (recomputed after each assignment), which
        leaves the more flexible workers for later and so tends to match more pairs.  Ties go
        first to a worker that holds a candidate's state in memory (otherwise another worker
        with the same count could take that model and force a reload), then to the lower
        worker number.  The loop runs until no free worker has a candidate: that is the
        work-conservation guarantee.
        """
        need, affine, server, serves = self._need, self._affine, self._server, self._serves
        # Candidates are partitions (whose serving worker is free); a worker serving several
        # drops out with all of them once it is given a visit.
        cands = [q for w in self._free_workers for q in serves[w] if need[q]]
        out: list[Command] = []
        while cands:
            q = min(cands, key=lambda r: (len(need[r]), not affine[r], r))
            w = server[q]
            m = self._pick(q)
            kind = m.phase
            attempt = m.attempts.get((q, kind), 0)
            cmd: Visit
            if kind == _TRAIN:
                cmd = TrainSubEpoch(m.model_id, w, m.epoch, q, attempt)
            else:
                cmd = EvaluateSubEpoch(m.model_id, w, m.epoch, q, attempt)
            self._unindex(m)
            m.running = w
            m.last_worker = w
            self._in_flight[w] = cmd
            self._free_workers.discard(w)
            out.append(cmd)
            cands = [r for r in cands if server[r] != w and need[r]]
        out.sort(key=lambda c: c.worker)
        return out

    def _pick(self, q: int) -> _Model:
        """The preferred candidate for partition ``q`` (``_need[q]`` must be non-empty)."""
        affine = self._affine[q]
        if affine:
            # (1) its state is still in the serving worker's memory.  Usually one model, so a
            # scan is cheap.
            return min((self._models[mid] for mid in affine), key=lambda m: m.key)
        heap, need, by_index = self._heap[q], self._need[q], self._by_index
        while True:
            # Pop in both cases: a live top is about to be assigned, a stale one (model
            # assigned elsewhere, or re-indexed with another key) is garbage.
            key = heapq.heappop(heap)
            m = by_index[key & _INDEX_MASK]
            if m.key == key and m.model_id in need:
                return m

    def _allowed(self, m: _Model) -> tuple[int, ...]:
        """Partitions a free model may take now, in its current phase."""
        if m.phase == _TRAIN:
            if self._deterministic:
                return (m.order[len(m.committed_train)],)
            return tuple(m.remaining_train)
        if m.phase == _EVAL:
            return tuple(m.remaining_eval)
        return ()

    def _index(self, m: _Model) -> None:
        """Register a model that just became free as a candidate for the partitions it may take.

        Its preference key is fixed while it stays free (visits left, epoch and index only
        change while it runs or awaits), so one heap entry per partition is enough.
        """
        parts = self._allowed(m)
        m.free_parts = parts
        key = m.key = _preference(m)
        mid = m.model_id
        need, heap, push = self._need, self._heap, heapq.heappush  # hot loop: local names
        for q in parts:
            need[q].add(mid)
            push(heap[q], key)
        if m.last_worker is not None:
            for q in self._serves[m.last_worker]:
                if q in parts:
                    self._affine[q].add(mid)
        self._pushes += len(parts)
        if self._pushes >= self._sweep_at:
            self._sweep()

    def _sweep(self) -> None:
        """Rebuild heaps that are mostly stale entries, so memory stays O(candidates).

        _pick drops stale entries as it meets them, but the heap of a worker that is dead (or
        rarely picked) would only grow.  Sweeping after as many pushes as there are live
        entries (at least 4096) keeps the amortized cost O(1) per push.
        """
        models = self._models
        live = 0
        for q in range(self.num_partitions):
            need, heap = self._need[q], self._heap[q]
            if len(heap) > 2 * len(need) + 32:
                heap[:] = [models[x].key for x in need]
                heapq.heapify(heap)
            live += len(need)
        self._pushes = 0
        self._sweep_at = max(4096, live)

    def _unindex(self, m: _Model) -> None:
        mid = m.model_id
        need = self._need
        for q in m.free_parts:
            need[q].discard(mid)
        if m.last_worker is not None:
            for q in self._serves[m.last_worker]:
                self._affine[q].discard(mid)
        m.free_parts = ()

    # ------------------------------------------------------------------ helpers

    def _order(self, index: int, epoch: int) -> tuple[int, ...]:
        return epoch_partition_order(self.seed, index, epoch, self.num_partitions)

    def _model(self, model_id: str) -> _Model:
        try:
            return self._models[model_id]
        except (KeyError, TypeError):
            raise SchedulerError(f"unknown model {model_id!r}") from None

    def _worker(self, worker: int) -> int:
        if not is_int(worker) or not 0 <= worker < self.num_partitions:
            raise SchedulerError(f"worker {worker!r} out of range 0..{self.num_partitions - 1}")
        return int(worker)

    def _running_visit(self, ev: SubEpochFinished | SubEpochFailed | ModelRolledBack) -> Visit:
        """The in-flight command ``ev`` reports on; SchedulerError unless it matches exactly."""
        w = self._worker(ev.worker)
        cmd = self._in_flight.get(w)
        if (
            cmd is None
            or cmd.model_id != ev.model_id
            or cmd.epoch != ev.epoch
            or cmd.partition != ev.partition
            or _kind(cmd) != ev.kind
        ):
            what = type(ev).__name__
            raise SchedulerError(f"{what} {ev!r} does not match the visit running on worker {w}: {cmd!r}")
        return cmd


def _kind(cmd: Visit) -> Kind:
    return _TRAIN if isinstance(cmd, TrainSubEpoch) else _EVAL


# A preference key packs (most visits left, lower epoch, lower index) into one int, so heap
# comparisons are int comparisons; the low bits are the (unique) index, which identifies the
# model.  Visits left are at most 2 * num_partitions, so they are stored as (_VISITS_CAP -
# visits left) and never go negative.
_INDEX_BITS = 48
_EPOCH_BITS = 40
_INDEX_MASK = (1 << _INDEX_BITS) - 1
_EPOCH_MASK = (1 << _EPOCH_BITS) - 1
_VISITS_CAP = 1 << 40


_DUE_SHIFT = _INDEX_BITS + _EPOCH_BITS + 41   # above the visits field (_VISITS_CAP - visits < 2**41)


def _preference(m: _Model) -> int:
    """Smaller is preferred: the earliest due report (deterministic mode; 0 otherwise), then most
    visits left, then lower epoch, then lower index.

    Ties are impossible: the index is unique among models.
    """
    epoch = min(m.epoch, _EPOCH_MASK)  # > 10^12 epochs never happens; saturate rather than alias
    return ((m.due << _DUE_SHIFT) | ((_VISITS_CAP - m.visits_left()) << (_INDEX_BITS + _EPOCH_BITS))
            | (epoch << _INDEX_BITS) | m.index)
