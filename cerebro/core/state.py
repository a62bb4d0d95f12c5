"""The experiment state and its one reducer, :meth:`ExperimentState.apply`.  Pure.

Everything an experiment has committed (models and their checkpoints, visits, epochs, the
driver's saved state, the best checkpoint, failures) is a function of its journal: the state
after a record is ``apply(record)`` on the state before it.  The live engine applies each
record right after journaling it; resume applies the journal's records to a fresh state; the
driver contract suite drives the same reducer.  One set of rules, so the three cannot drift.

Queries (no mutation): which checkpoints retention must keep, the scheduler events that bring
a restored experiment back, an epoch's row-weighted metrics, and what an exploit would copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import CerebroError
from . import statediff
from .actions import Exploit, target_of
from .events import ModelRestored
from .metrics import is_better
from .records import (
    BestModel, CreationFailure, DriverUpdate, EpochResult, ModelCreation, ModelFailure, Record, Rollback, RunMark,
    Suggestion, Visit, WorkerRetirement,
)

__all__ = ["ModelState", "ExperimentState", "ExploitPlan", "weighted_means"]


@dataclass
class ModelState:
    """One model (configuration) as committed so far."""

    model_id: str
    index: int
    params: dict[str, Any]
    spec_path: str
    checkpoint: str
    status: str = "running"            # running | paused | completed | stopped | failed
    epochs_done: int = 0
    hops: int = 0                      # committed training visits in the current epoch
    error: str | None = None           # the first failure's traceback
    checksum: str | None = None        # sha256 of the latest committed checkpoint
    spec_version: int = 0              # bumped when an exploit gives the model new parameters
    epoch_checkpoint: str = ""         # the state at its last epoch boundary (what PBT copies)
    task_extra: dict[str, Any] = field(default_factory=dict)
    epoch_checksum: str | None = None
    sums: dict[tuple[int, str], dict[str, float]] = field(default_factory=dict)
    trained: list[int] = field(default_factory=list)     # partitions trained in the current epoch
    evaluated: list[int] = field(default_factory=list)   # partitions evaluated in the current epoch
    # The state the current epoch started from (the initial state in epoch 1, else the epoch
    # boundary): kept by retention, it is where a lost latest checkpoint rolls back to.
    start_checkpoint: str = ""
    start_checksum: str | None = None
    rollbacks: int = 0                 # rollbacks in the current epoch
    lost: list[str] = field(default_factory=list)        # checkpoints found unusable in the current epoch
    # The logical tick of the report the driver awaits from this model (the end of its current
    # epoch, or its abandonment); None when none is awaited (see cerebro.core.order).
    tick: int | None = None


@dataclass(frozen=True)
class ExploitPlan:
    """What an ``Exploit`` copies, computed before the epoch's record is applied."""

    target: str
    source: str
    target_index: int
    spec_version: int                  # the target's new spec version
    next_epoch: int                    # the epoch the target trains next
    features: Any                      # the target's feature columns (None: all)
    source_spec: str
    source_checkpoint: str             # the source's latest epoch-boundary state
    source_checksum: str | None


def weighted_means(sums: Mapping[str, float]) -> dict[str, float]:
    """Row-weighted means from ``{"rows": n, name: sum(value * rows)}``."""
    rows = sums.get("rows", 0.0)
    return {k: v / rows for k, v in sums.items() if k != "rows"} if rows else {}


