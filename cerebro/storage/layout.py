"""Where things live inside a Store: pure path naming, no I/O.

Every path an experiment writes is named here, so the layout of a store is
readable in one place and a name can be computed anywhere (driver, worker,
CLI) without touching the store. All functions are pure, deterministic and
return store-relative '/'-separated paths. They validate their arguments and
raise ``ValueError`` for names that could escape or clash in the store.

Layout::

    data/<key>/_manifest.json                 written last: the data set is complete
    data/<key>/{train,val}/part-00003.parquet one file per split per partition
    experiments/<exp>/journal.jsonl
    experiments/<exp>/models/<model_id>/spec.pkl
    experiments/<exp>/models/<model_id>/ckpt/e0001-h03-a0.npz
"""

from __future__ import annotations

import re

__all__ = [
    "SPLITS",
    "data_dir",
    "data_part",
    "data_manifest",
    "experiment_dir",
    "model_dir",
    "model_spec",
    "checkpoint_dir",
    "checkpoint",
    "journal",
]

SPLITS = ("train", "val")

_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
# File systems limit a path component to 255 bytes; leave room for suffixes.
_MAX_NAME_LEN = 200


def _check_name(value: object, what: str) -> str:
    """Return ``value`` if it is a safe single path component, else raise ValueError.

    Safe: letters, digits, '.', '_' and '-'; not starting with '.' (hidden and
    temporary entries start with '.'); no '..'; at most 200 characters.
    """
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a str, got {type(value).__name__}: {value!r}")
    if (
        not _NAME_RE.fullmatch(value)
        or ".." in value
        or value.startswith(".")
        or len(value) > _MAX_NAME_LEN
    ):
        raise ValueError(
            f"{what} {value!r} is not valid: use 1 to {_MAX_NAME_LEN} letters, digits, '.', '_' or '-', "
            "not starting with '.' and without '..' (e.g. 'mnist-grid_01')"
        )
    return value


def _check_int(value: object, what: str) -> int:
    # bool is an int subclass but never a meaningful index here.
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ValueError(f"{what} must be an int >= 0, got {value!r}")
    value = value.__index__()  # type: ignore[union-attr]  # accepts numpy integers
    if value < 0:
        raise ValueError(f"{what} must be an int >= 0, got {value}")
    return value


def data_dir(data_key: str) -> str:
    """Directory of one prepared data set: ``data/<key>``."""
    return f"data/{_check_name(data_key, 'data key')}"


def data_part(data_key: str, split: str, partition: int) -> str:
    """Parquet file of one split of one partition: ``data/<key>/<split>/part-00003.parquet``.

    ``split`` is ``'train'`` or ``'val'``; ``partition`` an int >= 0.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    partition = _check_int(partition, "partition")
    return f"{data_dir(data_key)}/{split}/part-{partition:05d}.parquet"


def data_manifest(data_key: str) -> str:
    """Manifest of a prepared data set, written last: its presence means the data set is complete."""
    return f"{data_dir(data_key)}/_manifest.json"


def experiment_dir(name: str) -> str:
    """Directory of one experiment: ``experiments/<name>``."""
    return f"experiments/{_check_name(name, 'experiment name')}"


def model_dir(exp: str, model_id: str) -> str:
    """Directory of one model of an experiment: ``experiments/<exp>/models/<model_id>``."""
    return f"{experiment_dir(exp)}/models/{_check_name(model_id, 'model id')}"


def model_spec(exp: str, model_id: str, version: int = 0) -> str:
    """Pickled model specification: ``experiments/<exp>/models/<model_id>/spec.pkl``.

    A model whose parameters change mid-run (PBT's exploit) gets a new, versioned spec
    (``spec-v<version>.pkl``): workers cache specs by path, so a path never changes meaning.
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"spec version must be an int >= 0, got {version!r}")
    return f"{model_dir(exp, model_id)}/spec.pkl" if version == 0 else f"{model_dir(exp, model_id)}/spec-v{version}.pkl"


def checkpoint_dir(exp: str, model_id: str) -> str:
    """Directory of a model's checkpoints: ``experiments/<exp>/models/<model_id>/ckpt``."""
    return f"{model_dir(exp, model_id)}/ckpt"


def checkpoint(exp: str, model_id: str, epoch: int, hop: int, attempt: int = 0) -> str:
    """Checkpoint after ``hop`` of ``epoch`` (``attempt`` counts retries of that sub-epoch).

    ``experiments/<exp>/models/<model_id>/ckpt/e0001-h03-a0.npz``. Zero-padded
    so names sort by (epoch, hop) for up to 9999 epochs and 99 hops; larger
    numbers widen the field rather than fail.
    """
    epoch = _check_int(epoch, "epoch")
    hop = _check_int(hop, "hop")
    attempt = _check_int(attempt, "attempt")
    return f"{checkpoint_dir(exp, model_id)}/e{epoch:04d}-h{hop:02d}-a{attempt}.npz"


def journal(exp: str) -> str:
    """Append-only event journal of an experiment: ``experiments/<exp>/journal.jsonl``."""
    return f"{experiment_dir(exp)}/journal.jsonl"
