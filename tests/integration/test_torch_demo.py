"""``cerebro demo --framework torch``: the whole demo on PyTorch models, as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("torch")


@pytest.mark.slow
def test_demo_on_pytorch(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cerebro", "demo", "--framework", "torch", "--epochs", "3", "--store", str(tmp_path / "s")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = " ".join(proc.stdout.split())   # rich wraps lines at the terminal width
    assert "PyTorch MLPs" in out
    best = re.search(r"with validation accuracy\s+([0-9.]+)", out)
    assert best and float(best.group(1)) > 0.9, out[-2000:]
    assert "48 sub-epochs" in out   # 8 models x 3 epochs x 2 partitions, all ok
    # The workers imported torch, not TensorFlow: no TF start-up line in the worker logs.
    logs = os.path.join(tmp_path, "s", "logs")
    text = "".join(open(os.path.join(logs, f)).read() for f in os.listdir(logs))
    assert "tensorflow" not in text.lower()
