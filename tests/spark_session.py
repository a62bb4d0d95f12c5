"""Real Spark sessions for the tests: ``local[2]`` and a multi-executor ``local-cluster``.

One SparkContext can live in a process at a time, so :func:`get_session` stops the active one
when a test asks for another master.  Modules that need the cluster are named so that they run
after the ``local[2]`` ones (one switch per test run).
"""

from __future__ import annotations

import atexit
import os
import sys
import tempfile
import time

_active: dict = {}


def _spark_home() -> str:
    """A SPARK_HOME for local-cluster: the pip pyspark package's bin and jars, linked into a temp dir."""
    import pyspark

    pkg = os.path.dirname(pyspark.__file__)
    home = tempfile.mkdtemp(prefix="cerebro-spark-home-")
    for name in ("bin", "jars", "python", "sbin", "conf"):
        src = os.path.join(pkg, name)
        if os.path.exists(src):
            os.symlink(src, os.path.join(home, name))
    return home


def get_session(master: str = "local[2]", extra_conf: dict | None = None):
    """The SparkSession for ``master`` (started once, reused; another master's session is stopped)."""
    from pyspark.sql import SparkSession

    key = (master, tuple(sorted((extra_conf or {}).items())))
    if _active.get("key") == key:
        return _active["session"]
    stop_session()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    builder = (
        SparkSession.builder.master(master)
        .appName("cerebro-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.python.worker.reuse", "true")
        .config("spark.scheduler.barrier.maxConcurrentTasksCheck.interval", "1s")
        .config("spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures", "3")
        .config("spark.driver.memory", "2g")
    )
    if master.startswith("local-cluster"):
        os.environ["SPARK_HOME"] = _spark_home()
        builder = builder.config("spark.executor.memory", "1g")
    for k, v in (extra_conf or {}).items():
        builder = builder.config(k, v)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    if master.startswith("local-cluster"):
        wait_for_executors(session, int(master.split("[")[1].split(",")[0]))
    _active.update(key=key, session=session)
    return session


def wait_for_executors(session, count: int, timeout: float = 120) -> None:
    """Block until ``count`` executors (besides the driver) have registered."""
    sc = session.sparkContext
    deadline = time.time() + timeout
    while time.time() < deadline:
        if sc._jsc.sc().getExecutorIds().size() >= count:
            return
        time.sleep(0.5)
    raise RuntimeError(f"only {sc._jsc.sc().getExecutorIds().size()} of {count} executors registered in {timeout}s")


def stop_session() -> None:
    session = _active.pop("session", None)
    _active.clear()
    if session is not None:
        session.stop()
        # Let the JVM gateway release the context before the next one starts.
        time.sleep(1)


atexit.register(stop_session)
