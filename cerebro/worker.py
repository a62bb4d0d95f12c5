"""What one MOP worker does, whatever process or Spark task it lives in.

A :class:`WorkerRuntime` owns one training and one validation partition, read once from the
store with pyarrow and kept in memory, and one cache of built models per framework.  A task
names its partition: one taken over from a retired worker is read on first use and kept too.  The backends
(local processes, Spark tasks, the inline test backend) only move tasks and results
(:class:`~cerebro.experiment.tasks.Task` in, :class:`~cerebro.experiment.tasks.TaskResult` out).
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import time
from typing import Any

from .backends.devices import host, worker_device
from .errors import CerebroError, StoreFullError, StoreIntegrityError
from .experiment.tasks import Task, TaskResult
from .frameworks.base import Framework, ModelCache, deterministic_error, get_framework

log = logging.getLogger(__name__)


def where() -> tuple[str, str]:
    """(host, device) of this worker process, as ``visits`` records them: the device is
    what the backend pinned the worker to (``"cuda:<physical id>"``), else ``"cpu"``."""
    return host(), worker_device()


class CheckpointUnusable(CerebroError):
    """A task's input checkpoint cannot be read: it is missing from the store or its bytes do not
    match the journal's sha256.  Reported as ``TaskFailed.cause == "checkpoint"``: rather than
    retry the same read, the engine rolls the model back to the state its epoch started from."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class CheckpointCorrupted(CheckpointUnusable):
    """A checkpoint's bytes do not match the sha256 the journal committed for it."""


def read_checkpoint(store: Any, path: str, checksum: str | None) -> bytes:
    """Read a checkpoint and check its sha256 against the journal's; never return corrupt bytes
    (:class:`CheckpointCorrupted`; a missing file is the store's ``FileNotFoundError``)."""
    data = store.read_bytes(path)
    if checksum is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != checksum:
            raise CheckpointCorrupted(
                f"checkpoint {path} is corrupted: sha256 {actual[:16]}... does not match the committed "
                f"{checksum[:16]}... ({len(data)} bytes read); refusing to load it", path
            )
    return data


def read_pickled(store: Any, path: str) -> Any:
    """Unpickle a spec or search file named by the journal, after checking its bytes against
    the sha256 its name carries (:func:`cerebro.storage.layout.pickle_digest`).

    A pickle runs code when it is read: one replaced in the store (or corrupted) is refused
    here, before ``pickle.loads`` sees it.  A name without a digest (written by cerebro before
    0.4) is refused too."""
    from .storage import layout

    expected = layout.pickle_digest(path)
    if expected is None:
        raise StoreIntegrityError(
            f"{store.url}/{path} carries no sha256 in its name, so it cannot be checked before it is unpickled "
            "(it was written by an older cerebro); refusing to load it"
        )
    data = store.read_bytes(path)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise StoreIntegrityError(
            f"{store.url}/{path} was changed after cerebro wrote it: sha256 {actual[:16]}... is not the "
            f"{expected[:16]}... its name and the journal record ({len(data)} bytes read); refusing to unpickle it"
        )
    return pickle.loads(data)


def failure_cause(exc: BaseException) -> str | None:
    """What kind of failure a task's exception is, for the engine (``TaskFailed.cause``):
    ``"store_full"`` when the store had no room for a write, ``"integrity"`` when a file to
    unpickle was changed in the store, ``"data"`` when a prepared partition file does not match
    its manifest, ``"checkpoint"`` when the task's input checkpoint is missing or corrupted
    (:class:`CheckpointUnusable`), ``"deterministic"`` for an error of the model or its data that
    a retry would raise again (:func:`~cerebro.frameworks.base.deterministic_error`: not retried),
    else None (an ordinary failure, retried)."""
    if isinstance(exc, StoreFullError):
        return "store_full"
    if isinstance(exc, StoreIntegrityError):
        return "integrity"
    if isinstance(exc, CheckpointUnusable):
        return "checkpoint"
    from .data import PreparedDataCorrupted

    if isinstance(exc, PreparedDataCorrupted):
        return "data"
    if deterministic_error(exc):
        return "deterministic"
    return None


