"""The driver process killed with SIGKILL at several moments resumes to identical models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cerebro import CerebroError, LocalStore
from cerebro.experiment.journal import acquire_lock, read_journal, release_lock

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("resume_experiment.py")


def run(*args: str, expect_killed: bool = False, cli: bool = False, framework: str = "keras") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SCRIPT.parent), TF_CPP_MIN_LOG_LEVEL="2", CEREBRO_TEST_FRAMEWORK=framework)
    cmd = [sys.executable, "-m", "cerebro", "resume", *args] if cli else [sys.executable, str(SCRIPT), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if expect_killed:
        assert proc.returncode == -9, proc.stderr[-3000:]
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("resume-store"))


@pytest.fixture(scope="module")
def reference(store_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ref") / "ref.npz")
    run(store_dir, "reference", out)
    return dict(np.load(out))


def assert_same_models(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def assert_exactly_once(visits: pd.DataFrame, models: int = 4, epochs: int = 3, partitions: int = 2) -> None:
    ok = visits[visits.status == "ok"].groupby(["model_id", "epoch", "partition"]).size()
    assert len(ok) == models * epochs * partitions and set(ok) == {1}


@pytest.mark.parametrize("moment,kill", [
    ("between-sub-epochs", ["--kill-on", "train:5"]),
    ("during-evaluation", ["--kill-on", "eval:3"]),
    ("mid-sub-epoch", ["--kill-after-s", "0.6"]),
])
def test_driver_killed_then_resumed_gives_identical_models(store_dir, reference, tmp_path, moment, kill):
    name = f"killed-{moment}"
    out = str(tmp_path / "out.npz")
    run(store_dir, name, out, *kill, expect_killed=True)
    store = LocalStore(store_dir)
    before = read_journal(store, name)
    committed = [r for r in before if r["type"] == "visit" and r["kind"] == "train" and r["status"] == "ok"]
    assert 0 < len(committed) < 4 * 3 * 2, "the kill must land inside the experiment"
    assert before[-1]["type"] != "finished"
    # Reusing the name without resume is refused, naming resume.
    env_fail = subprocess.run([sys.executable, str(SCRIPT), store_dir, name, out], capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(SCRIPT.parent)), timeout=600)
    assert env_fail.returncode != 0 and "resume=True" in env_fail.stderr
    run(store_dir, name, out, "--resume")
    after = read_journal(store, name)
    assert after[: len(before)] == before  # append-only
    assert after[-1]["type"] == "finished"
    assert_same_models(reference, dict(np.load(out)))
    visits = pd.read_csv(out + ".visits.csv")
    assert_exactly_once(visits)
    # Only what was in flight at the kill is redone: the committed visits are not trained again.
    redone = [r for r in after[len(before):] if r["type"] == "visit" and r["kind"] == "train"]
    assert len(redone) == 4 * 3 * 2 - len(committed)


def test_torch_driver_killed_mid_sub_epoch_then_resumed_gives_identical_models(tmp_path):
    pytest.importorskip("torch")
    store_dir = str(tmp_path / "store")
    ref, out = str(tmp_path / "ref.npz"), str(tmp_path / "out.npz")
    run(store_dir, "torch-reference", ref, framework="torch")
    run(store_dir, "torch-killed", out, "--kill-on", "train:7", expect_killed=True, framework="torch")
    before = read_journal(LocalStore(store_dir), "torch-killed")
    assert before[-1]["type"] != "finished"
    run(store_dir, "torch-killed", out, "--resume", framework="torch")
    assert read_journal(LocalStore(store_dir), "torch-killed")[-1]["type"] == "finished"
    reference = dict(np.load(ref))
    assert len(reference) == 4 * 4  # four models, two Linear layers (weight, bias) each
    assert_same_models(reference, dict(np.load(out)))
    assert_exactly_once(pd.read_csv(out + ".visits.csv"))


def test_cerebro_resume_command(store_dir, reference, tmp_path):
    name = "killed-cli"
    out = str(tmp_path / "out.npz")
    run(store_dir, name, out, "--kill-on", "epoch:2", expect_killed=True)
    proc = run(os.path.join(store_dir, "experiments", name), "--quiet", cli=True)
    assert "best" in proc.stdout.lower()
    store = LocalStore(store_dir)
    assert read_journal(store, name)[-1]["type"] == "finished"
    history = pd.read_csv(os.path.join(store_dir, "experiments", name, "history.csv"))
    ref_history = pd.read_csv(os.path.join(store_dir, "experiments", "reference", "history.csv"))
    pd.testing.assert_frame_equal(history, ref_history)


def test_finished_experiment_cannot_be_resumed_or_reused(store_dir, reference, tmp_path):
    out = str(tmp_path / "o.npz")
    proc = subprocess.run([sys.executable, str(SCRIPT), store_dir, "reference", out, "--resume"], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(SCRIPT.parent)), timeout=600)
    assert proc.returncode != 0 and "already finished" in proc.stderr


def test_two_drivers_on_one_experiment_are_refused(tmp_path):
    store = LocalStore(str(tmp_path))
    store.makedirs("experiments/x")
    # held by a live process on this host (our parent): refused
    store.write_json("experiments/x/LOCK", {"host": os.uname().nodename, "pid": os.getppid(), "time": 0})
    with pytest.raises(CerebroError, match="in use by process"):
        acquire_lock(store, "x")
    # left by a dead process (a SIGKILLed driver): taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.write_json("experiments/x/LOCK", {"host": os.uname().nodename, "pid": dead.pid, "time": 0})
    acquire_lock(store, "x")
    assert json.loads(store.read_bytes("experiments/x/LOCK"))["pid"] == os.getpid()
    with pytest.raises(CerebroError, match="in use"):
        acquire_lock(store, "x")  # even by ourselves: one driver per experiment
    release_lock(store, "x")
    assert not store.exists("experiments/x/LOCK")


def test_corrupted_checkpoint_is_detected_never_loaded(store_dir, reference, tmp_path):
    name = "corrupted"
    out = str(tmp_path / "out.npz")
    run(store_dir, name, out, "--kill-on", "epoch:2", expect_killed=True)
    store = LocalStore(store_dir)
    records = read_journal(store, name)
    latest = {}
    for r in records:
        if r["type"] == "visit" and r["kind"] == "train" and r["status"] == "ok":
            latest[r["model_id"]] = r["checkpoint"]
    victim, path = sorted(latest.items())[0]
    data = store.read_bytes(path)
    store.write_bytes(path, data[: len(data) // 2])  # truncated
    run(store_dir, name, out, "--resume")
    journal = read_journal(store, name)
    refused = [r for r in journal if r["type"] == "visit" and r["model_id"] == victim and r["status"] == "failed"
               and "corrupted" in (r.get("error") or "")]
    assert refused   # the truncated checkpoint was refused by its sha256, never loaded
    failure = [r for r in journal if r["type"] == "model_failed" and r["model_id"] == victim]
    got = dict(np.load(out))
    if [r for r in journal if r["type"] == "rollback" and r["model_id"] == victim]:
        # A mid-epoch checkpoint: the model went back to its epoch's start state and retrained
        # from there, to the very weights of the run without the fault (issue 16, item 5).
        assert not failure
        assert_same_models(reference, got)
    else:
        # The epoch-boundary checkpoint itself: nothing older is kept, so the model fails, clearly.
        assert failure and "corrupted" in failure[0]["error"]
        others = {k: v for k, v in got.items() if not k.startswith(victim)}
        assert_same_models({k: v for k, v in reference.items() if not k.startswith(victim)}, others)
