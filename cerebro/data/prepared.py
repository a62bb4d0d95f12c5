"""Prepared data in a Store: its description (:class:`PreparedData`, the manifest), its files, and reading them.

Whichever path prepared it (pandas/Arrow or Spark), a data set is stored the
same way: one Parquet file per (split, partition) under
``layout.data_dir(key)``, written with the same schema
(:func:`canonical_table`) and the same row groups (:func:`row_group_rows`),
published by :func:`publish` (a temporary directory renamed into place, the
manifest written last), and found again by its content key
(:func:`find_existing`). Each worker then calls :func:`load_partition` once
for its own partitions and keeps them in memory for the whole experiment.

Integrity: the manifest records every file's sha256, rows and bytes (hashed
while it is written, :class:`PartitionFileWriter`) and the labels' statistics.
:func:`load_partition` checks the bytes it reads against them and raises
:class:`PreparedDataCorrupted` on a mismatch, marking the copy (``_corrupted.json``
written, the manifest removed); :func:`find_existing` checks sizes, existence and
the mark before reusing a copy, and :func:`publish` replaces a copy that is not
equivalent. A corrupted copy is thus never used twice: the next prepare replaces it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from cerebro.errors import CerebroError
from cerebro.storage import layout
from cerebro.storage.base import Store

from .._checks import check_int
from .rules import PrepareRequest

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow as pa

__all__ = [
    "FORMAT_VERSION",
    "PartitionData",
    "PartitionFileWriter",
    "PreparedData",
    "PreparedDataCorrupted",
    "canonical_table",
    "column_dtype",
    "column_shape",
    "describe_prepared",
    "find_existing",
    "label_summary",
    "label_stats",
    "load_partition",
    "merge_label_summaries",
    "part_path",
    "publish",
    "row_group_rows",
    "write_partition_file",
]

logger = logging.getLogger(__name__)

#: Version of the prepared-data format and of the partitioning rules. It enters
#: the content key, so changing either never reuses a copy written by an older rule.
#: 2: ``data_hash`` is a mergeable multiset digest; Parquet row groups sized by row width.
#: (The manifest's ``files`` checksums and ``label_stats`` came later without a new version:
#: the files are the same bytes, and a manifest without checksums is prepared again, see
#: :func:`find_existing`.)
FORMAT_VERSION = 2

#: Written into a data set's directory (and its manifest removed) when its files are found not
#: to match the manifest: the copy is never used again, the next prepare replaces it.
_CORRUPTED_NAME = "_corrupted.json"

# Parquet row groups: about this many bytes of values each, within [_MIN_GROUP_ROWS, _MAX_GROUP_ROWS] rows.
_ROW_GROUP_BYTES = 64 << 20
_MIN_GROUP_ROWS = 1024
_MAX_GROUP_ROWS = 1 << 20


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True)
class PreparedData:
    """What :func:`cerebro.data.prepare_data` wrote: a read-only description, also stored as the data set's manifest.

    Sent to workers (picklable) so that they can :func:`load_partition` their
    share. ``reused`` is True when an existing prepared copy was found and
    nothing was written. ``files`` (checksums, rows and bytes of every partition
    file) and ``label_stats`` are empty in manifests written before they existed.
    """

    key: str
    num_partitions: int
    feature_columns: tuple[str, ...]
    label_columns: tuple[str, ...]
    feature_shapes: dict[str, tuple[int, ...]]
    label_shapes: dict[str, tuple[int, ...]]
    label_dtypes: dict[str, str]
    train_rows: tuple[int, ...]
    val_rows: tuple[int, ...]
    data_hash: str
    reused: bool = False
    #: Every partition file, by store path (``layout.data_part``): ``{"sha256": hex, "rows": int,
    #: "bytes": int}`` as written; :func:`load_partition` checks the bytes it reads against it.
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Per label column, over the training and validation rows: ``{"min": float, "max": float,
    #: "integral": bool (every value a whole number), "width": int (values per row, 1 for a scalar)}``.
    label_stats: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def num_train_rows(self) -> int:
        """Training rows over all partitions."""
        return sum(self.train_rows)

    @property
    def num_val_rows(self) -> int:
        """Validation rows over all partitions."""
        return sum(self.val_rows)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists); :meth:`from_dict` reads it back."""
        return {
            "format_version": FORMAT_VERSION,
            "key": self.key,
            "num_partitions": self.num_partitions,
            "feature_columns": list(self.feature_columns),
            "label_columns": list(self.label_columns),
            "feature_shapes": {k: list(v) for k, v in self.feature_shapes.items()},
            "label_shapes": {k: list(v) for k, v in self.label_shapes.items()},
            "label_dtypes": dict(self.label_dtypes),
            "train_rows": list(self.train_rows),
            "val_rows": list(self.val_rows),
            "data_hash": self.data_hash,
            "reused": self.reused,
            "files": {path: dict(info) for path, info in sorted(self.files.items())},
            "label_stats": {c: dict(self.label_stats[c]) for c in self.label_columns if c in self.label_stats},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreparedData":
        """Inverse of :meth:`to_dict`; unknown keys (from newer writers) are ignored."""
        return cls(
            key=str(d["key"]),
            num_partitions=int(d["num_partitions"]),
            feature_columns=tuple(d["feature_columns"]),
            label_columns=tuple(d["label_columns"]),
            # The columns lists fix the order; JSON objects come back with sorted keys.
            feature_shapes={c: tuple(int(x) for x in d["feature_shapes"][c]) for c in d["feature_columns"]},
            label_shapes={c: tuple(int(x) for x in d["label_shapes"][c]) for c in d["label_columns"]},
            label_dtypes={c: str(d["label_dtypes"][c]) for c in d["label_columns"]},
            train_rows=tuple(int(x) for x in d["train_rows"]),
            val_rows=tuple(int(x) for x in d["val_rows"]),
            data_hash=str(d["data_hash"]),
            reused=bool(d.get("reused", False)),
            files={
                str(path): {"sha256": str(info["sha256"]), "rows": int(info["rows"]), "bytes": int(info["bytes"])}
                for path, info in (d.get("files") or {}).items()
            },
            label_stats={
                c: {"min": float(st["min"]), "max": float(st["max"]), "integral": bool(st["integral"]),
                    "width": int(st["width"])}
                for c in d["label_columns"] if (st := (d.get("label_stats") or {}).get(c)) is not None
            },
        )


@dataclass
class PartitionData:
    """One split of one partition, in memory, rows in the stored (hash) order.

    ``features[c]`` is float32 of shape ``(n,)`` (scalar column) or ``(n, d)``
    (array column); ``labels[c]`` likewise, int64 for integer or boolean labels
    and float32 for float labels. Row ``i`` of every array is the same input row.
    The arrays are ordinary writable numpy arrays owned by this object.
    """

    features: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    num_rows: int


class PreparedDataCorrupted(CerebroError):
    """A prepared partition file does not match the manifest that describes it (changed, truncated,
    rows dropped or unreadable), or its data set was already found so.

    The message names the file (store URL and path) and what was expected and found. The copy is
    marked as corrupted when this is raised (its manifest removed), so it is never used again:
    the next ``prepare_data`` or ``fit`` with the same data prepares it again.
    """


# ---------------------------------------------------------------------------- description and key


def _round_robin_counts(rows: int, num_partitions: int) -> tuple[int, ...]:
    """Rows of each partition when ranks ``p, p + P, p + 2P, ...`` go to partition ``p``."""
    return tuple(len(range(p, rows, num_partitions)) for p in range(num_partitions))


def describe_prepared(
    req: PrepareRequest,
    columns: Sequence[tuple[str, str, tuple[int, ...], bool]],
    n: int,
    n_val: int,
    data_hash: str,
    label_stats: dict[str, dict[str, Any]] | None = None,
) -> PreparedData:
    """The PreparedData of validated data: ``columns`` are ``(name, role, shape, is_integer)`` in order.

    ``label_stats`` (see :func:`label_stats`) describes the labels; ``files`` stays empty until
    :func:`publish` has written them.
    """
    feature_shapes = {name: shape for name, role, shape, _ in columns if role == "feature"}
    label_shapes = {name: shape for name, role, shape, _ in columns if role == "label"}
    label_dtypes = {name: ("int64" if integer else "float32") for name, role, _, integer in columns if role == "label"}
    key = _content_key(
        data_hash, req.features, req.labels, feature_shapes, label_shapes, label_dtypes, req.validation_spec,
        req.num_partitions, req.seed,
    )
    return PreparedData(
        key=key,
        num_partitions=req.num_partitions,
        feature_columns=req.features,
        label_columns=req.labels,
        feature_shapes=feature_shapes,
        label_shapes=label_shapes,
        label_dtypes=label_dtypes,
        train_rows=_round_robin_counts(n - n_val, req.num_partitions),
        val_rows=_round_robin_counts(n_val, req.num_partitions),
        data_hash=data_hash,
        reused=False,
        label_stats=dict(label_stats or {}),
    )


def label_summary(values: np.ndarray, integer: bool) -> tuple[float, float, bool] | None:
    """``(min, max, integral)`` of a label column's (finite, validated) values, taken in the stored
    dtype (int64 for integer or boolean labels, float32 otherwise) so that both paths agree exactly."""
    v = np.asarray(values).astype(np.int64 if integer else np.float32, copy=False)
    if v.size == 0:
        return None
    integral = True if integer else bool(np.all(v == np.floor(v)))
    return float(v.min()), float(v.max()), integral


def merge_label_summaries(
    a: tuple[float, float, bool] | None, b: tuple[float, float, bool] | None
) -> tuple[float, float, bool] | None:
    """The summary of the union of two sets of values (:func:`label_summary` of each)."""
    if a is None or b is None:
        return a if b is None else b
    return min(a[0], b[0]), max(a[1], b[1]), a[2] and b[2]


def label_stats(
    shapes: dict[str, tuple[int, ...]], summaries: dict[str, tuple[float, float, bool] | None]
) -> dict[str, dict[str, Any]]:
    """``PreparedData.label_stats`` from each label column's per-row shape and merged summary."""
    out: dict[str, dict[str, Any]] = {}
    for name, shape in shapes.items():
        summary = summaries.get(name)
        if summary is None:
            continue
        lo, hi, integral = summary
        out[name] = {"min": float(lo), "max": float(hi), "integral": bool(integral),
                     "width": int(np.prod(shape, dtype=np.int64))}
    return out


def _content_key(
    data_hash: str,
    features: tuple[str, ...],
    labels: tuple[str, ...],
    feature_shapes: dict[str, tuple[int, ...]],
    label_shapes: dict[str, tuple[int, ...]],
    label_dtypes: dict[str, str],
    validation: dict[str, Any],
    num_partitions: int,
    seed: int,
) -> str:
    spec = {
        "format_version": FORMAT_VERSION,
        "data_hash": data_hash,
        "feature_columns": list(features),
        "label_columns": list(labels),
        "feature_shapes": [list(feature_shapes[c]) for c in features],
        "label_shapes": [list(label_shapes[c]) for c in labels],
        "label_dtypes": [label_dtypes[c] for c in labels],
        "validation": validation,
        "num_partitions": num_partitions,
        "seed": seed,
    }
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:24]


