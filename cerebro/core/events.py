"""Events into the MOP scheduler and commands out of it.

Everything here is a frozen dataclass so that the scheduler's inputs and outputs can be
recorded, compared and replayed.  Events are named in the past tense (what happened),
commands in the imperative (what the engine must do next).

Workers and partitions share one numbering: worker ``w`` owns training partition ``w`` and
validation partition ``w``; a replacement for a lost worker joins under the same number.  A
worker taken out of the pool (:class:`WorkerRetired`) hands its partitions to the workers
left, so from then on a visit's ``worker`` and ``partition`` may differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

Kind = Literal["train", "eval"]


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class WorkerJoined:
    """Worker ``worker`` is alive, has its partitions loaded and is free."""

    worker: int


@dataclass(frozen=True)
class WorkerLost:
    """Worker ``worker`` died; whatever it was running did not commit."""

    worker: int
    reason: str = ""


@dataclass(frozen=True)
class WorkerRetired:
    """Worker ``worker`` (lost, not alive) is out of the pool for the rest of the run: it will
    never join again.  Each partition it served moves to the non-retired worker serving the
    fewest partitions (ties: an alive one, then the lower number), so every model still
    visits every partition every epoch.  The last non-retired worker cannot be retired."""

    worker: int
    reason: str = ""


@dataclass(frozen=True)
class ModelAdded:
    """A new model enters at epoch 1.

    ``index`` is the model's stable ordinal (order of creation in the experiment); the
    deterministic scheduler derives the model's partition orders from (seed, index, epoch).
    """

    model_id: str
    index: int
    due: int = 0     # the logical tick of the model's next report (deterministic mode: a preference)


@dataclass(frozen=True)
class ModelRestored:
    """A model comes back from the experiment journal after the driver process restarted.

    ``status`` is "running" (inside ``epoch``, with the train and eval partitions already
    committed listed in commit order), "awaiting" (``epoch`` ended, its decision pending),
    "ended" or "failed".  A running model whose listed visits complete its epoch gets its
    :class:`EndEpoch` at once.
    """

    model_id: str
    index: int
    epoch: int
    status: str = "running"
    trained: tuple[int, ...] = ()
    evaluated: tuple[int, ...] = ()
    due: int = 0


@dataclass(frozen=True)
class ModelContinued:
    """Answer to :class:`EndEpoch`: the model goes on with its next epoch."""

    model_id: str
    due: int = 0


@dataclass(frozen=True)
class ModelStopped:
    """The model ends.

    Sent while the model awaits a decision (after :class:`EndEpoch`), it ends at once.
    Sent while the model is inside an epoch, it ends at the next epoch boundary: the epoch
    is finished and evaluated first, and its :class:`EndEpoch` carries ``final=True``.
    """

    model_id: str


@dataclass(frozen=True)
class SubEpochFinished:
    """A train or eval visit committed (its checkpoint, for train, is durable)."""

    model_id: str
    worker: int
    epoch: int
    partition: int
    kind: Kind = "train"


@dataclass(frozen=True)
class SubEpochFailed:
    """A train or eval visit raised; nothing it did was committed."""

    model_id: str
    worker: int
    epoch: int
    partition: int
    kind: Kind = "train"
    error: str = ""
    #: False for an error a retry would raise again (an error of the model or its data, see
    #: :func:`cerebro.frameworks.base.deterministic_error`): the model is abandoned at once.
    retryable: bool = True


@dataclass(frozen=True)
class ModelRolledBack:
    """The visit running on ``worker`` failed because the model's input checkpoint is unusable,
    and the model's committed state went back to the start of ``epoch`` (its epoch-boundary
    checkpoint).  The visit ends without counting as a failed attempt and the model redoes
    the whole epoch: every train visit again (in deterministic mode in the same fixed order),
    then every eval visit.  Only ``status`` ``"running"`` models inside ``epoch`` roll back."""

    model_id: str
    worker: int
    epoch: int
    partition: int
    kind: Kind = "train"


Event = Union[
    WorkerJoined, WorkerLost, WorkerRetired, ModelAdded, ModelRestored, ModelContinued, ModelStopped,
    SubEpochFinished, SubEpochFailed, ModelRolledBack,
]


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class TrainSubEpoch:
    """Train ``model_id`` for one pass over partition ``partition`` on ``worker`` (the worker
    serving that partition: itself, unless its owner was retired).

    ``attempt`` is 0 for the first try of this (model, epoch, partition) and counts retries.
    """

    model_id: str
    worker: int
    epoch: int
    partition: int
    attempt: int = 0


@dataclass(frozen=True)
class EvaluateSubEpoch:
    """Evaluate ``model_id`` (its end-of-epoch state) on validation partition ``partition``."""

    model_id: str
    worker: int
    epoch: int
    partition: int
    attempt: int = 0


@dataclass(frozen=True)
class EndEpoch:
    """Every train and eval visit of ``epoch`` committed for ``model_id``.

    Unless ``final`` is true, the model now waits, and the engine must answer with
    :class:`ModelContinued` or :class:`ModelStopped`.  ``final`` means a stop was requested
    during the epoch and the model has already ended.
    """

    model_id: str
    epoch: int
    final: bool = False


@dataclass(frozen=True)
class AbandonModel:
    """A visit of ``model_id`` failed more than ``max_retries`` times; the model has ended."""

    model_id: str
    epoch: int
    partition: int
    kind: Kind
    error: str = ""


Command = Union[TrainSubEpoch, EvaluateSubEpoch, EndEpoch, AbandonModel]
