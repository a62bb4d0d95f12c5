"""Where things live inside a Store: pure path naming, no I/O.

Every path an experiment writes is named here, so the layout of a store is
readable in one place and a name can be computed anywhere (driver, worker,
CLI) without touching the store. All functions are pure, deterministic and
return store-relative '/'-separated paths. They validate their arguments and
raise ``ValueError`` for names that could escape or clash in the store.

Layout::

    data/<key>/_manifest.json                 written last: the data set is complete
    data/<key>/{train,val}/part-00003.parquet one file per split per partition
    logs/                                     the workers' logs
    experiments/<exp>/experiment.json         the experiment's metadata
    experiments/<exp>/search-<sha256>.pkl     the search object, for `cerebro resume`
    experiments/<exp>/LOCK                    held by the driver that runs the experiment
    experiments/<exp>/journal.jsonl
    experiments/<exp>/{history,visits,evaluations}.csv   the result tables
    experiments/<exp>/tensorboard/, mlflow.json          tracking (local stores only)
    experiments/<exp>/models/<model_id>/spec-<sha256>.pkl
    experiments/<exp>/models/<model_id>/ckpt/e0001-h03-a0.npz
"""

from __future__ import annotations

import re

from cerebro._checks import check_choice, check_int

__all__ = [
    "SPLITS",
    "TABLES",
    "TENSORBOARD_DIR",
    "MLFLOW_STATE_FILE",
    "data_dir",
    "data_part",
    "data_manifest",
    "experiment_dir",
    "model_dir",
    "model_spec",
    "checkpoint_dir",
    "checkpoint",
    "journal",
    "experiment_file",
    "search_file",
    "pickle_digest",
    "lock",
    "table",
    "table_file",
    "EXPERIMENT_FILE",
    "logs_dir",
    "worker_log",
    "file_name",
    "split_experiment_path",
]

SPLITS = ("train", "val")
TABLES = ("history", "visits", "evaluations")
# Names inside an experiment's directory (used through a local path, for local stores).
EXPERIMENT_FILE = "experiment.json"
TENSORBOARD_DIR = "tensorboard"
MLFLOW_STATE_FILE = "mlflow.json"

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


def data_dir(data_key: str) -> str:
    """Directory of one prepared data set: ``data/<key>``."""
    return f"data/{_check_name(data_key, 'data key')}"


def data_part(data_key: str, split: str, partition: int) -> str:
    """Parquet file of one split of one partition: ``data/<key>/<split>/part-00003.parquet``.

    ``split`` is ``'train'`` or ``'val'``; ``partition`` an int >= 0.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    partition = check_int("layout.data_part", "partition", partition, minimum=0)
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


def model_spec(exp: str, model_id: str, version: int = 0, digest: str | None = None) -> str:
    """Pickled model specification: ``experiments/<exp>/models/<model_id>/spec-<sha256>.pkl``.

    The name carries the sha256 of the file's bytes (``digest``), and the journal records the
    name: a spec is only ever unpickled after its bytes were checked against it (see
    :func:`pickle_digest`).  A model whose parameters change mid-run (PBT's exploit) gets a new,
    versioned spec (``spec-v<version>-<sha256>.pkl``): workers cache specs by path, so a path
    never changes meaning.  Without ``digest``, the name without one (old experiments).
    """
    version = check_int("layout.model_spec", "version", version, minimum=0)
    stem = "spec" if version == 0 else f"spec-v{version}"
    return f"{model_dir(exp, model_id)}/{stem}{_digest_suffix(digest)}.pkl"


def pickle_digest(path: str) -> str | None:
    """The sha256 a spec or search file's name carries (None for a name without one)."""
    match = _DIGEST_RE.search(path)
    return match.group(1) if match else None


_DIGEST_RE = re.compile(r"-([0-9a-f]{64})\.pkl$")


def _digest_suffix(digest: str | None) -> str:
    if digest is None:
        return ""
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"digest must be a sha256 hex string, got {digest!r}")
    return f"-{digest}"


