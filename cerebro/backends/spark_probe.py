"""Check, in seconds, that Spark's executors run a Python that can run cerebro's workers.

A wrong executor interpreter (``PYSPARK_PYTHON`` / ``spark.pyspark.python`` pointing at a
Python without cerebro, pyarrow, Keras or torch) fails every task the same way.  Left to the
barrier stage, that shows up as workers dying again and again while the stage is relaunched;
data preparation on a Spark DataFrame fails with a bare ``ModuleNotFoundError`` from deep in a
``mapInArrow``.  One small ordinary job with one task per worker imports the modules instead
and reports each executor's interpreter, so the fit fails at once with a message that names it.

The probe function is compiled from source here rather than defined at module level: cloudpickle
then ships it by value, so it runs even where ``cerebro`` itself cannot be imported.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Iterable

from ..errors import CerebroError

_PROBE_SOURCE = '''
def probe(_rows):
    import importlib, importlib.util, socket, sys
    missing = {}
    for name in IMPORT:
        try:
            importlib.import_module(name)
        except BaseException as exc:
            missing[name] = f"{type(exc).__name__}: {exc}"
    for name in FIND:
        try:
            found = importlib.util.find_spec(name) is not None
        except BaseException as exc:
            found, missing[name] = True, f"{type(exc).__name__}: {exc}"
        if not found:
            missing[name] = f"ModuleNotFoundError: No module named {name!r}"
    yield (socket.gethostname(), sys.executable, sys.version.split()[0], missing)
'''

#: Imported by the probe (cheap); other modules (TensorFlow takes seconds) are only looked up.
IMPORTED = frozenset({"cerebro", "pyarrow"})

#: (application id, executors' interpreter) -> modules already found importable there
_checked: dict[tuple[str, str], set[str]] = {}
_lock = threading.Lock()


def probe_function(modules: Iterable[str]) -> Any:
    """The executor-side check, as a function that cloudpickle ships by value."""
    modules = tuple(modules)
    namespace: dict[str, Any] = {"__name__": "cerebro_executor_probe",
                                 "IMPORT": tuple(m for m in modules if m in IMPORTED),
                                 "FIND": tuple(m for m in modules if m not in IMPORTED)}
    exec(compile(_PROBE_SOURCE, "<cerebro executor probe>", "exec"), namespace)
    return namespace["probe"]


def first_line(exc: BaseException) -> str:
    """The line of a Spark job failure that says what happened."""
    text = str(exc)
    m = re.search(r"(Job aborted[^\n]*|Could not recover from a failed barrier[^\n]*|[A-Za-z.]*Exception: [^\n]*)", text)
    line = m.group(1) if m else (text.strip().splitlines() or [type(exc).__name__])[0]
    return line[:500]


def _interpreter_advice(sc: Any) -> str:
    conf = sc.getConf().get("spark.pyspark.python", None)
    return (
        f"Spark's executors run the Python set by PYSPARK_PYTHON or spark.pyspark.python "
        f"(here {sc.pythonExec!r}" + (f", spark.pyspark.python={conf!r}" if conf else "") + "); "
        "point it at an interpreter that has cerebro-mop and the frameworks your models use installed "
        "(the same environment as the driver's is simplest)."
    )


def check_executor_python(sc: Any, modules: Iterable[str], tasks: int) -> None:
    """Raise :class:`CerebroError` unless ``tasks`` executor tasks have every module.

    ``cerebro`` and ``pyarrow`` are imported; the others (the models' frameworks) are looked up
    with ``importlib.util.find_spec``, which finds a missing install without paying for an
    import of TensorFlow in every executor.
    """
    modules = tuple(dict.fromkeys(modules))
    key = (str(sc.applicationId), str(sc.pythonExec))
    with _lock:
        todo = tuple(m for m in modules if m not in _checked.get(key, set()))
    if not todo:
        return
    tasks = max(1, int(tasks))
    try:
        reports = sc.parallelize(range(tasks), tasks).mapPartitions(probe_function(todo)).collect()
    except Exception as exc:  # noqa: BLE001 - any failure here is the executors' Python failing to start
        raise CerebroError(
            f"Spark's executors could not run a Python task for cerebro ({first_line(exc)}). "
            + _interpreter_advice(sc)
        ) from None
    problems = [(host, exe, ver, missing) for host, exe, ver, missing in reports if missing]
    if problems:
        host, exe, ver, missing = problems[0]
        what = "; ".join(f"{name}: {err}" for name, err in missing.items())
        raise CerebroError(
            f"Spark's executors cannot run cerebro's workers: on {host}, the executor Python {exe} "
            f"(Python {ver}) cannot import {', '.join(missing)} ({what}); "
            f"{len(problems)} of {len(reports)} probe tasks failed the same way. " + _interpreter_advice(sc)
        )
    with _lock:
        _checked.setdefault(key, set()).update(todo)