def find_existing(store: Store, prepared: PreparedData, n: int) -> PreparedData | None:
    """The stored copy of ``prepared`` (``reused=True``) when its manifest exists and its files match it, else None.

    The check is cheap (no data is read): every partition file the manifest lists exists with
    the recorded size, and the copy was not found corrupted. A copy that fails it (or whose
    manifest has no checksums: written by an older cerebro) is marked corrupted, with a warning
    naming the file, and None is returned: the caller prepares the data again and
    :func:`publish` replaces it. The sha256 of every file is checked by the workers
    (:func:`load_partition`).
    """
    manifest = layout.data_manifest(prepared.key)
    if not store.exists(manifest):
        return None
    try:
        existing = PreparedData.from_dict(store.read_json(manifest))
    except (CerebroError, KeyError, TypeError, ValueError) as exc:
        problem = f"its manifest {store.url}/{manifest} is unreadable ({exc})"
    else:
        problem = _copy_problem(store, existing)
    if problem is not None:
        logger.warning("prepared data %s in %s is not used: %s; preparing it again", prepared.key, store.url, problem)
        _mark_corrupted(store, prepared.key, problem)
        return None
    logger.info("reusing prepared data %s in %s (%d rows)", prepared.key, store.url, n)
    return dataclasses.replace(existing, reused=True)