@dataclass
class ExperimentState:
    """What the journal has committed.  Mutated only by :meth:`apply`."""

    metric: str | None = None          # the evaluation metric (e.g. "val_accuracy") and its mode,
    mode: str = "min"                  # which decide the best checkpoint
    models: dict[str, ModelState] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    visits: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    best: dict[str, Any] | None = None   # {"model_id", "epoch", "score", "checkpoint", "checksum"}
    next_index: int = 0
    unbuilt: dict[int, dict[str, Any]] = field(default_factory=dict)   # suggested, not built yet
    driver_state: dict[str, Any] | None = None                         # the driver's last journaled state
    announcements: list[tuple] = field(default_factory=list)           # told to the driver since then
    exhausted: bool = False            # the driver will never propose again
    consecutive_failures: int = 0      # configurations failed since the last completed epoch
    retirements: list[dict[str, Any]] = field(default_factory=list)   # workers taken out of the pool
    clock: tuple[int, int] = (0, -1)   # the (tick, model index) of the last report the driver heard
    records: int = 0                   # records applied
    driver_payloads: int = 0           # records that carried the driver's state

    # ------------------------------------------------------------------ the reducer

    def apply(self, record: Record) -> None:
        """Apply one committed record.  Deterministic; raises CerebroError for a record that
        does not fit the state (a journal from another experiment, or corrupted)."""
        try:
            self._apply(record)
        except KeyError as exc:
            raise CerebroError(f"journal record {record!r} names {exc} which the journal never created") from None
        self.records += 1

    def _apply(self, r: Record) -> None:
        if isinstance(r, Visit):
            self._visit(r)
        elif isinstance(r, EpochResult):
            self._epoch(r)
        elif isinstance(r, Suggestion):
            self._saved_driver(r.state)
            self.unbuilt.update({r.first_index + i: dict(p) for i, p in enumerate(r.configs)})
            self.next_index = max(self.next_index, r.first_index + len(r.configs))
        elif isinstance(r, ModelCreation):
            self.unbuilt.pop(r.index, None)
            self.models[r.model_id] = ModelState(r.model_id, r.index, dict(r.params), r.spec, r.checkpoint,
                                                 checksum=r.checksum, task_extra=dict(r.extra),
                                                 start_checkpoint=r.checkpoint, start_checksum=r.checksum,
                                                 tick=self.clock[0] + 1)
            self.next_index = max(self.next_index, r.index + 1)
            self.announcements.append(("added", r.model_id, dict(r.params)))
        elif isinstance(r, CreationFailure):
            self.unbuilt.pop(r.index, None)
            self.models[r.model_id] = ModelState(r.model_id, r.index, dict(r.params), "", "", status="failed", error=r.error)
            self.failures[r.model_id] = r.error
            self.next_index = max(self.next_index, r.index + 1)
            self.announcements.append(("failed", None, dict(r.params), r.error))
            self.consecutive_failures += 1
        elif isinstance(r, DriverUpdate):
            self._saved_driver(r.state)
            self._actions(r.actions)
            self.exhausted = self.exhausted or r.exhausted
        elif isinstance(r, BestModel):
            self.best = {"model_id": r.model_id, "epoch": r.epoch, "score": r.score, "checkpoint": r.checkpoint,
                         "checksum": r.checksum}
        elif isinstance(r, ModelFailure):
            m = self.models[r.model_id]
            self._reported(m)
            m.status = "failed"
            self.failures[m.model_id] = r.error
            self.announcements.append(("failed", m.model_id, dict(m.params), r.error))
            self.consecutive_failures += 1
        elif isinstance(r, Rollback):
            self._rollback(r)
        elif isinstance(r, WorkerRetirement):
            self.retirements.append({"worker": r.worker, "deaths": r.deaths, "moved": [list(x) for x in r.moved],
                                     "reason": r.reason, "time": r.time})
        elif not isinstance(r, RunMark):
            raise CerebroError(f"cannot apply {r!r}: not a journal record")

    def _reported(self, m: ModelState) -> None:
        """The driver heard ``m``'s outstanding report: the clock moves to its key."""
        if m.tick is not None:
            self.clock = (m.tick, m.index)
            m.tick = None

    def _saved_driver(self, payload: dict) -> None:
        # A record holds the driver's whole state or a delta against the previous one.
        self.driver_state = statediff.restore(self.driver_state, payload)
        self.driver_payloads += 1
        self.announcements = []

    def _visit(self, r: Visit) -> None:
        m = self.models[r.model_id]
        (self.visits if r.kind == "train" else self.evaluations).append(r.row())
        if r.status == "ok":
            sums = m.sums.setdefault((r.epoch, r.kind), {})
            rows = float(r.rows)
            for name, value in r.metrics.items():
                sums[name] = sums.get(name, 0.0) + float(value) * rows
            sums["rows"] = sums.get("rows", 0.0) + rows
            if r.kind == "train":
                m.trained.append(r.partition)
                m.hops += 1
                m.checkpoint, m.checksum = r.checkpoint or "", r.checksum
            else:
                m.evaluated.append(r.partition)
        elif m.error is None:
            m.error = r.error

    def _rollback(self, r: Rollback) -> None:
        m = self.models[r.model_id]
        if m.status != "running" or r.epoch != m.epochs_done + 1:
            raise CerebroError(f"journal record {r!r} rolls back epoch {r.epoch} of {m.model_id}, which is "
                               f"{m.status} after {m.epochs_done} epochs")
        # The epoch's committed visits are undone: their rows say so, their metrics go.
        for rows in (self.visits, self.evaluations):
            for row in rows:
                if row["model_id"] == m.model_id and row["epoch"] == r.epoch and row["status"] == "ok":
                    row["status"] = "failed"
        m.sums.pop((r.epoch, "train"), None)
        m.sums.pop((r.epoch, "eval"), None)
        m.trained, m.evaluated = [], []
        m.hops = 0
        m.checkpoint, m.checksum = r.to_checkpoint, r.checksum
        m.rollbacks += 1
        m.lost.append(r.from_checkpoint)

    def _epoch(self, r: EpochResult) -> None:
        m = self.models[r.model_id]
        self._reported(m)
        m.sums.pop((r.epoch, "train"), None)
        m.sums.pop((r.epoch, "eval"), None)
        m.epochs_done = r.epoch
        m.hops = 0
        m.trained, m.evaluated = [], []
        m.status = "paused"                # unless an action says otherwise
        m.epoch_checkpoint, m.epoch_checksum = r.checkpoint, r.checksum
        m.start_checkpoint, m.start_checksum = r.checkpoint, r.checksum
        m.rollbacks, m.lost = 0, []
        self.history.append({"model_id": m.model_id, "epoch": r.epoch, **r.metrics, "__params": dict(r.params)})
        self.consecutive_failures = 0
        self._saved_driver(r.state)
        self._actions(r.actions)

    def _actions(self, actions: list) -> None:
        for a in actions:
            target = self.models[a["model_id"]]
            if a["action"] == "exploit":
                target.params, target.spec_path = dict(a["params"]), a["spec"]
                target.checkpoint, target.checksum = a["checkpoint"], a["checksum"]
                target.epoch_checkpoint, target.epoch_checksum = a["checkpoint"], a["checksum"]
                target.start_checkpoint, target.start_checksum = a["checkpoint"], a["checksum"]
                target.spec_version = a["spec_version"]
            else:
                target.status = a["status"]
                if a["action"] == "continue":
                    target.tick = self.clock[0] + 1   # its next epoch ends one tick later

    # ------------------------------------------------------------------ queries

    def active(self) -> int:
        """Models that are training (paused ones are not)."""
        return sum(1 for m in self.models.values() if m.status == "running")

    def epoch_metrics(self, model_id: str, epoch: int) -> dict[str, float]:
        """``train_*`` and ``val_*`` row-weighted means of a model's committed visits of ``epoch``."""
        m = self.models[model_id]
        metrics = {f"train_{k}": v for k, v in weighted_means(m.sums.get((epoch, "train"), {})).items()}
        metrics.update({f"val_{k}": v for k, v in weighted_means(m.sums.get((epoch, "eval"), {})).items()})
        return metrics

    def improves_best(self, metrics: Mapping[str, float]) -> bool:
        """Would an epoch with these metrics be the new best (model, epoch)?  (The one rule of
        :func:`cerebro.core.metrics.is_better`: a NaN never improves on a number.)"""
        score = metrics.get(self.metric) if self.metric else None
        if score is None:
            return False
        return self.best is None or is_better(score, self.best["score"], self.mode)

    def kept_checkpoints(self) -> set[str]:
        """The retention rule: every model's latest and epoch-boundary checkpoints (in epoch 1 its
        initial state), and the best's.  Every other checkpoint in the store may be deleted."""
        keep = {m.checkpoint for m in self.models.values()} | {m.epoch_checkpoint for m in self.models.values()}
        keep |= {m.start_checkpoint for m in self.models.values()}
        if self.best is not None:
            keep.add(self.best["checkpoint"])
        keep.discard("")
        return keep

    def driver_payload(self, state: Mapping[str, Any]) -> dict:
        """What a record journals of the driver's new ``state``: the state itself (a snapshot)
        or its delta against :attr:`driver_state` (see :mod:`cerebro.core.statediff`)."""
        return statediff.payload(self.driver_state, statediff.normalise(state), self.driver_payloads)

    def awaited(self) -> dict[str, tuple[int, int]]:
        """Model -> the (tick, index) key of the report the driver awaits from it (see
        :mod:`cerebro.core.order`): the canonical order in which the driver hears reports."""
        return {mid: (m.tick, m.index) for mid, m in self.models.items() if m.tick is not None}

    def statuses(self) -> dict[str, str]:
        return {mid: m.status for mid, m in self.models.items()}

    def epochs(self, reporting: str | None = None, epoch: int | None = None) -> dict[str, int]:
        """Completed epochs per model, counting ``epoch`` for ``reporting`` (whose epoch just ended)."""
        out = {mid: m.epochs_done for mid, m in self.models.items()}
        if reporting is not None and epoch is not None:
            out[reporting] = epoch
        return out

    def exploit_plan(self, action: Exploit, reporting: str | None, epoch: int | None) -> ExploitPlan:
        """What ``action`` copies, before the decision's record is applied: for the model whose
        epoch just ended, its boundary is its latest checkpoint and its epoch count is ``epoch``."""
        target, source = self.models[target_of(action)], self.models[action.source]
        if source.model_id == reporting:
            checkpoint, checksum = source.checkpoint, source.checksum
        else:
            checkpoint, checksum = source.epoch_checkpoint, source.epoch_checksum
        if source.status == "failed" or not checkpoint:
            raise CerebroError(f"cannot exploit {source.model_id}: it has not completed an epoch ({source.status})")
        done = epoch if target.model_id == reporting and epoch is not None else target.epochs_done
        return ExploitPlan(target.model_id, source.model_id, target.index, target.spec_version + 1, done + 1,
                           target.task_extra.get("features"), source.spec_path, checkpoint, checksum)

    def restored_events(self) -> list:
        """The scheduler events that bring a restored experiment's models back.  Visits that
        were in flight when the journal ends were never committed: the scheduler wants them
        again, so at most one sub-epoch per model is redone."""
        events = []
        for m in self.models.values():
            if m.status == "failed":
                if m.spec_path:
                    events.append(ModelRestored(m.model_id, m.index, max(m.epochs_done, 1), "failed"))
            elif m.status in ("completed", "stopped"):
                events.append(ModelRestored(m.model_id, m.index, max(m.epochs_done, 1), "ended"))
            elif m.status == "paused":
                events.append(ModelRestored(m.model_id, m.index, m.epochs_done, "awaiting"))
            else:
                events.append(ModelRestored(m.model_id, m.index, m.epochs_done + 1, "running",
                                            tuple(m.trained), tuple(m.evaluated), due=m.tick or 0))
        return events
