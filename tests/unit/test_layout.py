"""Unit tests of cerebro.storage.layout: pure path naming and name validation."""

from __future__ import annotations

import numpy as np
import pytest

from cerebro.storage import layout


def test_data_paths() -> None:
    assert layout.data_dir("abc123") == "data/abc123"
    assert layout.data_part("abc123", "train", 3) == "data/abc123/train/part-00003.parquet"
    assert layout.data_part("abc123", "val", 0) == "data/abc123/val/part-00000.parquet"
    assert layout.data_manifest("abc123") == "data/abc123/_manifest.json"


def test_experiment_paths() -> None:
    assert layout.experiment_dir("mnist-grid_01") == "experiments/mnist-grid_01"
    assert layout.model_dir("exp", "m-0") == "experiments/exp/models/m-0"
    assert layout.model_spec("exp", "m-0") == "experiments/exp/models/m-0/spec.pkl"
    assert layout.checkpoint_dir("exp", "m-0") == "experiments/exp/models/m-0/ckpt"
    assert layout.checkpoint("exp", "m-0", 1, 3) == "experiments/exp/models/m-0/ckpt/e0001-h03-a0.npz"
    assert layout.checkpoint("exp", "m-0", 12, 0, attempt=2) == "experiments/exp/models/m-0/ckpt/e0012-h00-a2.npz"
    assert layout.journal("exp") == "experiments/exp/journal.jsonl"


def test_pickled_files_carry_their_sha256_in_their_name() -> None:
    d = "ab" * 32
    assert layout.model_spec("exp", "m-0", digest=d) == f"experiments/exp/models/m-0/spec-{d}.pkl"
    assert layout.model_spec("exp", "m-0", 2, d) == f"experiments/exp/models/m-0/spec-v2-{d}.pkl"
    assert layout.search_file("exp", d) == f"experiments/exp/search-{d}.pkl"
    assert layout.pickle_digest(layout.model_spec("exp", "m-0", 2, d)) == d
    assert layout.pickle_digest(layout.search_file("exp", d)) == d
    assert layout.pickle_digest("experiments/exp/models/m-0/spec.pkl") is None
    for bad in ("AB" * 32, "ab" * 31, "zz" * 32):
        with pytest.raises(ValueError, match="sha256"):
            layout.model_spec("exp", "m-0", digest=bad)


def test_checkpoint_names_sort_by_epoch_then_hop() -> None:
    names = [layout.checkpoint("e", "m", epoch, hop) for epoch in (1, 2, 10) for hop in (0, 1, 9, 10)]
    assert sorted(names) == names


def test_large_numbers_widen_instead_of_failing() -> None:
    assert layout.checkpoint("e", "m", 12345, 123).endswith("e12345-h123-a0.npz")
    assert layout.data_part("k", "train", 123456).endswith("part-123456.parquet")


def test_numpy_integers_are_accepted() -> None:
    assert layout.data_part("k", "train", np.int64(2)) == "data/k/train/part-00002.parquet"
    assert layout.checkpoint("e", "m", np.int32(1), np.uint8(2)).endswith("e0001-h02-a0.npz")


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "..", "a..b", ".hidden", ".", "sp ace", "tab\t", "semi;colon", "ü", "a\\b", "x" * 201, "/abs"],
)
def test_bad_experiment_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="experiment name"):
        layout.experiment_dir(name)
    with pytest.raises(ValueError, match="experiment name"):
        layout.journal(name)


@pytest.mark.parametrize("model_id", ["", "m/1", "..", "../x", ".m", "m 1"])
def test_bad_model_ids_are_refused(model_id: str) -> None:
    with pytest.raises(ValueError, match="model id"):
        layout.model_spec("exp", model_id)
    with pytest.raises(ValueError, match="model id"):
        layout.checkpoint("exp", model_id, 1, 0)


@pytest.mark.parametrize("name", ["a", "A.b_c-1", "0", "x" * 200, "model-0001", "v1.2.3"])
def test_good_names_are_accepted(name: str) -> None:
    assert layout.experiment_dir(name) == f"experiments/{name}"
    assert layout.model_spec("e", name) == f"experiments/e/models/{name}/spec.pkl"


@pytest.mark.parametrize("bad", [None, 3, b"abc"])
def test_non_str_names_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="must be a str"):
        layout.experiment_dir(bad)  # type: ignore[arg-type]


def test_bad_data_keys_and_splits() -> None:
    with pytest.raises(ValueError, match="data key"):
        layout.data_dir("../etc")
    with pytest.raises(ValueError, match="split"):
        layout.data_part("k", "test", 0)


@pytest.mark.parametrize("bad", [-1, 1.0, "1", True, None])
def test_bad_numbers_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="partition"):
        layout.data_part("k", "train", bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epoch"):
        layout.checkpoint("e", "m", bad, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hop"):
        layout.checkpoint("e", "m", 0, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attempt"):
        layout.checkpoint("e", "m", 0, 0, attempt=bad)  # type: ignore[arg-type]


def test_layout_does_no_io(tmp_path, monkeypatch) -> None:
    # Pure naming: nothing may touch the file system.
    monkeypatch.chdir(tmp_path)
    layout.checkpoint("e", "m", 1, 2)
    layout.data_manifest("k")
    assert list(tmp_path.iterdir()) == []
