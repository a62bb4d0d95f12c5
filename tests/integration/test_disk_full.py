"""A full disk mid-run (issue 16, item 3): a clear error naming the store, the file and the
bytes; nothing half-written; the journal still ends in a whole record; resume after freeing
space gives the models of a run without the fault.  On a real, small tmpfs (needs root)."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest

from cerebro import GridSearch, LocalStore, hp_choice
from cerebro.backends.inline import InlineBackend
from cerebro.datasets import digits_frame
from cerebro.errors import StoreFullError
from cerebro.storage import layout


@pytest.fixture()
def small_disk(tmp_path):
    from mounts import mounted_tmpfs

    with mounted_tmpfs(tmp_path / "mnt", "size=16m") as path:
        yield path


def fill(path) -> None:
    """Write ``path`` until the file system has no room left."""
    chunk = b"\0" * (64 << 10)
    with open(path, "wb", buffering=0) as fh:
        while True:
            try:
                fh.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                chunk = chunk[: len(chunk) // 2]
                if len(chunk) < 512:
                    return


def test_append_that_runs_out_of_room_is_cut_back(small_disk):
    store = LocalStore(str(small_disk / "store"))
    store.append_bytes("j.jsonl", b'{"a": 1}\n')
    fill(small_disk / "filler")
    with pytest.raises(StoreFullError, match=r"is full: writing 1048577 bytes to 'j.jsonl'") as info:
        store.append_bytes("j.jsonl", b"x" * (1 << 20) + b"\n")
    assert info.value.errno == errno.ENOSPC and store.url in str(info.value)
    assert store.read_bytes("j.jsonl") == b'{"a": 1}\n'
    with pytest.raises(StoreFullError, match="writing 1048576 bytes to 'big.bin'"):
        store.write_bytes("big.bin", b"y" * (1 << 20))
    assert os.listdir(small_disk / "store") == ["j.jsonl"]   # no temporary file left


def gen(params):
    import torch
    from torch import nn

    import cerebro

    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    return cerebro.TorchEstimator(model, torch.optim.Adam(model.parameters(), lr=params["lr"]), "cross_entropy",
                                  metrics=["accuracy"], batch_size=64)


def search(store, backend):
    return GridSearch(backend, store, gen, {"lr": hp_choice([3e-3, 1e-2])}, num_epochs=2, evaluation_metric="accuracy",
                      scheduler="deterministic", experiment_name="full", verbose=0, tensorboard=False)


def weights(result) -> dict:
    return {f"{m}/{k}": v.detach().numpy() for m, model in sorted(result.models.items())
            for k, v in model.torch().state_dict().items()}


@pytest.mark.parametrize("kind,where", [("train", ("models/model_",)), ("eval", ("journal.jsonl", "models/model_"))])
def test_full_disk_mid_run_stops_clearly_and_resumes_to_the_same_models(small_disk, tmp_path, kind, where):
    """The disk fills up just before the third visit of ``kind``: a train visit's checkpoint
    write fails in the worker; after an eval visit, its journal record fails in the driver, or
    fits in the journal's last page and the next checkpoint fails."""
    pytest.importorskip("torch")
    data = digits_frame()
    reference = weights(search(LocalStore(str(tmp_path / "ref")), InlineBackend(2)).fit(data))

    seen = {"n": 0}
    filler = small_disk / "filler"

    def faults(worker, task):
        seen["n"] += task.kind == kind
        if task.kind == kind and seen["n"] == 3:
            fill(filler)
        return None

    store = LocalStore(str(small_disk / "store"))
    with pytest.raises(StoreFullError) as info:
        search(store, InlineBackend(2, faults=faults)).fit(data)
    message = str(info.value)
    assert message.startswith(f"store {store.url} is full: writing ") and "resume with fit(..., resume=True)" in message
    assert any(f"bytes to 'experiments/full/{w}" in message for w in where), message
    # The journal is whole: every line a record, the last one ending in a newline.
    raw = store.read_bytes(layout.journal("full"))
    assert raw.endswith(b"\n") and all(json.loads(line) for line in raw.splitlines())
    for root, _, files in os.walk(small_disk / "store"):
        assert not [f for f in files if ".tmp-" in f], (root, files)   # nothing half-written
    os.remove(filler)
    resumed = search(store, InlineBackend(2)).fit(data, resume=True)
    assert resumed.visits.status.eq("ok").all()
    got = weights(resumed)
    assert sorted(got) == sorted(reference)
    for key in reference:
        np.testing.assert_array_equal(got[key], reference[key], err_msg=key)
