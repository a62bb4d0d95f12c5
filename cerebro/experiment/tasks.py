"""Typed tasks between the engine, the backends and the workers.

A :class:`Task` is what the engine hands a backend for one worker; the worker answers with a
:class:`TaskResult`.  Both are plain, picklable data (they cross process and Spark boundaries)
and name no framework: the worker reads the model's spec from ``spec`` in the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Task:
    """One sub-epoch for one worker: train ``model_id`` on the worker's training partition
    (``kind="train"``: write the new state to ``out``), or evaluate it on the worker's
    validation partition (``kind="eval"``)."""

    kind: str                       # "train" | "eval"
    model_id: str
    spec: str                       # store path of the model's spec
    checkpoint: str                 # store path of the state to start from
    checksum: str | None            # its sha256, as journaled (None: not checked)
    epoch: int
    partition: int
    out: str | None = None          # train: where to write the new state
    seed: int | None = None         # train: the sub-epoch seed (row shuffle, framework random state)
    features: tuple[str, ...] | None = None   # the feature columns, when not all (an ablation variant)
    epoch_end: bool = False         # train: the model's last sub-epoch of this epoch (per-epoch LR schedules step)


@dataclass(frozen=True)
class TaskResult:
    """What a worker reports for a finished task.  ``metrics`` are means over ``rows``."""

    rows: int
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: str | None = None   # train: the state written (the task's ``out``)
    checksum: str | None = None     # its sha256
    # "load", "compute", "save" seconds; "build": the part of "load" spent on one-time set-up
    timing: dict[str, float] = field(default_factory=dict)
