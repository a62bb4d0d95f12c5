"""What one MOP worker does, whatever process or Spark task it lives in.

A :class:`WorkerRuntime` owns one training and one validation partition, read once from the
store with pyarrow and kept in memory, and a cache of compiled Keras models.  The backends
(local processes, Spark tasks, the inline test backend) only move tasks and results
(:class:`~cerebro.experiment.tasks.Task` in, :class:`~cerebro.experiment.tasks.TaskResult` out).
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import time
from typing import Any

from .errors import CerebroError
from .experiment.tasks import Task, TaskResult

log = logging.getLogger(__name__)


def read_checkpoint(store: Any, path: str, checksum: str | None) -> bytes:
    """Read a checkpoint and check its sha256 against the journal's; never return corrupt bytes."""
    data = store.read_bytes(path)
    if checksum is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != checksum:
            raise CerebroError(
                f"checkpoint {path} is corrupted: sha256 {actual[:16]}... does not match the committed "
                f"{checksum[:16]}... ({len(data)} bytes read); refusing to load it"
            )
    return data


class WorkerRuntime:
    """Runs train and eval tasks for one partition.  Created once per worker process.

    Construction blocks while TensorFlow is imported and the partitions are read.
    """

    def __init__(self, store: Any, prepared: dict, partition: int, threads: int | None = None) -> None:
        from .frameworks import keras as kf  # heavy import, once per worker process
        from .data import PreparedData, load_partition

        kf.limit_threads(threads)
        self._kf = kf
        self.store = store
        self.partition = partition
        self.prepared = PreparedData.from_dict(prepared)
        self.train = load_partition(store, self.prepared, "train", partition)
        self.val = load_partition(store, self.prepared, "val", partition)
        self.cache = kf.ModelCache()
        self._specs: dict[str, Any] = {}
        self._arrays: dict[tuple[str, str], tuple[Any, Any]] = {}

    def _spec(self, path: str):
        spec = self._specs.get(path)
        if spec is None:
            spec = pickle.loads(self.store.read_bytes(path))
            self._specs[path] = spec
        return spec

    def _xy(self, spec, split: str, features: list[str] | None = None):
        # Inputs depend only on the model's input/output signature and its feature columns
        # (an ablation variant may leave one out), not on its weights.
        columns = list(features) if features else list(self.prepared.feature_columns)
        key = (repr((spec.input_shapes, spec.num_outputs, columns)), split)
        cached = self._arrays.get(key)
        if cached is None:
            part = self.train if split == "train" else self.val
            model = self.cache.get(spec)
            x = self._kf.make_inputs(model, part.features, columns)
            y = self._kf.make_targets(model, part.labels, list(self.prepared.label_columns))
            cached = (x, y)
            self._arrays[key] = cached
        return cached

    def run(self, task: Task) -> TaskResult:
        """Run one task; return its result.  Raises on failure (the backend reports the traceback)."""
        t0 = time.perf_counter()
        spec = self._spec(task.spec)
        ckpt = task.checkpoint
        model = self.cache.load(spec, task.model_id, ckpt, lambda: read_checkpoint(self.store, ckpt, task.checksum))
        split = "train" if task.kind == "train" else "val"
        x, y = self._xy(spec, split, task.features)
        t1 = time.perf_counter()
        if task.kind == "train":
            metrics = self._kf.train_sub_epoch(model, x, y, batch_size=spec.batch_size, seed=task.seed)
            t2 = time.perf_counter()
            state = self._kf.state_to_bytes(model)
            checksum = hashlib.sha256(state).hexdigest()
            self.store.write_bytes(task.out, state)
            self.cache.note_saved(task.model_id, task.out, model)
            t3 = time.perf_counter()
        else:
            rows = self.val.num_rows
            metrics = self._kf.evaluate(model, x, y, batch_size=spec.batch_size) if rows else {"rows": 0}
            t2 = t3 = time.perf_counter()
            checksum = None
        rows = int(metrics.pop("rows"))
        return TaskResult(rows, metrics, task.out, checksum, {"load": t1 - t0, "compute": t2 - t1, "save": t3 - t2})