def checkpoint_dir(exp: str, model_id: str) -> str:
    """Directory of a model's checkpoints: ``experiments/<exp>/models/<model_id>/ckpt``."""
    return f"{model_dir(exp, model_id)}/ckpt"


def checkpoint(exp: str, model_id: str, epoch: int, hop: int, attempt: int = 0) -> str:
    """Checkpoint after ``hop`` of ``epoch`` (``attempt`` counts retries of that sub-epoch).

    ``experiments/<exp>/models/<model_id>/ckpt/e0001-h03-a0.npz``. Zero-padded
    so names sort by (epoch, hop) for up to 9999 epochs and 99 hops; larger
    numbers widen the field rather than fail.
    """
    epoch = check_int("layout.checkpoint", "epoch", epoch, minimum=0)
    hop = check_int("layout.checkpoint", "hop", hop, minimum=0)
    attempt = check_int("layout.checkpoint", "attempt", attempt, minimum=0)
    return f"{checkpoint_dir(exp, model_id)}/e{epoch:04d}-h{hop:02d}-a{attempt}.npz"


def journal(exp: str) -> str:
    """Append-only event journal of an experiment: ``experiments/<exp>/journal.jsonl``."""
    return f"{experiment_dir(exp)}/journal.jsonl"


def experiment_file(exp: str) -> str:
    """Metadata of an experiment (arguments, data key, start time): ``experiments/<exp>/experiment.json``."""
    return f"{experiment_dir(exp)}/{EXPERIMENT_FILE}"


def search_file(exp: str, digest: str | None = None) -> str:
    """The pickled search object of an experiment, for ``cerebro resume``:
    ``experiments/<exp>/search-<sha256>.pkl`` (the name carries its bytes' sha256 and the
    journal's ``started`` record names the file, as for specs)."""
    return f"{experiment_dir(exp)}/search{_digest_suffix(digest)}.pkl"


def torn_journal_tail(exp: str, stamp: int) -> str:
    """The torn last line cut off the journal before a resume appended to it, kept for
    forensics: ``experiments/<exp>/journal.torn-<stamp>``."""
    return f"{experiment_dir(exp)}/journal.torn-{int(stamp)}"


def lock(exp: str) -> str:
    """Lock file held by the driver running an experiment: ``experiments/<exp>/LOCK``."""
    return f"{experiment_dir(exp)}/LOCK"


def table_file(kind: str) -> str:
    """File name of a result table: ``<kind>.csv``, ``kind`` one of :data:`TABLES`."""
    return f"{check_choice('layout.table', 'kind', kind, TABLES)}.csv"


def table(exp: str, kind: str) -> str:
    """A result table of an experiment: ``experiments/<exp>/<kind>.csv``, ``kind`` one of :data:`TABLES`."""
    return f"{experiment_dir(exp)}/{table_file(kind)}"


def worker_log(worker: int) -> str:
    """The output of worker process ``worker``: ``logs/worker-3.log``."""
    return f"{logs_dir()}/worker-{check_int('layout.worker_log', 'worker', worker, minimum=0)}.log"


def logs_dir() -> str:
    """Directory of the workers' logs: ``logs``."""
    return "logs"



def file_name(path: str) -> str:
    """The last component of a store path (``experiment.json``, ``history.csv``, ...), for
    readers that hold a local experiment directory rather than a store."""
    return path.rsplit("/", 1)[-1]


def split_experiment_path(path: str) -> tuple[str, str]:
    """``(store root, experiment name)`` of a path to an experiment directory
    (``<root>/experiments/<name>``): the inverse of :func:`experiment_dir`."""
    parts = str(path).rstrip("/").rsplit("/", 2)
    if len(parts) != 3 or parts[1] != "experiments":
        raise ValueError(f"{path!r} is not an experiment directory (<store>/experiments/<name>)")
    _check_name(parts[2], "experiment name")
    return parts[0] or "/", parts[2]
