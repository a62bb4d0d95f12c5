"""The backend interface: where MOP workers run.

A backend starts one worker per partition, hands each worker one task at a time, and reports
what happened.  It never decides anything: the engine's loop is its only caller.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Union

from .._checks import check_int, check_number
from ..experiment.tasks import Task, TaskResult


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker needs to start: the store, the prepared data and its own partition.

    ``prepared`` is :meth:`cerebro.data.PreparedData.to_dict` output (plain, picklable).
    ``threads`` bounds TensorFlow's thread pools in the worker (None: the backend decides).
    ``log_dir`` is a local directory for the workers' stdout/stderr (None: inherit).
    ``frameworks`` are imported by each worker while it starts (a task of another framework
    imports it on first use); they are not part of :meth:`key`, so running workers are reused.
    """

    store: Any
    prepared: dict
    threads: int | None = None
    log_dir: str | None = None
    frameworks: tuple[str, ...] = ()

    def key(self) -> tuple:
        return (self.store.url, self.prepared["key"], self.threads)


@dataclass(frozen=True)
class WorkerReady:
    """The worker started (or, reused, is ready again): its process id, the host it runs on and
    its device (``"cpu"`` or ``"cuda:<physical id>"``), recorded with every visit it runs."""

    worker: int
    pid: int | None = None
    host: str = ""
    device: str = "cpu"


@dataclass(frozen=True)
class TaskDone:
    worker: int
    task_id: int
    result: TaskResult


@dataclass(frozen=True)
class TaskFailed:
    """A task raised.  ``cause`` classifies what a retry can do about it
    (:func:`cerebro.worker.failure_cause`): None for an ordinary failure (retried),
    ``"store_full"`` when the store had no room (the run stops; resume once space is freed),
    ``"integrity"`` when a file to unpickle was changed in the store (the run stops),
    ``"data"`` when a prepared partition file does not match its manifest (the run stops),
    ``"checkpoint"`` when the task's input checkpoint is missing or corrupted (the model rolls
    back to the state its epoch started from), ``"deterministic"`` for an error of the model or
    its data that a retry would raise again (the model fails without retries)."""

    worker: int
    task_id: int
    error: str = ""
    cause: str | None = None


@dataclass(frozen=True)
class WorkerDied:
    """The worker is gone (process exit, executor loss, failed start-up)."""

    worker: int
    reason: str = ""


BackendEvent = Union[WorkerReady, TaskDone, TaskFailed, WorkerDied]


class Backend(abc.ABC):
    """Runs MOP workers.  Not thread-safe: one engine drives it."""

    num_workers: int
    start_timeout: float
    #: Whether the engine may take a worker that keeps dying out of the pool and have the others
    #: serve its partitions (the worker is then never restarted).  False where workers cannot
    #: be left out (Spark's barrier stage runs every task or none).
    can_retire_workers: bool = True

    @abc.abstractmethod
    def start(self, setup: WorkerSetup) -> None:
        """Start (or reuse, when ``setup.key()`` matches the running ones) one worker per partition.

        Non-blocking: each worker announces itself with :class:`WorkerReady` through :meth:`wait`.
        """

    @abc.abstractmethod
    def submit(self, worker: int, task_id: int, task: Task) -> None:
        """Hand ``task`` to an idle, ready ``worker``.  Non-blocking."""

    @abc.abstractmethod
    def wait(self, timeout: float | None) -> list[BackendEvent]:
        """Block until at least one event or ``timeout`` seconds; may return []."""

    @abc.abstractmethod
    def restart(self, worker: int) -> None:
        """Start a replacement for a worker that died.  Non-blocking, like :meth:`start`.

        The engine decides when (it backs off between the restarts of a worker that keeps dying)
        and whether (a retired worker is never restarted)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop every worker.  Idempotent."""

    def release(self) -> None:
        """The experiment ended (finished or failed): give back what other jobs may need.

        Called by the engine once per run.  The process backend keeps its idle workers (with
        TensorFlow imported) for the next ``fit``; the Spark backend ends its barrier stage so
        that Spark jobs (data preparation, ``transform``) get the executors' slots back.
        """

    def startup_problem(self) -> str | None:
        """Why workers are not starting, if the backend knows (e.g. too few Spark task slots).

        Asked by the engine when a worker missed ``start_timeout``; the text goes into its error.
        """
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_num_workers(owner: str, num_workers: Any) -> int:
    return check_int(owner, "num_workers", num_workers)


def check_timeout(owner: str, name: str, value: Any) -> float:
    return check_number(owner, name, value, low=0, low_open=True, expected="a number of seconds > 0")
