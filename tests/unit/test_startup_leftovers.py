"""A driver killed during start-up (before the journal's first record) leaves a directory a
fresh fit clears and resume refuses: exactly one way forward (issue 16, item 1)."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from cerebro.errors import CerebroError
from cerebro.experiment.workspace import ExperimentWorkspace
from cerebro.storage import LocalStore, layout


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def lock(store: LocalStore, pid: int) -> None:
    store.write_bytes(layout.lock("x"), json.dumps({"host": socket.gethostname(), "pid": pid, "time": 0}).encode())


LEFTOVERS = {
    "directory only": lambda s: s.makedirs(layout.experiment_dir("x")),
    "lock and a temporary experiment.json": lambda s: (
        lock(s, dead_pid()), s.write_bytes("experiments/x/.experiment.json.tmp-0123", b'{"na')),
    "experiment.json and a temporary search": lambda s: (
        lock(s, dead_pid()), s.write_json(layout.experiment_file("x"), {"num_workers": 2}),
        s.write_bytes("experiments/x/.search.pkl.tmp-0123", b"\x80\x05")),
    "a torn first journal line": lambda s: (
        lock(s, dead_pid()), s.write_json(layout.experiment_file("x"), {"num_workers": 2}),
        s.write_bytes(layout.journal("x"), b'{"type": "sta')),
}


@pytest.mark.parametrize("leftover", sorted(LEFTOVERS))
def test_start_up_leftovers_are_cleared_by_a_fresh_fit_and_refused_by_resume(tmp_path, leftover):
    store = LocalStore(str(tmp_path))
    LEFTOVERS[leftover](store)
    with pytest.raises(ValueError, match="never started.*call fit without resume=True"):
        ExperimentWorkspace.open(store, "x", resume=True, num_workers=2)
    assert store.exists(layout.experiment_dir("x"))       # resume wrote nothing
    ws = ExperimentWorkspace.open(store, "x", resume=False, num_workers=2)
    assert not ws.resume and not store.exists(layout.experiment_dir("x"))


def test_a_live_driver_in_its_start_up_is_not_cleared(tmp_path):
    store = LocalStore(str(tmp_path))
    lock(store, os.getpid())                              # alive: this very process
    for resume in (False, True):
        with pytest.raises(CerebroError, match="being started by process"):
            ExperimentWorkspace.open(store, "x", resume=resume, num_workers=2)
    assert store.exists(layout.lock("x"))


def test_a_started_experiment_is_never_cleared(tmp_path):
    store = LocalStore(str(tmp_path))
    lock(store, dead_pid())
    store.write_json(layout.experiment_file("x"), {"num_workers": 2})
    store.append_bytes(layout.journal("x"), b'{"type": "started", "time": 1.0}\n')
    with pytest.raises(ValueError, match="already exists"):
        ExperimentWorkspace.open(store, "x", resume=False, num_workers=2)
    assert ExperimentWorkspace.open(store, "x", resume=True, num_workers=2).resume
    assert store.exists(layout.journal("x"))
