"""SparkBackend: MOP workers as long-running tasks of one Spark barrier stage.

The driver runs a small server (``multiprocessing.connection`` over TCP).  Each experiment
launches one barrier stage of ``num_workers`` tasks; task ``w`` connects back, proves it knows
the experiment's secret (HMAC challenge in both directions; a client that fails is dropped
before anything it sent is unpickled), and then runs the same worker loop as the process
backend (:func:`cerebro.backends.local.worker_main`): it reads partition ``w`` from the store
with pyarrow once, keeps it in memory, and trains sub-epochs on command until the experiment
ends.  No ``barrier()``/``allGather`` call is made: every message goes through the driver's
connections, so a hop costs one round trip, not a ~1 s barrier.

Spark never retries a failed barrier result stage: when one task or executor dies the job
aborts and Spark kills the stage's other tasks.  The backend then reports every worker of the
stage as dead; the engine restarts them (each lost sub-epoch is retried from its last committed
checkpoint) and the backend relaunches the stage as soon as the cluster offers enough task
slots again, or reports why it cannot within ``start_timeout``.

So a Spark worker is never retired (``can_retire_workers`` is False): task ``w`` of every
relaunched stage must run for the stage to run at all, and Spark, not cerebro, decides which
executor runs it.  A stage that keeps failing ends the experiment with a clear error once its
workers died ``max_worker_restarts + 1`` times in a row without finishing a task (the engine
backs off between relaunches).

Between experiments the stage ends (:meth:`release`), so Spark jobs such as data preparation
and ``transform`` get the slots back; with ``spark.python.worker.reuse`` (Spark's default) the
Python workers, and the TensorFlow they imported, survive for the next stage.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing.connection as mpc
import os
import queue
import re
import socket
import threading
import time
import uuid
from typing import Any, Mapping, Sequence

from ..errors import CerebroError
from .base import Backend, BackendEvent, WorkerDied, WorkerSetup, check_num_workers, check_timeout
from .channel import WorkerChannels
from .devices import discover_gpus, worker_env
from .spark_probe import check_executor_python, first_line
from ..experiment.tasks import Task

log = logging.getLogger(__name__)

#: Seconds a connecting client gets to complete the authentication handshake.
HANDSHAKE_TIMEOUT = 30.0
#: How long start() waits for executors that are still registering before refusing.
REGISTRATION_GRACE = 60.0
#: What every executor's Python must import to run a worker (plus the models' frameworks).
_WORKER_MODULES = ("cerebro", "pyarrow")


#: What a task without a GPU resource on an executor with GPUs is told to set.
GPU_SETTINGS_ADVICE = (
    "give each task its GPU through Spark's resource scheduling: spark.executor.resource.gpu.amount, "
    "spark.task.resource.gpu.amount (e.g. 1) and a discovery script "
    "(spark.executor.resource.gpu.discoveryScript, e.g. Spark's getGpusResources.sh)"
)


def task_gpu_env(resources: Mapping[str, Any], executor_gpus: Sequence[int]) -> tuple[dict[str, str], str | None]:
    """The environment a barrier task sets before any framework is imported, and a warning.

    ``resources`` is ``TaskContext.resources()``: with a ``"gpu"`` resource the task sees only
    the GPU addresses Spark assigned it (``CUDA_VISIBLE_DEVICES``; ``CEREBRO_DEVICE`` is
    ``cuda:<address>`` in ``visits``).  Without one it is a CPU worker that sees no GPU; if the executor has GPUs
    (``executor_gpus``, from :func:`cerebro.backends.devices.discover_gpus`), the warning names
    the Spark settings that would give it one.
    """
    gpu = resources.get("gpu") if resources else None
    addresses = [str(a) for a in (getattr(gpu, "addresses", None) or [])] if gpu is not None else []
    if addresses:
        return worker_env(addresses), None
    warning = None
    if executor_gpus:
        warning = (f"this Spark task was assigned no GPU although its executor has {len(executor_gpus)} "
                   f"({', '.join(map(str, executor_gpus))}), so its MOP worker trains on the CPU; "
                   + GPU_SETTINGS_ADVICE)
    return worker_env(()), warning


def _barrier_task(address: tuple[str, int], secret: bytes, generation: int, setup: WorkerSetup, _rows: Any):
    """Body of one barrier task (runs in a Spark executor's Python worker)."""
    from pyspark import BarrierTaskContext

    from .local import worker_main

    context = BarrierTaskContext.get()
    env, warning = task_gpu_env(context.resources(), discover_gpus().visible)
    os.environ.update(env)   # before worker_main imports a framework (a reused Python worker may already have)
    if warning:
        log.warning("%s", warning)
    worker = context.partitionId()
    conn = mpc.Client(address, family="AF_INET", authkey=secret)
    try:
        conn.send(("hello", generation, worker, socket.gethostname(), os.getpid()))
        worker_main(conn, worker, setup)
    finally:
        conn.close()
    return iter([worker])


def _cut(conn: Any) -> None:
    """Shut a connection's socket down, waking a thread blocked reading it (close() would not)."""
    try:
        sock = socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM)
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    except OSError:
        pass


