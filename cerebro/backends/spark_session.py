"""Start a Spark session on this machine for cerebro: ``local[N]`` or a multi-executor ``local-cluster``.

Used by ``cerebro demo --backend spark``, the tests and the benchmarks.  It sets what a pip-installed
pyspark needs here: executors' Python is this interpreter, the loopback address, and for
``local-cluster[n,c,mem]`` a ``SPARK_HOME`` (the pyspark package's ``bin`` and ``jars`` linked
into a temporary directory) so that the standalone workers can launch executor JVMs.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any


def _spark_home() -> str:
    import pyspark

    pkg = os.path.dirname(pyspark.__file__)
    home = tempfile.mkdtemp(prefix="cerebro-spark-home-")
    for name in ("bin", "jars", "python", "sbin", "conf"):
        src = os.path.join(pkg, name)
        if os.path.exists(src):
            os.symlink(src, os.path.join(home, name))
    return home


def local_session(master: str = "local[2]", app_name: str = "cerebro", conf: dict[str, str] | None = None,
                  executor_timeout: float = 120) -> Any:
    """A SparkSession for ``master`` on this machine (``local[N]`` or ``local-cluster[n,c,mem]``).

    Blocks until a local-cluster's executors have registered (up to ``executor_timeout`` s).
    Raises ``ImportError`` without pyspark.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    builder = (
        SparkSession.builder.master(master).appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")   # cerebro shows its own progress
        .config("spark.python.worker.reuse", "true")
        .config("spark.scheduler.barrier.maxConcurrentTasksCheck.interval", "1s")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.driver.memory", "2g")
    )
    cluster = master.startswith("local-cluster")
    if cluster:
        os.environ["SPARK_HOME"] = _spark_home()
        builder = builder.config("spark.executor.memory", master.rstrip("]").split(",")[-1].strip() + "m")
    for k, v in (conf or {}).items():
        builder = builder.config(k, v)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    if cluster:
        wanted = int(master.split("[", 1)[1].split(",")[0])
        sc = session.sparkContext
        deadline = time.time() + executor_timeout
        while sc._jsc.sc().getExecutorIds().size() < wanted:
            if time.time() > deadline:
                raise RuntimeError(f"only {sc._jsc.sc().getExecutorIds().size()} of {wanted} executors registered "
                                   f"in {executor_timeout:g} s")
            time.sleep(0.5)
    return session
