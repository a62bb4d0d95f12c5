"""Fixtures shared by the benchmark smoke tests."""

from __future__ import annotations

import json

import pytest

from benchmarks import workload

WORKERS = 2


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """The smoke job: digits, 2 shards and replicas, 2 configurations, 2 epochs; (tmp dir, jobs.json)."""
    tmp = tmp_path_factory.mktemp("bench-smoke")
    x, y = workload.digits_arrays()
    workload.write_dataset(tmp / "digits", x, y, workload.validation_mask(len(x)), shards=WORKERS, replicas=WORKERS)
    path = tmp / "jobs.json"
    path.write_text(json.dumps([{"tag": "accuracy", "data": str(tmp / "digits"), "epochs": 2, "seed": 2020,
                                 "max_configs": 2, "scheduler": "deterministic"}]))
    return tmp, path
