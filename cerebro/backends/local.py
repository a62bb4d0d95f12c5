"""LocalBackend: one long-lived OS process per worker on this machine (the embedded default).

Each worker process is started with the ``spawn`` method, imports TensorFlow once, reads its
own partitions once, and then trains sub-epochs on command over a pipe.  A process that dies
(SIGKILL, OOM, segfault) shows up as a :class:`WorkerDied` event, never as a hang: the engine
restarts it and retries the lost sub-epoch from the last committed checkpoint.

GPU placement (``gpus=``, ``workers_per_gpu=``): :mod:`cerebro.backends.devices` maps the
arguments to each worker's GPU and gives :func:`worker_main` the environment to set
(``CUDA_VISIBLE_DEVICES``, ``CEREBRO_DEVICE``) before any framework is imported; a restarted
worker gets the same GPU.  Internal, for tests only: :meth:`LocalBackend._probe_env` asks a
ready, idle worker for its ``os.environ`` over its pipe.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import signal
import sys
import time
import traceback
from dataclasses import replace
from typing import Any

from . import devices
from .base import Backend, BackendEvent, WorkerDied, WorkerSetup, check_timeout
from .channel import WorkerChannels
from .._checks import check_int
from ..storage import layout
from ..experiment.tasks import Task

log = logging.getLogger(__name__)

#: internal (tests): a worker answers this message with ("env", dict(os.environ))
_PROBE_ENV = "cerebro:probe-env"
_REBIND = "cerebro:rebind"   # ("cerebro:rebind", WorkerSetup): serve another fit's data


def _log_to(log_dir: str | None, worker: int) -> None:
    """Send this process's stdout and stderr to the worker's log file in ``log_dir`` (None: leave them)."""
    if not log_dir:
        return
    os.makedirs(log_dir, exist_ok=True)
    fd = os.open(os.path.join(log_dir, layout.file_name(layout.worker_log(worker))), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _limit_native_threads(threads: int | None) -> None:
    # Set before TensorFlow/numpy load their thread pools, so p workers share the cores.
    if threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
            os.environ[var] = str(threads)


@contextlib.contextmanager
def _main_module_hidden():
    """Start a spawned process without it re-running the user's main module.

    ``spawn`` normally re-imports ``__main__`` from its file (or by its module name) in the
    child, so a script without an ``if __name__ == "__main__":`` guard would run its whole
    ``fit`` again in every worker, and ``python -`` cannot be re-read at all.  A worker needs
    nothing from the user's main module (a model's code travels by value in its spec), so we
    hide the main module's file and spec while the process starts, as in a notebook.
    """
    main = sys.modules.get("__main__")
    saved = {name: main.__dict__[name] for name in ("__file__", "__spec__") if main is not None and name in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            if "__spec__" in main.__dict__:
                main.__spec__ = None
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


def worker_main(conn: Any, worker: int, setup: WorkerSetup, env: dict[str, str] | None = None) -> None:
    """Entry point of a worker process (also used by tests).  Returns when the pipe closes.

    ``env`` (:func:`cerebro.backends.devices.worker_env`: ``CUDA_VISIBLE_DEVICES``,
    ``CEREBRO_DEVICE``) is set first, before any framework is imported.
    """
    if env:
        os.environ.update(env)
    _log_to(setup.log_dir, worker)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    _limit_native_threads(setup.threads)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker-{worker} %(name)s %(levelname)s %(message)s")
    try:
        from ..worker import WorkerRuntime, failure_cause, where

        runtime = WorkerRuntime(setup.store, setup.prepared, worker, setup.threads, setup.frameworks)
    except BaseException:
        conn.send(("dead", traceback.format_exc()))
        return
    conn.send(("ready", os.getpid(), where()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the driver went away: nothing left to do
        if msg is None:
            return
        if msg == _PROBE_ENV:
            conn.send(("env", dict(os.environ)))
            continue
        if msg[0] == _REBIND:
            # Another fit on other data: the same process (its framework imported) serves it.
            setup = msg[1]
            try:
                sys.stdout.flush()
                sys.stderr.flush()
                _log_to(setup.log_dir, worker)
                runtime = None   # the old data and models go before the new data loads
                runtime = WorkerRuntime(setup.store, setup.prepared, worker, setup.threads, setup.frameworks)
            except BaseException:
                conn.send(("dead", traceback.format_exc()))
                return
            conn.send(("ready", os.getpid(), where()))
            continue
        task_id, task = msg
        try:
            result = runtime.run(task)
        except Exception as exc:
            reply = ("failed", task_id, traceback.format_exc(), failure_cause(exc))
        else:
            reply = ("done", task_id, result)
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class LocalBackend(Backend):
    """``LocalBackend(num_workers=None, *, gpus=None, workers_per_gpu=1, start_timeout=120, threads_per_worker=None)``.

    ``gpus=None``: CPU workers (``num_workers`` defaults to 2) that see no GPU
    (``CUDA_VISIBLE_DEVICES=""``).  ``gpus="all"``, an int ``n`` (the first ``n`` visible GPUs) or a list of
    physical GPU ids (as ``nvidia-smi`` numbers them): worker ``w`` gets the GPU
    ``gpus[w % len(gpus)]``; ``num_workers`` defaults to ``len(gpus) * workers_per_gpu`` and may
    not exceed it (fewer is fine).  Each GPU worker sees only its GPU (``CUDA_VISIBLE_DEVICES``
    set before the framework is imported); Keras workers turn TensorFlow's memory growth on, so
    workers can share a GPU.  GPUs that are not visible are refused here, naming what is.  See
    :mod:`cerebro.backends.devices`.

    ``threads_per_worker`` bounds TensorFlow's thread pools in each worker; by default the
    machine's cores are divided among the workers (at least one each), so two workers on a
    2-core machine do not oversubscribe it.  Worker processes stay alive between ``fit`` calls
    (TensorFlow stays imported; on the same data, the partitions stay loaded too) until
    :meth:`close` or the end of the ``with`` block.
    """

    def __init__(self, num_workers: int | None = None, *, gpus: Any = None, workers_per_gpu: int = 1,
                 start_timeout: float = 120, threads_per_worker: int | None = None) -> None:
        visible = devices.discover_gpus() if gpus is not None else ()
        self._devices = devices.worker_devices(gpus, workers_per_gpu, num_workers, visible)
        self.num_workers = len(self._devices)
        self.gpus: tuple[int, ...] | None = (
            None if gpus is None else tuple(dict.fromkeys(d for ids in self._devices for d in ids)))
        self.workers_per_gpu = int(workers_per_gpu)
        self.start_timeout = check_timeout("LocalBackend", "start_timeout", start_timeout)
        if threads_per_worker is not None:
            check_int("LocalBackend", "threads_per_worker", threads_per_worker, expected="an int >= 1 or None")
        self.threads_per_worker = threads_per_worker
        self._ctx = mp.get_context("spawn")
        self._procs: dict[int, Any] = {}
        self._ch = WorkerChannels()
        self._pending: list[BackendEvent] = []
        self._setup: WorkerSetup | None = None

    def __repr__(self) -> str:
        if self.gpus is None:
            return f"LocalBackend(num_workers={self.num_workers})"
        return f"LocalBackend(num_workers={self.num_workers}, gpus={list(self.gpus)}, workers_per_gpu={self.workers_per_gpu})"

    def worker_device(self, worker: int) -> str:
        """The device label worker ``worker`` gets (``"cpu"`` or ``"cuda:<physical id>"``)."""
        return devices.device_label(self._devices[worker])

    def _probe_env(self, worker: int, timeout: float = 30) -> dict[str, str]:
        """Internal, for tests only: the ``os.environ`` of a ready, idle worker's process."""
        if worker not in self._ch.ready or worker in self._ch.busy:
            raise RuntimeError(f"worker {worker} is not ready and idle")
        conn = self._ch.conns[worker]
        conn.send(_PROBE_ENV)
        if not conn.poll(timeout):
            raise TimeoutError(f"worker {worker} did not answer the environment probe in {timeout} s")
        kind, env = conn.recv()
        assert kind == "env", kind
        return env

    @property
    def threads(self) -> int:
        return self.threads_per_worker or max(1, (os.cpu_count() or 1) // self.num_workers)

    def worker_pids(self) -> dict[int, int]:
        """Process id of each running worker (for monitoring and fault-injection tests)."""
        return {w: p.pid for w, p in self._procs.items() if p.is_alive()}

    def running_tasks(self) -> dict[int, Task]:
        """Worker -> the task it is running now (for monitoring and fault-injection tests)."""
        return self._ch.running_tasks()

    # ------------------------------------------------------------------ Backend

    def start(self, setup: WorkerSetup) -> None:
        if setup.threads is None:
            setup = replace(setup, threads=self.threads)
        reusable = (
            self._setup is not None and self._setup.key() == setup.key() and not self._ch.busy
            and len(self._ch.ready) == self.num_workers and all(p.is_alive() for p in self._procs.values())
        )
        if reusable:
            # Same data, same store: keep the processes (TensorFlow imported, partitions cached).
            self._pending.extend(self._ch.ready_event(w) for w in range(self.num_workers))
            return
        idle = (self._setup is not None and self._setup.threads == setup.threads and not self._ch.busy
                and len(self._ch.ready) == self.num_workers and all(p.is_alive() for p in self._procs.values()))
        if idle:
            # Other data: the idle processes load it (each answers "ready" again, or "dead" with
            # its traceback), which saves a process start and a framework import per worker.
            self._setup = setup
            for w in range(self.num_workers):
                self._ch.ready.discard(w)
                self._ch.conns[w].send((_REBIND, setup))
            return
        self.close()
        self._setup = setup
        for w in range(self.num_workers):
            self._spawn(w)

    def _spawn(self, w: int) -> None:
        assert self._setup is not None
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=worker_main, args=(child, w, self._setup, devices.worker_env(self._devices[w])), name=f"cerebro-worker-{w}", daemon=True)
        with _main_module_hidden():
            proc.start()
        child.close()
        self._procs[w] = proc
        self._ch.add(w, parent)

    def restart(self, worker: int) -> None:
        self._discard(worker)
        self._spawn(worker)

    def submit(self, worker: int, task_id: int, task: Task) -> None:
        self._ch.submit(worker, task_id, task)

    def wait(self, timeout: float | None) -> list[BackendEvent]:
        if self._pending:
            out, self._pending = self._pending, []
            return out
        waitables: dict[Any, tuple[str, int]] = {}
        for w, conn in self._ch.conns.items():
            waitables[conn] = ("conn", w)
            waitables[self._procs[w].sentinel] = ("proc", w)
        if not waitables:
            if timeout:
                time.sleep(timeout)   # every worker is down (a restart is due later): block, do not spin
            return []
        events: list[BackendEvent] = []
        dead: set[int] = set()
        for obj in mpc.wait(list(waitables), timeout):
            what, w = waitables[obj]
            if w in dead:
                continue
            if what == "conn":
                alive = self._ch.drain(w, events)
                if not alive:
                    dead.add(w)
            else:
                self._ch.drain(w, events)
                dead.add(w)
        for w in sorted(dead):
            proc = self._procs.get(w)
            reason = next((e.reason for e in events if isinstance(e, WorkerDied) and e.worker == w), None)
            events = [e for e in events if not (isinstance(e, WorkerDied) and e.worker == w)]
            if proc is not None:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.kill()
                    proc.join(timeout=5)
                exit_text = _describe_exit(proc.exitcode)
            else:
                exit_text = "gone"
            events.append(WorkerDied(w, f"worker process {exit_text}" + (f":\n{reason}" if reason else "")))
            self._discard(w)
        return events

    def _discard(self, w: int) -> None:
        self._ch.discard(w)
        proc = self._procs.pop(w, None)
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join(timeout=5)

    def close(self) -> None:
        # Ready, idle workers get a polite goodbye; the rest (starting or busy) are killed.
        for w in self._ch.say_goodbye():
            proc = self._procs.get(w)
            if proc is not None:
                proc.join(timeout=5)
        for w in list(self._procs):
            self._discard(w)
        self._pending = []
        self._setup = None
