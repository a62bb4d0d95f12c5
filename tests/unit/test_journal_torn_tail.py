"""A resume never appends onto a torn last journal line (issue 16, item 2).

A driver killed while appending leaves a last line without its newline.  Resume used to append
its ``resumed`` record straight onto it, so the next resume failed with "journal ... is
corrupted at line N".  Now the torn tail is cut off (its bytes kept beside the journal) or, when
only the newline was lost, terminated, before anything is appended.
"""

from __future__ import annotations

import json

import pytest

from cerebro import LocalStore
from cerebro.experiment.journal import read_journal, repair_torn_tail
from cerebro.experiment.workspace import ExperimentWorkspace
from cerebro.storage import layout

STARTED = {"type": "started", "time": 1.0, "pid": 1}
VISIT = {"type": "visit", "kind": "train", "model_id": "model_000", "status": "ok"}


def interrupted(tmp_path, tail: bytes) -> LocalStore:
    store = LocalStore(str(tmp_path / "store"))
    store.makedirs(layout.experiment_dir("x"))
    store.write_json(layout.experiment_file("x"), {"num_workers": 2})
    lines = b"".join(json.dumps(r).encode() + b"\n" for r in (STARTED, VISIT))
    store.write_bytes(layout.journal("x"), lines + tail)
    return store


def resume_and_append(store: LocalStore) -> None:
    workspace = ExperimentWorkspace.open(store, "x", resume=True, num_workers=2)
    workspace.begin({}, None)
    workspace.journal({"type": "resumed", "time": 2.0, "pid": 2})
    workspace.end()


def test_a_torn_last_line_is_cut_off_and_kept_before_resume_appends(tmp_path):
    torn = b'{"type": "visit", "kind": "tra'
    store = interrupted(tmp_path, torn)
    resume_and_append(store)
    records = read_journal(store, "x")  # strict: a glued line in the middle would raise
    assert [r["type"] for r in records] == ["started", "visit", "resumed"]
    sides = [n for n in store.listdir(layout.experiment_dir("x")) if n.startswith("journal.torn-")]
    assert len(sides) == 1
    assert store.read_bytes(f"{layout.experiment_dir('x')}/{sides[0]}") == torn
    # A second interrupted resume finds a clean journal: nothing more to cut.
    resume_and_append(store)
    assert [r["type"] for r in read_journal(store, "x")] == ["started", "visit", "resumed", "resumed"]


def test_a_whole_last_record_that_lost_its_newline_is_kept(tmp_path):
    whole = json.dumps({"type": "visit", "kind": "eval", "model_id": "model_001", "status": "ok"}).encode()
    store = interrupted(tmp_path, whole)
    before = read_journal(store, "x")
    assert before[-1]["kind"] == "eval"  # what restore already saw
    resume_and_append(store)
    assert read_journal(store, "x") == before + [{"type": "resumed", "time": 2.0, "pid": 2}]
    assert not [n for n in store.listdir(layout.experiment_dir("x")) if n.startswith("journal.torn-")]


@pytest.mark.parametrize("content", [b"", json.dumps(STARTED).encode() + b"\n"])
def test_a_clean_journal_is_left_as_it_is(tmp_path, content):
    store = LocalStore(str(tmp_path))
    store.write_bytes(layout.journal("y"), content)
    assert repair_torn_tail(store, "y") is None
    assert store.read_bytes(layout.journal("y")) == content
