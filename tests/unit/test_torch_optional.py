"""PyTorch is optional: without it, import cerebro works and TorchEstimator names the extra."""

from __future__ import annotations

import subprocess
import sys

# ``sys.modules["torch"] = None`` makes every ``import torch`` fail as if torch were not installed.
WITHOUT_TORCH = "import sys; sys.modules['torch'] = None\n"


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH + code], capture_output=True, text=True, timeout=120)


def test_import_cerebro_works_without_torch_and_never_imports_it():
    proc = run("import cerebro; cerebro.GridSearch; cerebro.LocalBackend; "
               "print(sorted(m for m, mod in sys.modules.items() if mod is not None "
               "and m.split('.')[0] in ('torch', 'tensorflow', 'keras')))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_torch_estimator_without_torch_names_the_extra():
    proc = run("from cerebro import TorchEstimator")
    assert proc.returncode != 0
    assert "ImportError: TorchEstimator needs torch, which is not installed: pip install 'cerebro-mop[torch]'" in proc.stderr


def test_a_torch_spec_without_torch_names_the_extra():
    proc = run("from cerebro.frameworks.base import get_framework; get_framework('torch')")
    assert proc.returncode != 0
    assert "pip install 'cerebro-mop[torch]'" in proc.stderr
