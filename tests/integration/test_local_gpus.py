"""GPU placement end to end with real LocalBackend worker processes, on a fake device list.

``CEREBRO_FAKE_GPUS`` (internal, for tests) stands in for ``nvidia-smi``, so this runs on a
machine without a GPU: it checks what each worker process was given (``CUDA_VISIBLE_DEVICES``,
``CEREBRO_DEVICE``) before any framework import, not that a framework then uses the GPU.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from cerebro import LocalBackend, LocalStore
from cerebro.backends.base import WorkerDied, WorkerReady, WorkerSetup
from cerebro.data import prepare_data


def _started(backend: LocalBackend, store: LocalStore) -> dict[int, WorkerReady]:
    frame = pd.DataFrame({"x": np.arange(80, dtype="float32"), "y": np.arange(80) % 2})
    prepared = prepare_data(frame, store, feature_columns="x", label_columns="y",
                            num_partitions=backend.num_workers, seed=1)
    backend.start(WorkerSetup(store, prepared.to_dict(), threads=1))  # no framework imported
    ready: dict[int, WorkerReady] = {}
    deadline = time.monotonic() + 60
    while len(ready) < backend.num_workers and time.monotonic() < deadline:
        for e in backend.wait(1.0):
            assert not isinstance(e, WorkerDied), e.reason
            if isinstance(e, WorkerReady):
                ready[e.worker] = e
    assert sorted(ready) == list(range(backend.num_workers))
    return ready


def _placement(backend: LocalBackend) -> list[tuple[str | None, str | None]]:
    envs = [backend._probe_env(w) for w in range(backend.num_workers)]
    return [(env.get("CUDA_VISIBLE_DEVICES"), env.get("CEREBRO_DEVICE")) for env in envs]


@pytest.mark.slow
def test_each_worker_process_sees_only_its_own_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("CEREBRO_FAKE_GPUS", "0,1,2,3")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    store = LocalStore(str(tmp_path / "store"))
    with LocalBackend(gpus=[1, 3], workers_per_gpu=2) as backend:
        ready = _started(backend, store)
        assert _placement(backend) == [("1", "cuda:1"), ("3", "cuda:3"), ("1", "cuda:1"), ("3", "cuda:3")]
        assert [ready[w].device for w in range(4)] == ["cuda:1", "cuda:3", "cuda:1", "cuda:3"]  # what visits record
        assert backend._probe_env(0)["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        pid = ready[2].pid
        backend.restart(2)  # a replacement keeps its predecessor's GPU
        deadline = time.monotonic() + 60
        while 2 not in backend._ch.ready and time.monotonic() < deadline:
            backend.wait(1.0)
        assert backend.worker_pids()[2] != pid
        assert _placement(backend)[2] == ("1", "cuda:1")
    with LocalBackend(gpus="all") as backend:
        _started(backend, LocalStore(str(tmp_path / "store2")))
        assert _placement(backend) == [("0", "cuda:0"), ("1", "cuda:1"), ("2", "cuda:2"), ("3", "cuda:3")]


@pytest.mark.slow
def test_cpu_workers_see_no_gpu_whatever_the_driver_sees(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    with LocalBackend(2) as backend:
        _started(backend, LocalStore(str(tmp_path / "store")))
        assert _placement(backend) == [("", "cpu"), ("", "cpu")]


def test_gpus_are_refused_at_construction_when_none_is_visible(monkeypatch):
    monkeypatch.setenv("CEREBRO_FAKE_GPUS", "")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(ValueError, match=r"no GPU is visible \(CEREBRO_FAKE_GPUS found none"):
        LocalBackend(gpus="all")
    monkeypatch.setenv("CEREBRO_FAKE_GPUS", "0,1")
    with pytest.raises(ValueError, match=r"GPU 5 does not exist or is hidden; visible: 0, 1"):
        LocalBackend(gpus=[5])
