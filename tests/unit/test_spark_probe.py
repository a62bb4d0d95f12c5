"""The executor-side Python check ships by value and reports what fails to import."""

from __future__ import annotations

import subprocess
import sys

import os

import pyspark
from pyspark import cloudpickle   # what Spark ships Python functions with

from cerebro.backends.spark_probe import probe_function


def test_probe_reports_the_interpreter_and_each_missing_module():
    [(host, exe, version, missing)] = list(probe_function(["json", "no_such_module_for_cerebro"])(iter(())))
    assert exe == sys.executable and version == sys.version.split()[0] and host
    assert list(missing) == ["no_such_module_for_cerebro"]
    assert missing["no_such_module_for_cerebro"].startswith("ModuleNotFoundError")


def test_probe_runs_where_cerebro_cannot_be_imported(tmp_path):
    # The base interpreter, with pyspark but not cerebro on its path (as a wrong executor Python
    # would be), still unpickles and runs the probe.
    payload = tmp_path / "probe.pkl"
    payload.write_bytes(cloudpickle.dumps(probe_function(["cerebro"])))
    code = ("import pickle, sys; fn = pickle.load(open(sys.argv[1], 'rb')); "
            "print(list(fn(iter(())))[0][3]['cerebro'][:60])")
    base = os.path.join(sys.base_prefix, "bin", "python3")
    site = os.path.dirname(os.path.dirname(pyspark.__file__))   # site-packages (no .pth processing)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": site}
    proc = subprocess.run([base, "-c", code, str(payload)], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ModuleNotFoundError: No module named 'cerebro'")
