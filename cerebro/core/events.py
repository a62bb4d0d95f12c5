"""Events into the MOP scheduler and commands out of it.

Everything here is a frozen dataclass so that the scheduler's inputs and outputs can be
recorded, compared and replayed.  Events are named in the past tense (what happened),
commands in the imperative (what the engine must do next).

Workers and partitions share one numbering: worker ``w`` owns training partition ``w`` and
validation partition ``w`` for the whole experiment; a replacement for a lost worker joins
under the same number.
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
class ModelAdded:
    """A new model enters at epoch 1.

    ``index`` is the model's stable ordinal (order of creation in the experiment); the
    deterministic scheduler derives the model's partition orders from (seed, index, epoch).
    """

    model_id: str
    index: int


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


@dataclass(frozen=True)
class ModelContinued:
    """Answer to :class:`EndEpoch`: the model goes on with its next epoch."""

    model_id: str


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


Event = Union[
    WorkerJoined, WorkerLost, ModelAdded, ModelRestored, ModelContinued, ModelStopped, SubEpochFinished,
    SubEpochFailed,
]


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class TrainSubEpoch:
    """Train ``model_id`` for one pass over partition ``partition`` on ``worker``.

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
