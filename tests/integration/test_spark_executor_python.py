"""Spark executors that run a Python without cerebro: the fit fails within seconds, naming the
interpreter and the settings that choose it, instead of relaunching a barrier stage that can
never start."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent('''
    import os, sys, time
    os.environ["PYSPARK_PYTHON"] = sys.argv[1]      # the executors' Python: one without cerebro
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession
    import numpy as np
    import pandas as pd
    from cerebro import CerebroError, GridSearch, KerasEstimator, LocalStore, SparkBackend, hp_choice

    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("OFF")
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"features": list(rng.random((200, 4), dtype=np.float32)), "label": rng.integers(0, 2, 200)})

    def gen(params):
        import keras
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
        return KerasEstimator(model, keras.optimizers.SGD(params["lr"]), "sparse_categorical_crossentropy")

    started = time.time()
    try:
        with SparkBackend(spark, 2) as backend:
            GridSearch(backend, LocalStore(sys.argv[2]), gen, {"lr": hp_choice([0.1])}, num_epochs=1,
                       verbose=0).fit(df)
    except CerebroError as exc:
        print("ERROR:", exc)
    print(f"SECONDS: {time.time() - started:.1f}")
''')


def _python_without_cerebro() -> str:
    exe = os.path.join(sys.base_prefix, "bin", f"python{sys.version_info[0]}.{sys.version_info[1]}")
    if not os.path.exists(exe):
        exe = os.path.join(sys.base_prefix, "bin", "python3")
    probe = subprocess.run([exe, "-c", "import cerebro"], cwd="/", capture_output=True, text=True)
    assert probe.returncode != 0, f"{exe} can import cerebro, so it cannot stand for a wrong executor Python"
    return exe


def test_executors_without_cerebro_fail_the_fit_at_once_naming_their_python(tmp_path):
    exe = _python_without_cerebro()
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_PYTHON")}
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(script), exe, str(tmp_path / "store")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env)
    wall = time.time() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "ERROR:" in out, out + proc.stderr[-3000:]
    message = out.split("ERROR:", 1)[1]
    assert exe in message                               # the interpreter the executors ran
    assert "PYSPARK_PYTHON" in message and "spark.pyspark.python" in message
    assert "cerebro" in message
    seconds = float(out.split("SECONDS:")[1])
    assert seconds < 60, (seconds, message)             # from SparkBackend(...) to the error
    assert wall < 120                                   # Spark's start included
    assert not (tmp_path / "store" / "experiments").exists()   # nothing was started in the store
