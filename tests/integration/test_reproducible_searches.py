"""scheduler="deterministic": the same call gives the same decisions and the same models for every
search (TPE, Hyperband, ASHA, PBT), however the workers' timings go, and on SparkBackend as on
LocalBackend.

Each search runs twice on digits with real worker processes (one LocalBackend for the module).
In the second run a test thread makes worker 0 a straggler: it SIGSTOPs that worker's process at
the start of each of its first training sub-epochs and SIGCONTs it a moment later (through
``LocalBackend.worker_pids()`` / ``running_tasks()``, the backend's fault-injection surface; no
hook in cerebro), so the two runs' tasks finish in really different orders.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from cerebro import LocalStore
from cerebro.experiment.journal import read_journal
from cerebro.frameworks.keras import limit_threads
from resume_search import assert_decisions_mattered, assert_same_run, make_search, snapshot

pytestmark = pytest.mark.slow

limit_threads(1)


@pytest.fixture(scope="module")
def first_runs(backend, store, df):
    """kind -> the first run's result (computed once, on first use: the Spark test reuses ASHA's)."""
    cache: dict = {}

    def first(kind):
        if kind not in cache:
            cache[kind] = make_search(kind, backend, store, f"{kind}-first").fit(df)
        return cache[kind]

    return first


class Straggler(threading.Thread):
    """Pauses ``worker``'s process (SIGSTOP ... SIGCONT, ``pause`` seconds) at the start of each of
    its first ``times`` training sub-epochs."""

    def __init__(self, backend, worker: int = 0, pause: float = 0.3, times: int = 6) -> None:
        super().__init__(daemon=True)
        self.backend, self.worker, self.pause, self.times = backend, worker, pause, times
        self.paused = 0
        self._done = threading.Event()

    def __enter__(self) -> "Straggler":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self.join(timeout=10)

    def run(self) -> None:
        last = None
        while not self._done.is_set() and self.paused < self.times:
            task = self.backend.running_tasks().get(self.worker)
            if task is not None and task is not last and task.kind == "train":
                last = task
                pid = self.backend.worker_pids().get(self.worker)
                if pid:
                    os.kill(pid, signal.SIGSTOP)
                    try:
                        time.sleep(self.pause)
                    finally:
                        os.kill(pid, signal.SIGCONT)
                    self.paused += 1
            time.sleep(0.002)


def finish_order(r) -> list[tuple]:
    ok = r.visits[r.visits.status == "ok"].sort_values("end", kind="stable")
    return list(ok[["model_id", "epoch", "partition"]].itertuples(index=False, name=None))


@pytest.mark.parametrize("kind", ["tpe", "hyperband", "asha", "pbt"])
def test_same_call_gives_the_same_search_whatever_the_timing(kind, backend, store, df, first_runs):
    a = first_runs(kind)
    assert_decisions_mattered(kind, a, read_journal(store, f"{kind}-first"))
    with Straggler(backend) as straggler:
        b = make_search(kind, backend, store, f"{kind}-again").fit(df)
    assert straggler.paused > 0, "the straggler never slowed worker 0"
    assert_same_run(snapshot(a), snapshot(b))
    # The timings really differed: the sub-epochs did not finish in the same order.
    assert finish_order(a) != finish_order(b), "the straggler did not change the order in which sub-epochs finished"


def test_spark_backend_gives_the_local_backend_asha_search(spark, first_runs, tmp_path, df):
    from cerebro.backends.spark import SparkBackend

    expected = first_runs("asha")
    spark_store = LocalStore(str(tmp_path / "spark"))
    with SparkBackend(spark, 2) as sb:
        got = make_search("asha", sb, spark_store, "asha-spark").fit(df)
    assert_decisions_mattered("asha", got, read_journal(spark_store, "asha-spark"))
    assert set(got.visits.worker) == {0, 1}
    assert_same_run(snapshot(expected), snapshot(got))
