"""Typed journal records: every fact an experiment commits, as data.  Pure.

The engine turns each thing that happened into one record, appends it to the journal (fsynced)
and only then applies it to the :class:`~cerebro.core.state.ExperimentState`.  Resume reads the
journal back with :func:`record_from_dict` and applies the same records through the same
reducer, so the live run and the restarted one cannot drift (Optuna's journal storage works
this way).

A record's ``to_dict()`` is what the journal holds (JSON, with ``type`` naming the record);
the ``type`` strings are part of the on-disk format and never change meaning.  Fields added
later have defaults, so journals written by earlier versions still read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Mapping, Union

from ..errors import CerebroError

__all__ = [
    "Suggestion", "ModelCreation", "CreationFailure", "Visit", "EpochResult", "DriverUpdate", "BestModel",
    "ModelFailure", "Rollback", "WorkerRetirement", "RunMark", "Record", "record_from_dict", "VISIT_COLUMNS",
    "RUN_MARKS",
]

# The columns of ``visits`` / ``evaluations`` rows, in order.
VISIT_COLUMNS = ("model_id", "epoch", "partition", "worker", "host", "device", "start", "end", "rows", "status",
                 "attempt", "load_s", "compute_s", "save_s", "build_s")
RUN_MARKS = ("started", "resumed", "finished", "aborted")


class _Base:
    TYPE: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, **asdict(self)}  # type: ignore[call-overload]


@dataclass(frozen=True)
class Suggestion(_Base):
    """The driver proposed ``configs``; they get indices ``first_index, first_index + 1, ...``.
    Journaled (with the driver's new state) before any of them is built."""

    TYPE: ClassVar[str] = "suggested"
    first_index: int
    configs: list
    state: dict
    time: float = 0.0


@dataclass(frozen=True)
class ModelCreation(_Base):
    """A configuration was built: its spec and initial checkpoint are in the store."""

    TYPE: ClassVar[str] = "model_added"
    model_id: str
    index: int
    params: dict
    spec: str
    checkpoint: str
    checksum: str | None = None
    extra: dict = field(default_factory=dict)
    time: float = 0.0


@dataclass(frozen=True)
class CreationFailure(_Base):
    """A configuration could not be built (``estimator_gen_fn`` or the spec raised)."""

    TYPE: ClassVar[str] = "creation_failed"
    model_id: str
    index: int
    params: dict
    error: str
    time: float = 0.0


@dataclass(frozen=True)
class Visit(_Base):
    """One sub-epoch attempt, training (``kind="train"``) or evaluation (``"eval"``), ended."""

    TYPE: ClassVar[str] = "visit"
    kind: str
    model_id: str
    epoch: int
    partition: int
    worker: int
    start: float
    end: float
    rows: int
    status: str                      # "ok" | "failed"
    attempt: int = 0
    load_s: float = 0.0
    compute_s: float = 0.0
    save_s: float = 0.0
    error: str | None = None
    metrics: dict = field(default_factory=dict)
    checkpoint: str | None = None    # ok training visits: the committed checkpoint
    checksum: str | None = None
    time: float = 0.0
    host: str = ""                   # where the worker ran ("" in journals written before it was recorded)
    device: str = ""                 # "cpu" or "cuda:<physical id>"
    # Of load_s, the one-time set-up the worker then keeps (0 in journals written before it was
    # recorded): building the model's architecture, reading its spec, making the input arrays.
    build_s: float = 0.0

    def row(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in VISIT_COLUMNS}


@dataclass(frozen=True)
class EpochResult(_Base):
    """A model's epoch was evaluated and decided: its metrics, every action applied on it (as
    dicts, see :mod:`cerebro.core.state`) and the driver's new state, in one record (a crash
    before it is written makes resume evaluate and decide the epoch again)."""

    TYPE: ClassVar[str] = "epoch"
    model_id: str
    epoch: int
    metrics: dict
    params: dict
    final: bool
    actions: list
    checkpoint: str
    checksum: str | None
    state: dict
    time: float = 0.0


@dataclass(frozen=True)
class DriverUpdate(_Base):
    """The driver's state changed outside an epoch end: it will never propose again
    (``exhausted``), or it answered a failure with actions about paused models."""

    TYPE: ClassVar[str] = "driver"
    state: dict
    actions: list = field(default_factory=list)
    exhausted: bool = False
    time: float = 0.0


@dataclass(frozen=True)
class BestModel(_Base):
    """The best (model, epoch) so far changed; its checkpoint is kept by retention."""

    TYPE: ClassVar[str] = "best"
    model_id: str
    epoch: int
    score: float
    checkpoint: str
    checksum: str | None
    time: float = 0.0


@dataclass(frozen=True)
class ModelFailure(_Base):
    """A model was abandoned after its retries ran out."""

    TYPE: ClassVar[str] = "model_failed"
    model_id: str
    epoch: int
    error: str
    time: float = 0.0


@dataclass(frozen=True)
class Rollback(_Base):
    """A model's latest checkpoint ``from_checkpoint`` proved unusable (deleted or corrupted in the
    store) and the model went back to ``to_checkpoint``, the state its current ``epoch`` started
    from: that epoch's committed visits are undone (their ``visits`` rows become ``"failed"``)
    and the epoch is trained and evaluated again."""

    TYPE: ClassVar[str] = "rollback"
    model_id: str
    epoch: int
    from_checkpoint: str
    to_checkpoint: str
    checksum: str | None
    reason: str = ""
    time: float = 0.0


@dataclass(frozen=True)
class WorkerRetirement(_Base):
    """Worker ``worker`` kept dying (``deaths`` times in a row without finishing a task) and was
    taken out of the pool for the rest of this run; ``moved`` lists ``[partition, worker]``:
    where each partition it served went.  Informational: a resumed run starts a full pool."""

    TYPE: ClassVar[str] = "worker_retired"
    worker: int
    deaths: int
    moved: list
    reason: str = ""
    time: float = 0.0


@dataclass(frozen=True)
class RunMark(_Base):
    """A driver process started, resumed, finished or aborted the experiment."""

    kind: str                        # one of RUN_MARKS
    time: float = 0.0
    pid: int | None = None
    search: str | None = None        # "started": the pickled search's file (its name carries its sha256)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind, "time": self.time}
        if self.pid is not None:
            out["pid"] = self.pid
        if self.search is not None:
            out["search"] = self.search
        return out


Record = Union[Suggestion, ModelCreation, CreationFailure, Visit, EpochResult, DriverUpdate, BestModel, ModelFailure,
               Rollback, WorkerRetirement, RunMark]

_BY_TYPE: dict[str, type] = {cls.TYPE: cls for cls in (Suggestion, ModelCreation, CreationFailure, Visit, EpochResult,
                                                      DriverUpdate, BestModel, ModelFailure, Rollback,
                                                      WorkerRetirement)}


def record_from_dict(data: Mapping[str, Any]) -> Record:
    """The record a journal line holds.  Unknown keys are ignored (written by a newer version,
    or informational); a missing required key or an unknown type is a :class:`CerebroError`."""
    kind = data.get("type")
    if kind in RUN_MARKS:
        return RunMark(kind, float(data.get("time", 0.0)), data.get("pid"), data.get("search"))
    cls = _BY_TYPE.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise CerebroError(f"unknown journal record type {kind!r}")
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as exc:
        raise CerebroError(f"journal record {dict(data)!r} is incomplete: {exc}") from None
