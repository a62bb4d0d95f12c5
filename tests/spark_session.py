"""Real Spark sessions for the tests: ``local[2]`` and a multi-executor ``local-cluster``.

One SparkContext can live in a process at a time, so :func:`get_session` stops the active one
when a test asks for another master.  Modules that need the cluster are named so that they run
after the ``local[2]`` ones (one switch per test run).
"""

from __future__ import annotations

import atexit
import time

from cerebro.backends.spark_session import local_session

_active: dict = {}


def get_session(master: str = "local[2]", extra_conf: dict | None = None):
    """The SparkSession for ``master`` (started once, reused; another master's session is stopped)."""
    key = (master, tuple(sorted((extra_conf or {}).items())))
    if _active.get("key") == key:
        return _active["session"]
    stop_session()
    session = local_session(master, "cerebro-tests", extra_conf)
    _active.update(key=key, session=session)
    return session


def stop_session() -> None:
    session = _active.pop("session", None)
    _active.clear()
    if session is not None:
        session.stop()
        # Let the JVM gateway release the context before the next one starts.
        time.sleep(1)


atexit.register(stop_session)