def _declared_capacity(sc: Any) -> int | None:
    """Task slots the master string promises (local and local-cluster masters), else None."""
    master = sc.master
    task_cpus = int(sc.getConf().get("spark.task.cpus", "1"))
    m = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", master)
    if m:
        n = m.group(1)
        cores = 1 if n is None else (os.cpu_count() or 1) if n == "*" else int(n)
        return cores // task_cpus
    m = re.fullmatch(r"local-cluster\[\s*(\d+)\s*,\s*(\d+)\s*,\s*\d+\s*\]", master)
    if m:
        return int(m.group(1)) * (int(m.group(2)) // task_cpus)
    return None


def available_slots(sc: Any) -> int:
    """Tasks the cluster can run at once now (Spark's own count for barrier stages)."""
    jsc = sc._jsc.sc()
    profile = jsc.resourceProfileManager().defaultResourceProfile()
    return int(jsc.maxNumConcurrentTasks(profile))


def _slots_message(slots: int, needed: int, what: str) -> str:
    return (
        f"SparkBackend needs {needed} task slots (num_workers={needed}, one long-running task per worker) "
        f"but {what} {slots}; lower num_workers or give the cluster more executor cores "
        "(a barrier stage needs all its tasks running at once)"
    )


class SparkBackend(Backend):
    """``SparkBackend(spark_context=None, num_workers=None, *, start_timeout=600)``.

    ``spark_context`` defaults to the active SparkSession's; ``num_workers`` to its
    ``defaultParallelism``.  Each worker is one barrier task using ``spark.task.cpus`` cores
    (TensorFlow's thread pools are limited to that).  The store must be reachable from every
    executor (an NFS path or HDFS), and ``cerebro`` importable there.
    """

    #: A barrier stage runs all its tasks or none: a worker cannot be left out (see the module docstring).
    can_retire_workers = False

    def __init__(self, spark_context: Any = None, num_workers: int | None = None, *, start_timeout: float = 600) -> None:
        sc = self._resolve_context(spark_context)
        if num_workers is None:
            num_workers = int(sc.defaultParallelism)
        self.num_workers = check_num_workers("SparkBackend", num_workers)
        self.start_timeout = check_timeout("SparkBackend", "start_timeout", start_timeout)
        capacity = _declared_capacity(sc)
        if capacity is not None and self.num_workers > capacity:
            raise ValueError(_slots_message(capacity, self.num_workers, f"master {sc.master!r} has"))
        # Before any Spark job of ours (data preparation included) can fail in a wrong Python.
        check_executor_python(sc, _WORKER_MODULES, self.num_workers)
        self.sc = sc
        self.threads = int(sc.getConf().get("spark.task.cpus", "1"))
        self._ch = WorkerChannels()
        self._control: queue.Queue = queue.Queue()
        self._listener: Any = None
        self._address: tuple[str, int] | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._secret = b""
        self._setup: WorkerSetup | None = None
        self._generation = 0
        self._stage_alive = False       # the current generation's job runs and none of its workers died
        self._job: threading.Thread | None = None
        self._group = ""
        self._relaunch: set[int] = set()
        self._short_of_slots: int | None = None
        self._pending: list[BackendEvent] = []
        self._lock = threading.Lock()
        self.refused_connections = 0
        self.launches = 0

    @staticmethod
    def _resolve_context(spark_context: Any) -> Any:
        try:
            from pyspark import SparkContext
        except ImportError:
            raise CerebroError("SparkBackend needs pyspark: pip install 'cerebro-mop[spark]'") from None
        if spark_context is None:
            sc = SparkContext._active_spark_context
            if sc is None:
                raise ValueError(
                    "SparkBackend found no active SparkContext; start a SparkSession first "
                    "(SparkSession.builder.getOrCreate()) or pass spark_context="
                )
            return sc
        if hasattr(spark_context, "sparkContext"):   # a SparkSession
            spark_context = spark_context.sparkContext
        if not isinstance(spark_context, SparkContext):
            raise TypeError(
                f"The 'spark_context' parameter of SparkBackend must be a SparkContext, a SparkSession or None. "
                f"Got {type(spark_context).__name__} instead."
            )
        return spark_context

    def __repr__(self) -> str:
        return f"SparkBackend(master={self.sc.master!r}, num_workers={self.num_workers})"

    # ------------------------------------------------------------------ monitoring

    def worker_pids(self) -> dict[int, int]:
        """Process id of each connected worker's Python task process (for fault-injection tests)."""
        return dict(self._ch.pids)

    def running_tasks(self) -> dict[int, Task]:
        """Worker -> the task it is running now."""
        return self._ch.running_tasks()

    def startup_problem(self) -> str | None:
        if self._short_of_slots is not None:
            return _slots_message(self._short_of_slots, self.num_workers, "the cluster has offered only")
        if self._stage_alive:
            connected = len(self._ch.ready)
            return (f"the Spark worker stage was submitted but only {connected} of {self.num_workers} tasks "
                    "started and connected (check the executor logs)")
        return None

    # ------------------------------------------------------------------ server

    def _ensure_server(self) -> None:
        if self._listener is not None:
            return
        conf = self.sc.getConf()
        host = conf.get("spark.driver.host", None) or socket.gethostname()
        bind = conf.get("spark.driver.bindAddress", None) or host
        self._listener = mpc.Listener((bind, 0), family="AF_INET", backlog=64)
        self._address = (host, self._listener.address[1])
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        threading.Thread(target=self._accept_loop, args=(self._listener,), name="cerebro-spark-accept", daemon=True).start()

    def _wake(self) -> None:
        try:
            if self._wake_w is not None:
                self._wake_w.send(b"x")
        except OSError:
            pass

    def _accept_loop(self, listener: Any) -> None:
        while True:
            try:
                conn = listener.accept()   # no authkey here: the handshake runs in its own thread
            except OSError:
                return   # listener closed
            threading.Thread(target=self._handshake, args=(conn,), name="cerebro-spark-handshake", daemon=True).start()

    def _handshake(self, conn: Any) -> None:
        # A client that neither authenticates nor goes away is cut off after HANDSHAKE_TIMEOUT.
        timer = threading.Timer(HANDSHAKE_TIMEOUT, _cut, args=(conn,))
        timer.daemon = True
        timer.start()
        secret = self._secret
        try:
            # Both directions: the client proves it knows the secret (only raw bytes are read,
            # nothing is unpickled), then the driver proves it to the client.
            mpc.deliver_challenge(conn, secret)
            mpc.answer_challenge(conn, secret)
            if not conn.poll(HANDSHAKE_TIMEOUT):
                raise mpc.AuthenticationError("no hello")
            hello = conn.recv()
            timer.cancel()
            if not (isinstance(hello, tuple) and len(hello) == 5 and hello[0] == "hello"):
                raise mpc.AuthenticationError(f"unexpected first message {hello!r:.80}")
        except (mpc.AuthenticationError, EOFError, OSError, ValueError) as exc:
            timer.cancel()
            with self._lock:
                self.refused_connections += 1
            log.warning("refused a connection to the SparkBackend server: %s", exc or type(exc).__name__)
            try:
                conn.close()
            except OSError:
                pass
            return
        self._control.put(("conn", hello[1], hello[2], conn, hello[3], hello[4]))
        self._wake()

    # ------------------------------------------------------------------ stage

    def _wait_for_slots(self, deadline: float) -> int:
        slots = available_slots(self.sc)
        while slots < self.num_workers and time.time() < deadline:
            time.sleep(0.5)
            slots = available_slots(self.sc)
        return slots

    def _launch(self) -> None:
        assert self._setup is not None and self._address is not None
        self._generation += 1
        gen = self._generation
        self._group = f"cerebro-mop-{uuid.uuid4().hex[:12]}-{gen}"
        body = functools.partial(_barrier_task, self._address, self._secret, gen, self._setup)
        rdd = self.sc.parallelize(range(self.num_workers), self.num_workers).barrier().mapPartitions(body)
        self._stage_alive = True
        self._short_of_slots = None
        self.launches += 1
        self._job = threading.Thread(target=self._run_job, args=(rdd, gen, self._group), name=f"cerebro-spark-stage-{gen}", daemon=True)
        self._job.start()
        log.info("launched the Spark worker stage (generation %d, %d tasks)", gen, self.num_workers)

    def _run_job(self, rdd: Any, gen: int, group: str) -> None:
        try:
            self.sc.setJobGroup(group, f"cerebro MOP workers (generation {gen})", interruptOnCancel=True)
            rdd.collect()
        except BaseException as exc:   # noqa: BLE001 - reported to the engine's thread
            self._control.put(("job_failed", gen, first_line(exc)))
        else:
            self._control.put(("job_done", gen, ""))
        finally:
            self._wake()

    def _end_stage(self, wait: float) -> None:
        """Stop the current generation: goodbye to idle workers, drop the rest, cancel the job."""
        asked = self._ch.say_goodbye()
        job = self._job
        if job is not None and asked and len(asked) == len(self._ch.conns) == self.num_workers:
            job.join(timeout=min(wait, 10))   # every task exits on its own after the goodbye
        self._ch.clear()
        self._stage_alive = False
        if job is not None and job.is_alive():
            try:
                self.sc.cancelJobGroup(self._group)
            except Exception:  # noqa: BLE001 - the context may be stopping
                log.debug("cancelJobGroup failed", exc_info=True)
            job.join(timeout=wait)
        self._job = None

    def _fail_stage(self, reason: str, events: list[BackendEvent]) -> None:
        """The stage is lost: every worker of it is dead (Spark kills the others anyway)."""
        reported = {e.worker for e in events if isinstance(e, WorkerDied)}
        for w in range(self.num_workers):
            if w not in reported:
                events.append(WorkerDied(w, f"the Spark worker stage failed: {reason}"))
        self._ch.clear()
        self._stage_alive = False
        if self._job is not None and self._job.is_alive():
            try:
                self.sc.cancelJobGroup(self._group)
            except Exception:  # noqa: BLE001
                log.debug("cancelJobGroup failed", exc_info=True)

    # ------------------------------------------------------------------ Backend

    def start(self, setup: WorkerSetup) -> None:
        # Spark executors have their own log files; the driver's log_dir may not exist there.
        setup = WorkerSetup(setup.store, setup.prepared, setup.threads or self.threads, None, setup.frameworks)
        reusable = (
            self._setup is not None and self._setup.key() == setup.key() and self._stage_alive
            and not self._ch.busy and len(self._ch.ready) == self.num_workers
        )
        if reusable:
            self._pending.extend(self._ch.ready_event(w) for w in range(self.num_workers))
            return
        self._end_stage(wait=30)
        self._ensure_server()
        self._setup = setup
        self._secret = os.urandom(32)
        self._relaunch.clear()
        slots = self._wait_for_slots(time.time() + min(self.start_timeout, REGISTRATION_GRACE))
        if slots < self.num_workers:
            raise CerebroError(_slots_message(slots, self.num_workers, "the cluster offers"))
        check_executor_python(self.sc, _WORKER_MODULES + tuple(setup.frameworks), self.num_workers)
        self._launch()

    def restart(self, worker: int) -> None:
        # The whole stage is relaunched (barrier tasks live and die together), once every
        # worker that the engine knows to be dead asked for it; see wait().
        self._relaunch.add(worker)

    def submit(self, worker: int, task_id: int, task: Task) -> None:
        self._ch.submit(worker, task_id, task)

    def _maybe_relaunch(self) -> None:
        if not self._relaunch or self._stage_alive:
            return
        if self._job is not None and self._job.is_alive():
            return   # the cancelled stage is still winding down
        slots = available_slots(self.sc)
        if slots < self.num_workers:
            self._short_of_slots = slots
            return
        self._relaunch.clear()
        self._launch()

    def wait(self, timeout: float | None) -> list[BackendEvent]:
        if self._pending:
            out, self._pending = self._pending, []
            return out
        self._maybe_relaunch()
        if self._relaunch and not self._stage_alive:
            timeout = 0.5 if timeout is None else min(timeout, 0.5)   # poll for slots / the old job
        by_conn = {conn: w for w, conn in self._ch.conns.items()}
        waitables: list[Any] = list(by_conn) + ([self._wake_r] if self._wake_r is not None else [])
        if not waitables:
            time.sleep(timeout or 0)
            return []
        ready = mpc.wait(waitables, timeout)
        events: list[BackendEvent] = []
        lost: list[int] = []
        for obj in ready:
            if obj is self._wake_r:
                continue
            w = by_conn[obj]
            if not self._ch.drain(w, events):
                lost.append(w)
        failure = self._read_control()
        if lost and self._stage_alive:
            failure = failure or f"worker {', '.join(map(str, lost))} disconnected"
        if failure is not None and self._stage_alive:
            self._fail_stage(failure, events)
        return events

    def _read_control(self) -> str | None:
        """Register authenticated workers; return why the current stage failed, if it did."""
        if self._wake_r is not None:
            try:
                while self._wake_r.recv(4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        failure = None
        while True:
            try:
                item = self._control.get_nowait()
            except queue.Empty:
                return failure
            kind, gen = item[0], item[1]
            if kind == "conn":
                _, _, w, conn, host, pid = item
                if gen != self._generation or not self._stage_alive or w in self._ch.conns:
                    conn.close()   # a task of an older stage, or a duplicate
                    continue
                log.debug("worker %d connected from %s (pid %s)", w, host, pid)
                self._ch.add(w, conn)
            elif gen == self._generation and self._stage_alive:
                # A job that ends while its stage should be running failed, whatever Spark says.
                failure = item[2] if kind == "job_failed" else "the Spark worker stage ended early"

    def release(self) -> None:
        self._end_stage(wait=30)
        self._relaunch.clear()
        self._pending = []

    def close(self) -> None:
        self.release()
        self._setup = None
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.close()
            except OSError:
                pass
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._wake_r = self._wake_w = None
        self._address = None
