"""InlineBackend: runs every worker's tasks in the calling process, one at a time.

A fake, not a mock (Horovod's CallbackBackend): the engine, the scheduler and the drivers run
for real while tasks execute synchronously inside :meth:`wait`.  With a custom
``runtime_factory`` the engine can be tested in milliseconds without TensorFlow; ``faults``
injects worker deaths and task failures at chosen moments.
"""

from __future__ import annotations

import time
import traceback
from collections import deque
from typing import Any, Callable

from .base import Backend, BackendEvent, TaskDone, TaskFailed, WorkerDied, WorkerReady, WorkerSetup, check_num_workers
from ..experiment.tasks import Task
from ..worker import failure_cause, where


def _default_runtime(setup: WorkerSetup, worker: int):
    from ..worker import WorkerRuntime

    return WorkerRuntime(setup.store, setup.prepared, worker, setup.threads, setup.frameworks)


class InlineBackend(Backend):
    """``faults(worker, task) -> None | "die" | "fail"`` is asked before every task runs.

    ``pick(n) -> i`` chooses which of the ``n`` submitted tasks runs next (default: the oldest),
    so tests can make tasks complete in any order, as real workers of different speeds do."""

    def __init__(
        self,
        num_workers: int = 2,
        *,
        runtime_factory: Callable[[WorkerSetup, int], Any] = _default_runtime,
        faults: Callable[[int, Task], str | None] | None = None,
        start_timeout: float = 120,
        pick: Callable[[int], int] | None = None,
    ) -> None:
        self.num_workers = check_num_workers("InlineBackend", num_workers)
        self.start_timeout = start_timeout
        self.runtime_factory = runtime_factory
        self.faults = faults
        self.pick = pick
        self._runtimes: dict[int, Any] = {}
        self._queue: deque[tuple[int, int, Task]] = deque()
        self._pending: list[BackendEvent] = []
        self._setup: WorkerSetup | None = None
        self.restarts = 0

    def start(self, setup: WorkerSetup) -> None:
        self._setup = setup
        self._queue.clear()
        for w in range(self.num_workers):
            self._start(w)

    def _start(self, worker: int) -> None:
        assert self._setup is not None
        try:
            self._runtimes[worker] = self.runtime_factory(self._setup, worker)
        except Exception:
            # As a worker process that cannot start: it is reported dead, with its traceback.
            self._runtimes.pop(worker, None)
            self._pending.append(WorkerDied(worker, traceback.format_exc()))
            return
        self._pending.append(WorkerReady(worker, None, *where()))

    def restart(self, worker: int) -> None:
        self.restarts += 1
        self._start(worker)

    def submit(self, worker: int, task_id: int, task: Task) -> None:
        self._queue.append((worker, task_id, task))

    def wait(self, timeout: float | None) -> list[BackendEvent]:
        if self._pending:
            out, self._pending = self._pending, []
            return out
        if not self._queue:
            if timeout:
                time.sleep(timeout)   # nothing to run: block like a real backend until the timeout
            return []
        i = self.pick(len(self._queue)) if self.pick is not None else 0
        worker, task_id, task = self._queue[i]
        del self._queue[i]
        fault = self.faults(worker, task) if self.faults else None
        if fault == "die":
            self._runtimes.pop(worker, None)
            self._queue = deque(q for q in self._queue if q[0] != worker)
            return [WorkerDied(worker, "injected fault")]
        try:
            if fault == "fail":
                raise RuntimeError("injected failure")
            result = self._runtimes[worker].run(task)
        except Exception as exc:
            return [TaskFailed(worker, task_id, traceback.format_exc(), failure_cause(exc))]
        return [TaskDone(worker, task_id, result)]

    def close(self) -> None:
        self._runtimes.clear()
        self._queue.clear()
