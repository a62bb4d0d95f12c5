"""The driver's side of the worker protocol, shared by the process and Spark backends.

A worker (see :func:`cerebro.backends.local.worker_main`) talks over one duplex
``multiprocessing.connection.Connection``: it sends ``("ready", pid, (host, device))`` once started, then
``("done", task_id, result)`` or ``("failed", task_id, traceback)`` per task, or
``("dead", traceback)`` when it cannot start; the driver sends ``(task_id, task)`` or ``None``
(goodbye).  :class:`WorkerChannels` keeps the per-worker connection state (ready, busy, what
is running) and turns messages into backend events; the backends own process management.
"""

from __future__ import annotations

from typing import Any

from .base import BackendEvent, TaskDone, TaskFailed, WorkerDied, WorkerReady
from ..experiment.tasks import Task


class WorkerChannels:
    """Connections to the workers, keyed by worker index.  Used by one thread (the engine's)."""

    def __init__(self) -> None:
        self.conns: dict[int, Any] = {}
        self.ready: set[int] = set()
        self.busy: dict[int, int] = {}
        self.running: dict[int, Task] = {}
        self.pids: dict[int, int] = {}
        self.where: dict[int, tuple[str, str]] = {}   # worker -> (host, device) it reported

    def ready_event(self, worker: int) -> WorkerReady:
        """The :class:`WorkerReady` of a started worker (again, when a backend reuses it)."""
        host, device = self.where.get(worker, ("", "cpu"))
        return WorkerReady(worker, self.pids.get(worker), host, device)

    def add(self, worker: int, conn: Any) -> None:
        self.discard(worker)
        self.conns[worker] = conn

    def submit(self, worker: int, task_id: int, task: Task) -> None:
        """Send a task to an idle, ready worker.  A broken pipe is left for the death report."""
        if worker not in self.ready:
            raise RuntimeError(f"worker {worker} is not ready")
        if worker in self.busy:
            raise RuntimeError(f"worker {worker} is busy with task {self.busy[worker]}")
        self.busy[worker] = task_id
        self.running[worker] = task
        try:
            self.conns[worker].send((task_id, task))
        except (BrokenPipeError, OSError):
            pass  # reported as the worker's death by the backend's wait()

    def running_tasks(self) -> dict[int, Task]:
        return {w: self.running[w] for w in list(self.busy) if w in self.running}

    def drain(self, worker: int, events: list[BackendEvent]) -> bool:
        """Turn every message ``worker`` sent into events; False when its connection is closed."""
        conn = self.conns[worker]
        try:
            while conn.poll():
                msg = conn.recv()
                if msg[0] == "ready":
                    self.ready.add(worker)
                    self.pids[worker] = msg[1]
                    if len(msg) > 2:
                        self.where[worker] = tuple(msg[2])
                    events.append(self.ready_event(worker))
                elif msg[0] == "done":
                    self.busy.pop(worker, None)
                    events.append(TaskDone(worker, msg[1], msg[2]))
                elif msg[0] == "failed":
                    self.busy.pop(worker, None)
                    events.append(TaskFailed(worker, msg[1], msg[2], msg[3] if len(msg) > 3 else None))
                elif msg[0] == "dead":
                    events.append(WorkerDied(worker, msg[1]))
                    return False
        except (EOFError, OSError):
            return False
        return True

    def idle(self) -> list[int]:
        """Ready workers with no task."""
        return [w for w in self.conns if w in self.ready and w not in self.busy]

    def say_goodbye(self) -> list[int]:
        """Ask every idle, ready worker to exit; return which were asked."""
        asked = []
        for w in self.idle():
            try:
                self.conns[w].send(None)
                asked.append(w)
            except (BrokenPipeError, OSError):
                pass
        return asked

    def discard(self, worker: int) -> None:
        self.ready.discard(worker)
        self.busy.pop(worker, None)
        self.running.pop(worker, None)
        self.pids.pop(worker, None)
        conn = self.conns.pop(worker, None)
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    def clear(self) -> None:
        for w in list(self.conns):
            self.discard(w)
