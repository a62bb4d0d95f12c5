"""Nothing pickled is read back from the store unless its bytes match the sha256 the journal
names (issue 16, item 10): a spec or search replaced by someone who can write the store is
refused before it is unpickled, in a resumed worker, in ``cerebro resume`` and in the result."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from cerebro import LocalStore
from cerebro.experiment.journal import read_journal
from cerebro.storage import layout

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("resume_experiment.py")


class Payload:
    """Unpickling this writes a marker file: what an attacker's pickle would run instead."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def run(*args: str, cli: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SCRIPT.parent), CEREBRO_TEST_FRAMEWORK="torch")
    cmd = [sys.executable, "-m", "cerebro", "resume", *args] if cli else [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture()
def interrupted(tmp_path):
    pytest.importorskip("torch")
    store_dir = str(tmp_path / "store")
    proc = run(store_dir, "victim", str(tmp_path / "out.npz"), "--kill-on", "train:3")
    assert proc.returncode == -9, proc.stderr[-3000:]
    return store_dir


def test_a_replaced_spec_is_refused_by_the_resumed_workers(interrupted, tmp_path):
    store = LocalStore(interrupted)
    created = [r for r in read_journal(store, "victim") if r["type"] == "model_added"]
    assert created and all(layout.pickle_digest(r["spec"]) for r in created)
    marker = tmp_path / "pwned"
    for r in created:   # the attacker keeps the names the journal records
        store.write_bytes(r["spec"], pickle.dumps(Payload(str(marker))))
    proc = run(interrupted, "victim", str(tmp_path / "out.npz"), "--resume")
    assert proc.returncode != 0
    assert "was changed after cerebro wrote it" in proc.stderr and "refusing to unpickle it" in proc.stderr
    assert not marker.exists()


def test_a_replaced_search_is_refused_by_cerebro_resume(interrupted, tmp_path):
    store = LocalStore(interrupted)
    started = [r for r in read_journal(store, "victim") if r["type"] == "started"]
    path = started[0]["search"]
    assert layout.pickle_digest(path) and store.exists(path)
    marker = tmp_path / "pwned"
    store.write_bytes(path, pickle.dumps(Payload(str(marker))))
    proc = run(os.path.join(interrupted, "experiments", "victim"), "--quiet", cli=True)
    assert proc.returncode == 1 and "was changed after cerebro wrote it" in proc.stderr
    assert not marker.exists()


def test_a_finished_models_replaced_spec_is_refused(tmp_path):
    pytest.importorskip("torch")
    import torch
    from torch import nn

    import cerebro
    from cerebro import CerebroError, GridSearch, hp_choice
    from cerebro.backends.inline import InlineBackend
    from cerebro.datasets import digits_frame

    def gen(params):
        model = nn.Sequential(nn.Linear(64, 10))
        return cerebro.TorchEstimator(model, torch.optim.SGD(model.parameters(), lr=params["lr"]), "cross_entropy",
                                      metrics=["accuracy"], batch_size=64)

    store = LocalStore(str(tmp_path / "store"))
    result = GridSearch(InlineBackend(2), store, gen, {"lr": hp_choice([0.1])}, num_epochs=1,
                        evaluation_metric="accuracy", experiment_name="done", verbose=0).fit(digits_frame())
    model = result.models["model_000"]
    marker = tmp_path / "pwned"
    store.write_bytes(model._spec_path, pickle.dumps(Payload(str(marker))))
    with pytest.raises(CerebroError, match="was changed after cerebro wrote it"):
        model.spec()
    assert not marker.exists()
