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


def lock_holder(store: Store, name: str) -> dict[str, Any] | None:
    """Who holds the experiment's lock: ``{"host", "pid", ...}``, or None when nobody does (no
    lock, or one left by a process of this host that is gone).  A lock of another host counts
    as held: its process cannot be checked from here."""
    path = layout.lock(name)
    try:
        holder = json.loads(store.read_bytes(path))
    except FileNotFoundError:
        return None
    except Exception:
        holder = {}
    if not isinstance(holder, dict):
        holder = {}
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
            and not _pid_alive(holder["pid"]):
        return None
    return holder


def _in_use(store: Store, name: str, holder: dict[str, Any]) -> CerebroError:
    return CerebroError(
        f"experiment {name!r} is in use by process {holder.get('pid')} on host {holder.get('host')} "
        f"(lock {store.url}/{layout.lock(name)}); two drivers on one experiment are refused. If that process is "
        "really gone, delete the lock file and resume."
    )


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
        holder = lock_holder(store, name)
        if holder is None:
            log.warning("experiment %r was locked by a process that is gone; taking the lock over", name)
            store.delete(path)
            continue
        raise _in_use(store, name, holder)
    raise CerebroError(f"could not take the lock {store.url}/{path}")


def reclaim_unstarted(store: Store, name: str) -> bool:
    """Clear an experiment directory whose driver died during start-up.

    Until the journal's first record, an experiment directory holds only start-up files (the
    lock, ``experiment.json``, the pickled search, perhaps model specs): nothing was trained
    or committed, so nothing is lost by starting again.  Returns True when the directory was
    such a leftover and is now gone; False when it does not exist or its journal has records.
    Raises :class:`CerebroError` when a live driver holds its lock (it is starting right now).
    """
    exp_dir = layout.experiment_dir(name)
    if not store.exists(exp_dir) or read_journal(store, name):
        return False
    holder = lock_holder(store, name)
    if holder is not None:
        raise _in_use(store, name, holder)
    log.warning("experiment %r: its driver died during start-up, before the journal's first record, so nothing was "
                "committed; clearing %s/%s and starting it afresh", name, store.url, exp_dir)
    store.delete(exp_dir)
    return True


def release_lock(store: Store, name: str) -> None:
    store.delete(layout.lock(name))
