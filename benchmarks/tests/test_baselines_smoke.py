"""Smoke run of every baseline engine on tiny data: does each one still train and report?

Not part of the default ``python -m pytest`` (testpaths = tests): CI runs it after
``python -m benchmarks.setup_baselines``, as ``python -m pytest benchmarks/tests``.
No timing assertions: each engine must finish, report its figures, and learn digits well
above chance (10%) in two epochs.  An engine whose dependency is missing is a failure, except
Horovod and MOP on Spark, which are skipped with the reason (the build log's, for Horovod).
Every system of ``benchmarks.run.SYSTEMS`` runs, MOP on PyTorch (``mop-torch``), Ray Tune (FIFO
and ASHA, installed by ``benchmarks.setup_baselines``) and MOP's ASHA included.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import run

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 2


@pytest.fixture(scope="module")
def unavailable():
    return run.availability(WORKERS)


@pytest.mark.parametrize("engine", run.SYSTEMS)
def test_engine_trains_and_reports(engine, jobs, unavailable):
    if engine in ("horovod", "mop-spark") and unavailable.get(engine):
        pytest.skip(unavailable[engine])
    assert not unavailable.get(engine), unavailable.get(engine)
    tmp, jobs_path = jobs
    out = tmp / f"{engine}.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.baselines", engine, "--jobs", str(jobs_path),
                           "--out", str(out), "--workers", str(WORKERS)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    result = json.loads(out.read_text())
    (job,) = result["jobs"]
    assert job["tag"] == "accuracy" and job["epochs"] == 2
    assert job["span_s"] > 0 and job["train_rows"] > 0 and job["bytes_stored"] > 0
    assert len(job["configs"]) == 2
    asha = engine in run.SEARCH_SYSTEMS
    for config in job["configs"]:
        accs = config["val_accuracy"]
        # ASHA may stop a configuration at its first rung (1 epoch); the others train both epochs.
        assert (1 <= len(accs) <= 2 if asha else len(accs) == 2) and all(math.isfinite(a) for a in accs)
        assert accs[-1] > (0.3 if len(accs) == 1 else 0.5), config  # digits: far above chance (10%)
    if asha:  # the best goes on at every rung, so one configuration reaches the last epoch
        assert max(len(c["val_accuracy"]) for c in job["configs"]) == 2
        assert job["config_epochs"] == sum(len(c["val_accuracy"]) for c in job["configs"])
    if engine.startswith(("mop", "ray-tune", "task-parallel")):  # summed over the engine's processes
        assert job["peak_rss_bytes"] > 100e6
    if engine.startswith("ray-tune"):
        assert 0 < job["busy_fraction"] <= 1 and job["object_store_bytes"] > 0
    if not engine.startswith("sequential"):
        assert job["bytes_moved"] > 0, "every distributed engine moves bytes"
    if engine.startswith("mop"):  # MOP on PyTorch trains torch models, the others Keras ones
        assert job["frameworks"] == (["torch"] if engine == "mop-torch" else ["keras"])
        assert 0 < job["busy_fraction"] <= 1
        # Every worker builds each architecture on its first visit: counted apart from the hops.
        assert job["build_share"] > 0 and job["hop_share"] > 0
    figures = run.system_figures(engine, [{"jobs": [dict(job, tag="search" if asha else "time")]}], WORKERS)
    assert (figures["search_s"] if asha else figures["epoch_s"]) > 0