def _corrupted_marker(key: str) -> str:
    return f"{layout.data_dir(key)}/{_CORRUPTED_NAME}"


def _expected_paths(prepared: PreparedData) -> list[str]:
    return [layout.data_part(prepared.key, split, p) for split in layout.SPLITS for p in range(prepared.num_partitions)]


def _copy_problem(store: Store, prepared: PreparedData) -> str | None:
    """Why the stored files of ``prepared`` do not match its ``files`` (cheap: existence and sizes), or None."""
    marker = _corrupted_marker(prepared.key)
    if store.exists(marker):
        return f"it was found corrupted ({_marker_problem(store, marker)})"
    if not prepared.files:
        return "its manifest records no checksums of its files (it was written by an older cerebro)"
    for path in _expected_paths(prepared):
        info = prepared.files.get(path)
        if info is None:
            return f"its manifest records no checksum of {store.url}/{path}"
        try:
            size = store.file_size(path)
        except FileNotFoundError:
            return f"{store.url}/{path} is missing"
        if size != info["bytes"]:
            return f"{store.url}/{path} has {size} bytes, its manifest records {info['bytes']}"
    return None


def _marker_problem(store: Store, marker: str) -> str:
    try:
        return str(store.read_json(marker)["problem"])
    except Exception:  # noqa: BLE001 - the marker itself is what matters
        return f"see {store.url}/{marker}"


