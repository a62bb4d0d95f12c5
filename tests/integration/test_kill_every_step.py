"""The driver killed at every distinct step of a small experiment (issue 16's fault injection).

``kill_every_step.py`` SIGKILLs the driver at each of the experiment's store mutations in turn
(start-up writes, data preparation, model creation, every checkpoint, every journal append
(torn halfway), every deletion, the result tables, the lock's release), then tries both
``fit(df, resume=True)`` and a fresh ``fit(df)`` on copies of what the kill left.  Exactly one
of them must work and give the uninterrupted run's models bit for bit; after the run was
marked finished, neither is needed and the store holds the finished run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("kill_every_step.py")


def test_every_kill_point_leaves_exactly_one_way_forward_to_the_same_models(tmp_path):
    pytest.importorskip("torch")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "work")], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    points = report["points"]
    assert len(points) == report["steps"] > 40
    ops = Counter(p["op"] for p in points)
    assert ops["append_bytes"] > 20 and ops["write_bytes"] > 10 and ops["delete"] > 5 and ops["rename"] >= 1
    finished_at = None
    for p in points:
        assert p["killed"], p
        ways = p["ways"]
        working = [w for w, r in ways.items() if r["status"] == "ok"]
        if not working:
            # Only once the run is marked finished: nothing is left to do, and the results are there.
            assert p["finished"]["marks"][-1] == "finished", p
            assert p["finished"]["tables"] == ["evaluations.csv", "history.csv", "visits.csv"], p
            assert "already finished" in ways["resume"]["error"] and "already exists" in ways["fresh"]["error"], p
            finished_at = finished_at or p["k"]
            continue
        assert len(working) == 1, p
        assert ways[working[0]]["same"], p
        other = "fresh" if working == ["resume"] else "resume"
        assert ways[other]["error"].startswith(("ValueError", "CerebroError")), p
        assert finished_at is None, p   # a working way forward never comes after the finished mark
    assert finished_at == len(points)    # the only step after the finished mark: releasing the lock
    # Both ways forward occur: start-up and preparation kills start afresh, later ones resume.
    fresh = [p["k"] for p in points if p["ways"]["fresh"]["status"] == "ok"]
    resumed = [p["k"] for p in points if p["ways"]["resume"]["status"] == "ok"]
    assert fresh and resumed and max(fresh) < min(resumed)