class WorkerRuntime:
    """Runs train and eval tasks for one partition.  Created once per worker process.

    Construction blocks while the partitions are read and the frameworks named in
    ``frameworks`` are imported (TensorFlow takes seconds: better at start-up than in the first
    task).  A task whose spec names another framework imports it on first use.  The worker
    talks to Keras or PyTorch through :class:`cerebro.frameworks.base.Framework` only.
    """

    def __init__(self, store: Any, prepared: dict, partition: int, threads: int | None = None,
                 frameworks: tuple[str, ...] = ()) -> None:
        from .data import PreparedData, load_partition

        self.store = store
        self.partition = partition
        self.threads = threads
        self.prepared = PreparedData.from_dict(prepared)
        self.train = load_partition(store, self.prepared, "train", partition)
        self.val = load_partition(store, self.prepared, "val", partition)
        self._served: dict[tuple[str, int], Any] = {}   # (split, partition) -> data of partitions it took over
        self._frameworks: dict[str, Framework] = {}
        self._caches: dict[str, ModelCache] = {}
        self._specs: dict[str, Any] = {}
        self._arrays: dict[tuple[str, ...], tuple[Any, Any]] = {}
        self._setup_s = 0.0   # one-time set-up in the running task: framework, spec, input arrays
        for name in frameworks:
            self.framework(name)

    def framework(self, name: str) -> Framework:
        """The adapter ``name``, imported and thread-limited on first use in this process."""
        fw = self._frameworks.get(name)
        if fw is None:
            started = time.perf_counter()
            fw = get_framework(name)
            fw.limit_threads(self.threads)
            fw.warm_up()
            self._frameworks[name] = fw
            self._caches[name] = fw.model_cache()
            self._setup_s += time.perf_counter() - started
        return fw

    def cache(self, name: str) -> ModelCache:
        self.framework(name)
        return self._caches[name]

    def _spec(self, path: str):
        spec = self._specs.get(path)
        if spec is None:
            started = time.perf_counter()
            spec = read_pickled(self.store, path)
            self._specs[path] = spec
            self._setup_s += time.perf_counter() - started
        return spec

    def partition_data(self, split: str, partition: int):
        """The ``split`` ("train" or "val") rows of ``partition``: this worker's own, read at start,
        or those of a partition it took over from a retired worker, read from the store on first
        use (and checked against the manifest like its own) and then kept in memory."""
        if partition == self.partition:
            return self.train if split == "train" else self.val
        part = self._served.get((split, partition))
        if part is None:
            from .data import load_partition

            log.info("worker %d serves partition %d too: reading its %s rows", self.partition, partition, split)
            part = self._served[(split, partition)] = load_partition(self.store, self.prepared, split, partition)
        return part

    def _xy(self, fw: Framework, spec, split: str, partition: int, features: list[str] | None = None):
        # Inputs depend only on the framework, the model's input/output signature and its
        # feature columns (an ablation variant may leave one out), not on its weights.
        columns = list(features) if features else list(self.prepared.feature_columns)
        key = (fw.name, repr((spec.input_shapes, spec.input_dtypes, spec.num_outputs, columns)), split, partition)
        cached = self._arrays.get(key)
        if cached is None:
            started = time.perf_counter()
            part = self.partition_data(split, partition)
            x = fw.make_inputs(spec, part.features, columns)
            y = fw.make_targets(spec, part.labels, list(self.prepared.label_columns))
            cached = (x, y)
            self._arrays[key] = cached
            self._setup_s += time.perf_counter() - started
        return cached

    def run(self, task: Task) -> TaskResult:
        """Run one task; return its result.  Raises on failure (the backend reports the traceback)."""
        t0 = time.perf_counter()
        self._setup_s = 0.0
        spec = self._spec(task.spec)
        fw = self.framework(spec.framework)
        cache = self._caches[fw.name]
        built = cache.build_seconds
        ckpt = task.checkpoint

        def state() -> bytes:
            try:
                return read_checkpoint(self.store, ckpt, task.checksum)
            except FileNotFoundError as exc:
                raise CheckpointUnusable(f"checkpoint {ckpt} of {task.model_id} is missing from the store: {exc}",
                                         ckpt) from exc

        model = cache.load(spec, task.model_id, ckpt, state)
        split = "train" if task.kind == "train" else "val"
        x, y = self._xy(fw, spec, split, task.partition, task.features)
        t1 = time.perf_counter()
        # The part of the load that a later visit finds done: not a cost of this hop.
        build = self._setup_s + cache.build_seconds - built
        if task.kind == "train":
            try:
                metrics = fw.train_sub_epoch(model, x, y, batch_size=spec.batch_size, seed=task.seed,
                                             epoch_end=task.epoch_end)
            except BaseException:
                cache.invalidate(model)  # its state is half-trained: never reuse it
                raise
            t2 = time.perf_counter()
            state = fw.state_to_bytes(model)
            checksum = hashlib.sha256(state).hexdigest()
            self.store.write_bytes(task.out, state)
            cache.note_saved(task.model_id, task.out, model)
            t3 = time.perf_counter()
        else:
            rows = self.partition_data("val", task.partition).num_rows
            metrics = fw.evaluate(model, x, y, batch_size=spec.batch_size) if rows else {"rows": 0}
            t2 = t3 = time.perf_counter()
            checksum = None
        rows = int(metrics.pop("rows"))
        return TaskResult(rows, metrics, task.out, checksum,
                          {"load": t1 - t0, "compute": t2 - t1, "save": t3 - t2, "build": build})