def _mark_corrupted(store: Store, key: str, problem: str) -> None:
    """Make sure the stored copy ``key`` is never used again: write the marker, then remove the manifest.

    In that order, so whoever sees no manifest finds the marker. Best effort: a store that
    refuses the writes only loses the marking (the error that led here is raised anyway).
    """
    try:
        store.write_json(_corrupted_marker(key), {"problem": problem, "time": time.time(), "host": socket.gethostname()})
        store.delete(layout.data_manifest(key))
    except Exception:  # noqa: BLE001 - the corruption is the error to report
        logger.warning("could not mark prepared data %s in %s as corrupted", key, store.url, exc_info=True)


# ---------------------------------------------------------------------------- write


def part_path(tmp_dir: str, key: str, split: str, partition: int) -> str:
    """Store path of one partition file inside the temporary directory ``tmp_dir`` of data set ``key``."""
    # Relative name inside the data set, from layout so naming stays in one place.
    return f"{tmp_dir}/{layout.data_part(key, split, partition)[len(layout.data_dir(key)) + 1:]}"


def row_group_rows(prepared: PreparedData) -> int:
    """Rows per Parquet row group: about ``_ROW_GROUP_BYTES`` of values, a function of the schema only.

    Both paths write with it, so the files are byte-identical; and a writer
    never needs more than one row group in memory.
    """
    width = sum(4 * int(np.prod(s, dtype=np.int64)) for s in prepared.feature_shapes.values())
    width += sum(
        np.dtype(prepared.label_dtypes[c]).itemsize * int(np.prod(prepared.label_shapes[c], dtype=np.int64))
        for c in prepared.label_columns
    )
    return int(min(_MAX_GROUP_ROWS, max(_MIN_GROUP_ROWS, _ROW_GROUP_BYTES // max(width, 1))))


def column_dtype(prepared: PreparedData, name: str) -> np.dtype:
    """The stored dtype of a column: float32 for features, ``label_dtypes`` for labels."""
    return np.dtype(prepared.label_dtypes[name]) if name in prepared.label_dtypes else np.dtype(np.float32)


def column_shape(prepared: PreparedData, name: str) -> tuple[int, ...]:
    """The per-row shape of a column: ``()`` for scalars, ``(d,)`` for arrays."""
    return prepared.label_shapes[name] if name in prepared.label_shapes else prepared.feature_shapes[name]


def _arrow_array(values: np.ndarray, shape: tuple[int, ...]) -> "pa.Array":
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    if shape == ():
        return pa.array(values)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), shape[0])


def canonical_table(prepared: PreparedData, values: dict[str, np.ndarray]) -> "pa.Table":
    """The stored Arrow table of some rows: features then labels, in order, as the partition files hold them.

    ``values[c]`` has shape ``(n, *shape)`` in any numeric dtype; it is cast to
    the stored dtype (features float32, labels int64/float32); arrays become
    ``fixed_size_list``; every field is non-nullable.
    """
    import pyarrow as pa

    arrays, fields = [], []
    for name in (*prepared.feature_columns, *prepared.label_columns):
        arr = _arrow_array(values[name].astype(column_dtype(prepared, name), copy=False), column_shape(prepared, name))
        arrays.append(arr)
        fields.append(pa.field(name, arr.type, nullable=False))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


class _HashingSink:
    """A writable file for pyarrow that hashes and counts the bytes on their way to ``raw``."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.size += view.nbytes
        self.raw.write(data)
        return view.nbytes

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:  # pyarrow may close it; the writer closes ``raw`` itself
        self.closed = True


class PartitionFileWriter:
    """Writes one partition file at store path ``path`` in the partition files' Parquet layout,
    hashing its bytes as they are written (nothing is read back).

    ``write(table)`` appends rows (in row groups of ``row_group_size``); :meth:`close` finishes
    the file and returns its ``PreparedData.files`` entry ``{"sha256", "rows", "bytes"}``;
    :meth:`abort` closes it after an error (the caller removes the file).
    """

    def __init__(self, store: Store, path: str, schema: "pa.Schema", row_group_size: int) -> None:
        import pyarrow.parquet as pq

        fs, root = store.arrow_filesystem()
        self.row_group_size = row_group_size
        self.rows = 0
        self._raw = fs.open_output_stream(f"{root}/{path}", compression=None)
        self._sink = _HashingSink(self._raw)
        try:
            self._writer = pq.ParquetWriter(self._sink, schema)
        except BaseException:
            self._raw.close()
            raise

    def write(self, table: "pa.Table", row_group_size: int | None = None) -> None:
        self._writer.write_table(table, row_group_size=row_group_size or self.row_group_size)
        self.rows += table.num_rows

    def close(self) -> dict[str, Any]:
        self._writer.close()
        self._raw.close()
        return {"sha256": self._sink.sha.hexdigest(), "rows": int(self.rows), "bytes": int(self._sink.size)}

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self._raw.close()


def write_partition_file(store: Store, path: str, table: "pa.Table", row_group_size: int) -> dict[str, Any]:
    """Write ``table`` as one partition file with ``pq.write_table``; return its ``files`` entry."""
    import pyarrow.parquet as pq

    fs, root = store.arrow_filesystem()
    with fs.open_output_stream(f"{root}/{path}", compression=None) as raw:
        sink = _HashingSink(raw)
        pq.write_table(table, sink, row_group_size=row_group_size)
    return {"sha256": sink.sha.hexdigest(), "rows": int(table.num_rows), "bytes": int(sink.size)}


def publish(store: Store, prepared: PreparedData, write_files: Callable[[str], dict[str, dict[str, Any]]]) -> PreparedData:
    """Publish a data set: ``write_files(tmp_dir)`` writes every partition file under a temporary
    directory and returns their ``files`` entries (by final store path); the directory is then
    renamed into place and the manifest, with those checksums, written last. Returns the
    published PreparedData (with ``files``).

    A crash or an error leaves no directory that looks complete (the temporary
    one is removed); losing a publish race to an equivalent copy is fine. An existing
    directory that is not equivalent (marked corrupted, or files that differ from the ones just
    written) is moved aside and replaced.
    """
    key = prepared.key
    final_dir = layout.data_dir(key)
    tmp_dir = f"data/.tmp-{key}-{uuid.uuid4().hex}"
    try:
        files = write_files(tmp_dir)
        missing = sorted(set(_expected_paths(prepared)) - set(files))
        if missing:
            raise CerebroError(f"prepare_data: no checksum was returned for {missing[0]} (and {len(missing) - 1} more)")
        prepared = dataclasses.replace(prepared, files={path: dict(files[path]) for path in sorted(files)})
        published = _place(store, prepared, tmp_dir, final_dir)
    except BaseException:
        try:
            store.delete(tmp_dir)
        except Exception:  # noqa: BLE001 - best effort; the original error matters
            logger.warning("could not remove temporary directory %s in %s", tmp_dir, store.url, exc_info=True)
        raise
    # Written last: a data directory without a manifest is not complete. The content is
    # deterministic for a key, so writing it again (a concurrent or recovering writer) is harmless.
    manifest = layout.data_manifest(key)
    if not store.exists(manifest):
        store.write_json(manifest, published.to_dict())
    return published


def _place(store: Store, prepared: PreparedData, tmp_dir: str, final_dir: str) -> PreparedData:
    """Rename ``tmp_dir`` to ``final_dir``; if that exists, keep it when it is equivalent, else replace it.

    Returns the PreparedData that describes what is now at ``final_dir``.
    """
    key = prepared.key
    for _ in range(5):
        try:
            store.rename(tmp_dir, final_dir)
            return prepared
        except FileExistsError:
            pass
        kept, problem = _existing_copy(store, prepared)
        if kept is not None:
            # Another process published the same content first: its copy is equivalent, keep it.
            logger.info("prepared data %s was published concurrently; discarding this copy", key)
            store.delete(tmp_dir)
            return kept
        logger.warning("prepared data %s in %s: replacing the existing copy, %s", key, store.url, problem)
        aside = f"data/.tmp-stale-{key}-{uuid.uuid4().hex}"
        try:
            store.rename(final_dir, aside)
        except FileNotFoundError:
            continue  # someone else moved it away first
        try:
            store.delete(aside)
        except Exception:  # noqa: BLE001 - only space is lost
            logger.warning("could not remove %s in %s", aside, store.url, exc_info=True)
    raise CerebroError(f"prepare_data: could not publish prepared data {key} in {store.url}: "
                       f"{final_dir!r} kept being replaced by other writers; try again")


def _existing_copy(store: Store, ours: PreparedData) -> tuple[PreparedData | None, str | None]:
    """(the existing directory's PreparedData if it may be kept, else why not) after a lost rename race.

    With a manifest (a concurrent writer finished): kept if its files pass the cheap check.
    Without one (a writer died before writing it, or one is about to): kept only if its files
    are byte for byte the ones just written (read and hashed: a rare path).
    """
    marker = _corrupted_marker(ours.key)
    if store.exists(marker):
        return None, f"it was found corrupted ({_marker_problem(store, marker)})"
    manifest = layout.data_manifest(ours.key)
    if store.exists(manifest):
        try:
            theirs = PreparedData.from_dict(store.read_json(manifest))
        except (CerebroError, KeyError, TypeError, ValueError) as exc:
            return None, f"its manifest is unreadable ({exc})"
        problem = _copy_problem(store, theirs)
        return (dataclasses.replace(theirs, reused=False), None) if problem is None else (None, problem)
    for path, info in ours.files.items():
        try:
            if store.file_size(path) != info["bytes"]:
                return None, f"{store.url}/{path} differs from the file just written (size)"
            if hashlib.sha256(store.read_bytes(path)).hexdigest() != info["sha256"]:
                return None, f"{store.url}/{path} differs from the file just written (sha256)"
        except FileNotFoundError:
            return None, f"{store.url}/{path} is missing"
    return ours, None


# ---------------------------------------------------------------------------- load


def load_partition(store: Store, prepared: PreparedData, split: str, partition: int,
                   max_rows: int | None = None) -> PartitionData:
    """Read one split of one partition into memory (rows in the stored hash order), verified.

    The file is read once (``store.read_bytes``); its sha256, size and row count must be the
    ones ``prepared.files`` records (a manifest without checksums: the row count only), and it is
    parsed from those same bytes. ``max_rows`` reads only the first rows (the driver's sample for
    checking a model against the data before training), without reading the rest of the file:
    then only the size and the footer's row count are checked.

    Called by a worker once per experiment for its own partitions; blocks on
    I/O; idempotent. Raises ``ValueError`` for a bad ``split`` or ``partition``,
    ``CerebroError`` when the prepared data is missing, and :class:`PreparedDataCorrupted`
    (naming the file, what was expected and what was found) when the file does not match the
    manifest or the data set was found corrupted before: the copy is then marked so that no
    later ``prepare_data`` reuses it (the next ``fit`` prepares the data again).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if split not in layout.SPLITS:
        raise ValueError(f"split must be one of {layout.SPLITS}; got {split!r}")
    partition = check_int("load_partition", "partition", partition, minimum=0)
    if partition >= prepared.num_partitions:
        raise ValueError(
            f"partition must be in [0, {prepared.num_partitions}) for data {prepared.key}; got {partition}"
        )
    path = layout.data_part(prepared.key, split, partition)
    marker = _corrupted_marker(prepared.key)
    if store.exists(marker):
        raise _already_corrupted(store, prepared, marker)
    if not store.exists(layout.data_manifest(prepared.key)) or not store.exists(path):
        if store.exists(marker):  # marked (then its manifest removed) since the check above
            raise _already_corrupted(store, prepared, marker)
        raise CerebroError(
            f"prepared data {prepared.key} is missing or incomplete in {store.url} (no {path!r}); "
            "run prepare_data() again with the same store"
        )
    expected = prepared.files.get(path)
    rows = int(expected["rows"]) if expected else (prepared.train_rows if split == "train" else prepared.val_rows)[partition]
    names = list(prepared.feature_columns) + list(prepared.label_columns)
    check = _Check(store, prepared, path, expected, rows)
    if max_rows is None:
        data = store.read_bytes(path)
        check.found(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
        if expected is not None and (check.size != expected["bytes"] or check.sha256 != expected["sha256"]):
            check.found(rows=_footer_rows(data))
            raise check.corrupted()
        try:
            table = pq.read_table(pa.BufferReader(data), columns=names, use_threads=True)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise check.corrupted(exc) from exc
    else:
        check.found(size=store.file_size(path))
        if expected is not None and check.size != expected["bytes"]:
            raise check.corrupted()
        fs, root = store.arrow_filesystem()
        with fs.open_input_file(f"{root}/{path}") as fh:
            try:
                parquet = pq.ParquetFile(fh)
                check.found(rows=parquet.metadata.num_rows)
                if check.rows != rows:
                    raise check.corrupted()
                first = next(parquet.iter_batches(batch_size=max_rows, columns=names), None)
            except (pa.ArrowInvalid, ValueError) as exc:  # content, not I/O: an OSError passes as it is
                raise check.corrupted(exc) from exc
        table = (pa.Table.from_batches([first]) if first is not None
                 else parquet.schema_arrow.empty_table().select(names))
    n = table.num_rows
    if max_rows is None:
        check.found(rows=n)
        if n != rows:
            raise check.corrupted()
    try:
        features = {
            c: _to_numpy(table.column(c), prepared.feature_shapes[c], np.dtype(np.float32), n)
            for c in prepared.feature_columns
        }
        labels = {
            c: _to_numpy(table.column(c), prepared.label_shapes[c], np.dtype(prepared.label_dtypes[c]), n)
            for c in prepared.label_columns
        }
    except (pa.ArrowException, KeyError, TypeError, ValueError) as exc:  # only without checksums (old manifests)
        raise check.corrupted(exc) from exc
    return PartitionData(features=features, labels=labels, num_rows=n)


def _footer_rows(data: bytes) -> int | None:
    """The row count a Parquet file's footer states, or None when it cannot be read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows)
    except Exception:  # noqa: BLE001 - only for the message
        return None


class _Check:
    """What :func:`load_partition` expected of one file and what it found: the corruption message."""

    def __init__(self, store: Store, prepared: PreparedData, path: str, expected: dict[str, Any] | None,
                 rows: int) -> None:
        self.store, self.prepared, self.path, self.expected, self.expected_rows = store, prepared, path, expected, rows
        self.sha256: str | None = None
        self.size: int | None = None
        self.rows: int | None = None

    def found(self, **values: Any) -> None:
        for name, value in values.items():
            setattr(self, name, value)

    def corrupted(self, error: BaseException | None = None) -> PreparedDataCorrupted:
        """The error to raise; marks the stored copy as corrupted first."""
        where = f"{self.store.url}/{self.path}"
        exp = self.expected
        if exp is not None:
            expected = f"sha256 {exp['sha256'][:16]}..., {exp['rows']} rows, {exp['bytes']} bytes"
        else:
            expected = f"{self.expected_rows} rows (this manifest records no checksums)"
        found = []
        if self.sha256 is not None:
            found.append(f"sha256 {self.sha256[:16]}...")
        if self.rows is not None:
            found.append(f"{self.rows} rows")
        elif error is not None or self.sha256 is not None:
            found.append("no readable row count")
        if self.size is not None:
            found.append(f"{self.size} bytes")
        found_text = ", ".join(found) or "nothing"
        if error is not None:
            found_text += f"; it is not readable as this data set's Parquet ({type(error).__name__}: {error})"
        problem = f"prepared data file {where} does not match its manifest: expected {expected}; found {found_text}"
        _mark_corrupted(self.store, self.prepared.key, problem)
        return PreparedDataCorrupted(
            f"{problem}. The prepared data {self.prepared.key} is corrupted and will not be used again: the next "
            "fit() or prepare_data() with the same data and store prepares it again (resume=True needs the data "
            "passed to fit again)"
        )


def _already_corrupted(store: Store, prepared: PreparedData, marker: str) -> PreparedDataCorrupted:
    return PreparedDataCorrupted(
        f"prepared data {prepared.key} in {store.url} was found corrupted and will not be used: "
        f"{_marker_problem(store, marker)}. The next fit() or prepare_data() with the same data and store "
        "prepares it again (resume=True needs the data passed to fit again)"
    )


def _to_numpy(col: Any, shape: tuple[int, ...], dtype: np.dtype, n: int) -> np.ndarray:
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if shape != ():
        arr = arr.flatten()
    out = arr.to_numpy(zero_copy_only=False).reshape((n, *shape))
    # Arrow-backed views are read-only; hand out plain owned arrays so callers may shuffle in place.
    return np.array(out, dtype=dtype, copy=True, order="C")
