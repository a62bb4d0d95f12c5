"""The experiment journal and lock: what the store has committed, and who may write it.

The journal is append-only JSON lines, each flushed and fsynced before the engine acts on
it.  It is the source of truth for ``history``, ``visits`` and resume.  A crash can leave at
most a torn last line, which readers skip.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any

from ..core.records import RUN_MARKS
from ..errors import CerebroError
from ..storage import Store, layout

log = logging.getLogger(__name__)


class Journal:
    """Appends records (dicts: ``Record.to_dict()``) to ``experiments/<name>/journal.jsonl``.
    Called from the engine's loop only; each call returns once the line is durable."""

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.path = layout.journal(name)

    def __call__(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=_plain, sort_keys=True, allow_nan=True) + "\n"
        self.store.append_bytes(self.path, line.encode("utf-8"))


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as plain JSON; anything else is an error, never a lossy repr
    (a journal that cannot be read back exactly cannot resume)."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"cannot journal {type(value).__name__} {value!r}: experiment records must be JSON data")


def read_journal(store: Store, name: str) -> list[dict[str, Any]]:
    """Every complete record of the experiment's journal, in order ([] if there is none)."""
    path = layout.journal(name)
    if not store.exists(path):
        return []
    lines = store.read_bytes(path).decode("utf-8").split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i >= len(lines) - 2:
                log.warning("ignoring a torn last journal line (the driver died while writing it)")
                break
            raise CerebroError(f"journal {store.url}/{path} is corrupted at line {i + 1}") from None
    return records


def repair_torn_tail(store: Store, name: str) -> str | None:
    """Make the journal end in a newline before anything is appended to it again.

    A driver killed while appending leaves a last line without its newline; a record appended
    after it would be glued onto it and corrupt the journal for every later resume.  A tail
    that is one whole record (only the newline was lost) is what :func:`read_journal` already
    returned, so it is terminated; anything else is cut off, after its bytes are kept in
    ``journal.torn-<ns>`` beside the journal.  The journal is rewritten atomically.  Returns the
    side file's path, or None when nothing was cut.  Call with the experiment's lock held.
    """
    path = layout.journal(name)
    if not store.exists(path):
        return None
    data = store.read_bytes(path)
    if not data or data.endswith(b"\n"):
        return None
    cut = data.rfind(b"\n") + 1
    tail = data[cut:]
    try:
        whole = isinstance(json.loads(tail.decode("utf-8")), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        whole = False
    if not whole:
        side = layout.torn_journal_tail(name, time.time_ns())
        store.write_bytes(side, tail)
        store.write_bytes(path, data[:cut])
        log.warning("cut a torn last line (%d bytes) off the journal %s/%s; its bytes are in %s/%s",
                    len(tail), store.url, path, store.url, side)
        return side
    store.write_bytes(path, data + b"\n")
    return None


def journal_state(records: list[dict[str, Any]]) -> str:
    """'new' (no records), 'finished', or 'interrupted'."""
    if not records:
        return "new"
    last = [r for r in records if r.get("type") in RUN_MARKS]
    if last and last[-1]["type"] == "finished":
        return "finished"
    return "interrupted"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(store: Store, name: str) -> None:
    """Refuse a second driver on one experiment.

    The lock names host and pid.  A lock left by a dead process on this host (a driver killed
    with SIGKILL) is taken over; one held by a live process, or by another host, is refused.
    """
    me = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    data = json.dumps(me).encode()
    path = layout.lock(name)
    for _ in range(2):
        if store.create_exclusive(path, data):
            return
        try:
            holder = json.loads(store.read_bytes(path))
        except Exception:
            holder = {}
        same_host = holder.get("host") == me["host"]
        if same_host and isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"]):
            log.warning("experiment %r was locked by process %d, which is gone; taking the lock over", name, holder["pid"])
            store.delete(path)
            continue
        raise CerebroError(
            f"experiment {name!r} is in use by process {holder.get('pid')} on host {holder.get('host')} "
            f"(lock {store.url}/{path}); two drivers on one experiment are refused. If that process is "
            "really gone, delete the lock file and resume."
        )
    raise CerebroError(f"could not take the lock {store.url}/{path}")


def release_lock(store: Store, name: str) -> None:
    store.delete(layout.lock(name))
