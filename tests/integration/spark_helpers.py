"""Shared pieces of the SparkBackend tests: a small workload and fault-injection helpers."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pandas as pd


def make_frame(rows: int = 4000, dim: int = 16, seed: int = 0) -> pd.DataFrame:
    """Generated classification data: ``features`` (float32 arrays) and an int ``label``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, dim)).astype(np.float32)
    y = np.argmax(x[:, :5] + 0.3 * rng.normal(size=(rows, 5)), axis=1).astype(np.int64)
    return pd.DataFrame({"features": list(x), "label": y})


def make_gen(dim: int = 16, batch_size: int = 32):
    def gen(params):
        import keras

        from cerebro import KerasEstimator

        model = keras.Sequential([
            keras.Input((dim,)),
            keras.layers.Dense(params.get("width", 32), activation="relu"),
            keras.layers.Dense(5, activation="softmax"),
        ])
        return KerasEstimator(model, keras.optimizers.Adam(params["lr"]), "sparse_categorical_crossentropy",
                              metrics=["accuracy"], batch_size=batch_size)
    return gen


def final_weights(result) -> dict:
    return {m: [np.asarray(w) for w in tm.keras().get_weights()] for m, tm in result.models.items()}


def assert_same_models(a, b) -> None:
    """Two results hold the same models: equal histories and bit-identical final weights."""
    cols = [c for c in a.history.columns if c.startswith(("train_", "val_"))]
    ha = a.history.sort_values(["model_id", "epoch"]).reset_index(drop=True)
    hb = b.history.sort_values(["model_id", "epoch"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(ha[["model_id", "epoch", *cols]], hb[["model_id", "epoch", *cols]])
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for m in wa:
        for x, y in zip(wa[m], wb[m]):
            np.testing.assert_array_equal(x, y, err_msg=f"weights of {m} differ")


def assert_exactly_once(result, num_models: int, epochs: int, partitions: int) -> None:
    """Every (model, epoch, partition) has exactly one ok visit."""
    ok = result.visits[result.visits.status == "ok"]
    counts = ok.groupby(["model_id", "epoch", "partition"]).size()
    assert len(counts) == num_models * epochs * partitions
    assert (counts == 1).all(), counts[counts != 1]


def executor_jvm(pid: int) -> int | None:
    """Walk /proc up from a task's Python process to the executor JVM (``--executor-id``)."""
    while pid > 1:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        if argv and argv[0].endswith(b"java") and b"--executor-id" in argv:
            return pid
        with open(f"/proc/{pid}/status") as f:
            pid = next(int(line.split()[1]) for line in f if line.startswith("PPid:"))
    return None


class Killer(threading.Thread):
    """Kills worker 0's process (or its executor JVM) with SIGKILL once, mid-way through a train task."""

    def __init__(self, backend, target: str, delay: float = 0.4, epoch: int = 1) -> None:
        super().__init__(daemon=True)
        self.backend, self.target, self.delay, self.epoch = backend, target, delay, epoch
        self.killed: dict | None = None
        self.start()

    def run(self) -> None:
        deadline = time.time() + 600
        while time.time() < deadline:
            task = self.backend.running_tasks().get(0)
            if task is not None and task.kind == "train" and task.epoch == self.epoch:
                time.sleep(self.delay)
                if self.backend.running_tasks().get(0) is not task:
                    continue   # it finished already: wait for a longer one
                pid = self.backend.worker_pids()[0]
                victim = executor_jvm(pid) if self.target == "executor" else pid
                assert victim is not None, f"no executor JVM above pid {pid}"
                os.kill(victim, signal.SIGKILL)
                self.killed = {"pid": victim, "model_id": task.model_id, "epoch": task.epoch}
                return
            time.sleep(0.02)
