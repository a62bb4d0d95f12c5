"""The driver of a deterministic TPE, ASHA or PBT search, SIGKILLed mid-search and resumed with
``fit(df, resume=True)`` in a new process, ends with the uninterrupted run's decisions and models:
the same history (each epoch's parameters included) and bit-identical weights.

The killed driver is a run of ``resume_search.py`` (one subprocess per search); the uninterrupted
reference and the resume (a new driver process for the experiment: the killed one is gone) run in
this process on one LocalBackend for the module, to keep the subprocesses, and so the time, low.
``python resume_search.py KIND STORE NAME OUT --resume`` resumes the same way from a shell.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cerebro import LocalStore
from cerebro.datasets import digits_frame
from cerebro.experiment.journal import read_journal
from cerebro.frameworks.keras import limit_threads
from resume_search import assert_decisions_mattered, assert_same_run, make_search, snapshot

pytestmark = pytest.mark.slow

limit_threads(1)

SCRIPT = Path(__file__).with_name("resume_search.py")

#: Where each search's driver dies: right after this many "epoch" records (about mid-way: TPE
#: has 10 model-epochs, ASHA 11, PBT 12), with models still in flight.
KILL_AFTER_EPOCHS = {"tpe": 5, "asha": 5, "pbt": 6}


def run(*args: str, expect_killed: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SCRIPT.parent), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600)
    if expect_killed:
        assert proc.returncode == -9, f"expected death by SIGKILL, got {proc.returncode}:\n{proc.stderr[-3000:]}"
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("resume-searches"))


def epochs_of(records) -> list[tuple[str, int]]:
    return [(r["model_id"], r["epoch"]) for r in records if r["type"] == "epoch"]


@pytest.mark.parametrize("kind", ["tpe", "asha", "pbt"])
def test_search_killed_mid_way_then_resumed_gives_the_uninterrupted_search(kind, backend, store_dir, tmp_path):
    store = LocalStore(store_dir)
    reference = make_search(kind, backend, store, f"{kind}-reference").fit(digits_frame())
    assert_decisions_mattered(kind, reference, read_journal(store, f"{kind}-reference"))

    name, out = f"{kind}-killed", str(tmp_path / kind)
    n = KILL_AFTER_EPOCHS[kind]
    run(kind, store_dir, name, out, "--kill-on", f"epoch:{n}", expect_killed=True)
    before = read_journal(store, name)
    assert len(epochs_of(before)) == n, "the driver died right after its n-th epoch record"
    assert before[-1]["type"] != "finished" and not os.path.exists(out + ".npz")
    assert any(r["type"] == "visit" and r["epoch"] > 1 for r in before), "the kill must come after a few epochs"
    assert len(epochs_of(before)) < len(reference.history), "the kill must land inside the search"

    resumed = make_search(kind, backend, store, name).fit(digits_frame(), resume=True)
    after = read_journal(store, name)
    assert after[: len(before)] == before   # append-only
    assert after[-1]["type"] == "finished"
    # The committed epochs are not trained again: the resumed driver does only the rest.
    redone = epochs_of(after[len(before):])
    assert not set(redone) & set(epochs_of(before))
    assert sorted(epochs_of(before) + redone) == sorted(reference.history[["model_id", "epoch"]]
                                                       .itertuples(index=False, name=None))
    assert_same_run(snapshot(reference), snapshot(resumed))
