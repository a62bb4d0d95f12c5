"""SparkBackend on a real multi-executor Spark (``local-cluster[2,1,1024]``: two executor JVMs,
one core each), with faults: an executor JVM killed mid-sub-epoch, a Python worker killed.

Named so that it runs after the ``local[2]`` modules: one SparkContext per process, one switch.
"""

from __future__ import annotations

import pytest

pytest.importorskip("pyspark")

from cerebro import GridSearch, LocalBackend, LocalStore, hp_choice  # noqa: E402
from cerebro.backends.spark import SparkBackend  # noqa: E402
from spark_helpers import Killer, assert_exactly_once, assert_same_models, make_frame, make_gen  # noqa: E402

pytestmark = pytest.mark.slow

SPACE = {"lr": hp_choice([1e-3, 1e-2])}
EPOCHS = 2
ROWS = 8000


@pytest.fixture(scope="module")
def cluster():
    from spark_session import get_session, stop_session

    session = get_session("local-cluster[2,1,1024]")
    yield session
    stop_session()


@pytest.fixture(scope="module")
def frame():
    return make_frame(ROWS)


@pytest.fixture(scope="module")
def reference(frame, tmp_path_factory):
    with LocalBackend(2) as backend:
        return _fit(backend, tmp_path_factory.mktemp("ref"), frame)


def _fit(backend, store_dir, frame):
    # Small batches: a sub-epoch lasts long enough (~1 s) to be killed in the middle.
    return GridSearch(backend, LocalStore(store_dir), make_gen(batch_size=16), SPACE, EPOCHS,
                      scheduler="deterministic", seed=11, verbose=0).fit(frame)


@pytest.mark.parametrize("target", ["executor", "python-worker"])
def test_a_killed_worker_is_recovered_exactly_once_with_the_same_models(cluster, frame, reference, target, tmp_path):
    with SparkBackend(cluster, 2, start_timeout=300) as backend:
        killer = Killer(backend, target, delay=0.3)
        result = _fit(backend, tmp_path, frame)
        killer.join(timeout=5)
    assert killer.killed is not None, "the fault was never injected"
    # The kill cost the stage: it was relaunched, and the sub-epoch that was running failed ...
    assert backend.launches >= 2
    failed = result.visits[result.visits.status == "failed"]
    assert ((failed.model_id == killer.killed["model_id"]) & (failed.epoch == killer.killed["epoch"])).any()
    # ... then was redone from the last committed checkpoint: every visit ok exactly once,
    # and the models are exactly those of a run without the fault.
    assert_exactly_once(result, 2, EPOCHS, 2)
    assert not result.failures
    assert_same_models(reference, result)
