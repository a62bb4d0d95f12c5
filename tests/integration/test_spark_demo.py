"""``cerebro demo --backend spark``: the whole demo on Spark local mode, as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("pyspark")


@pytest.mark.slow
def test_demo_on_spark_local_mode(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cerebro", "demo", "--backend", "spark", "--epochs", "2", "--store", str(tmp_path / "s")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = " ".join(proc.stdout.split())   # rich wraps lines at the terminal width
    assert "Spark local[2] barrier stage" in out
    best = re.search(r"with validation accuracy\s+([0-9.]+)", out)
    assert best and float(best.group(1)) > 0.8, out[-2000:]
    # 8 models x 2 epochs x 2 partitions, all ok.
    assert "32 sub-epochs" in out
