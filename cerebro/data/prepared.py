"""Prepared data in a Store: its description (:class:`PreparedData`, the manifest), its files, and reading them.

Whichever path prepared it (pandas/Arrow or Spark), a data set is stored the
same way: one Parquet file per (split, partition) under
``layout.data_dir(key)``, written with the same schema
(:func:`canonical_table`) and the same row groups (:func:`row_group_rows`),
published by :func:`publish` (a temporary directory renamed into place, the
manifest written last), and found again by its content key
(:func:`find_existing`). Each worker then calls :func:`load_partition` once
for its own partitions and keeps them in memory for the whole experiment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
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
    "PreparedData",
    "canonical_table",
    "column_dtype",
    "column_shape",
    "describe_prepared",
    "find_existing",
    "load_partition",
    "part_path",
    "publish",
    "row_group_rows",
]

logger = logging.getLogger(__name__)

#: Version of the prepared-data format and of the partitioning rules. It enters
#: the content key, so changing either never reuses a copy written by an older rule.
#: 2: ``data_hash`` is a mergeable multiset digest; Parquet row groups sized by row width.
FORMAT_VERSION = 2

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
    nothing was written.
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
) -> PreparedData:
    """The PreparedData of validated data: ``columns`` are ``(name, role, shape, is_integer)`` in order."""
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
    )


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
    """The stored copy of ``prepared`` (``reused=True``) when its manifest exists, else None."""
    manifest = layout.data_manifest(prepared.key)
    if not store.exists(manifest):
        return None
    existing = PreparedData.from_dict(store.read_json(manifest))
    logger.info("reusing prepared data %s in %s (%d rows)", prepared.key, store.url, n)
    return dataclasses.replace(existing, reused=True)


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


def publish(store: Store, prepared: PreparedData, write_files: Callable[[str], None]) -> None:
    """Publish a data set: ``write_files(tmp_dir)`` writes every partition file under a temporary
    directory, which is then renamed into place; the manifest is written last.

    A crash or an error leaves no directory that looks complete (the temporary
    one is removed); losing a publish race to an equivalent copy is fine.
    """
    key = prepared.key
    final_dir = layout.data_dir(key)
    tmp_dir = f"data/.tmp-{key}-{uuid.uuid4().hex}"
    try:
        write_files(tmp_dir)
        try:
            store.rename(tmp_dir, final_dir)
        except FileExistsError:
            # Another process published the same content first: its copy is equivalent, keep it.
            logger.info("prepared data %s was published concurrently; discarding this copy", key)
            store.delete(tmp_dir)
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
        store.write_json(manifest, prepared.to_dict())


# ---------------------------------------------------------------------------- load


def load_partition(store: Store, prepared: PreparedData, split: str, partition: int,
                   max_rows: int | None = None) -> PartitionData:
    """Read one split of one partition into memory (rows in the stored hash order).

    ``max_rows`` reads only the first rows (the driver's sample for checking a model against
    the data before training), without reading the rest of the file.

    Called by a worker once per experiment for its own partitions; blocks on
    I/O; read-only and idempotent. Raises ``ValueError`` for a bad ``split`` or
    ``partition`` and ``CerebroError`` when the prepared data is missing.
    """
    import pyarrow.parquet as pq

    if split not in layout.SPLITS:
        raise ValueError(f"split must be one of {layout.SPLITS}; got {split!r}")
    partition = check_int("load_partition", "partition", partition, minimum=0)
    if partition >= prepared.num_partitions:
        raise ValueError(
            f"partition must be in [0, {prepared.num_partitions}) for data {prepared.key}; got {partition}"
        )
    path = layout.data_part(prepared.key, split, partition)
    if not store.exists(layout.data_manifest(prepared.key)) or not store.exists(path):
        raise CerebroError(
            f"prepared data {prepared.key} is missing or incomplete in {store.url} (no {path!r}); "
            "run prepare_data() again with the same store"
        )
    fs, root = store.arrow_filesystem()
    names = list(prepared.feature_columns) + list(prepared.label_columns)
    if max_rows is None:
        table = pq.read_table(f"{root}/{path}", filesystem=fs, columns=names, use_threads=True)
    else:
        import pyarrow as pa

        with fs.open_input_file(f"{root}/{path}") as fh:
            parquet = pq.ParquetFile(fh)
            first = next(parquet.iter_batches(batch_size=max_rows, columns=names), None)
            table = (pa.Table.from_batches([first]) if first is not None
                     else parquet.schema_arrow.empty_table().select(names))
    n = table.num_rows
    features = {
        c: _to_numpy(table.column(c), prepared.feature_shapes[c], np.dtype(np.float32), n)
        for c in prepared.feature_columns
    }
    labels = {
        c: _to_numpy(table.column(c), prepared.label_shapes[c], np.dtype(prepared.label_dtypes[c]), n)
        for c in prepared.label_columns
    }
    return PartitionData(features=features, labels=labels, num_rows=n)


def _to_numpy(col: Any, shape: tuple[int, ...], dtype: np.dtype, n: int) -> np.ndarray:
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if shape != ():
        arr = arr.flatten()
    out = arr.to_numpy(zero_copy_only=False).reshape((n, *shape))
    # Arrow-backed views are read-only; hand out plain owned arrays so callers may shuffle in place.
    return np.array(out, dtype=dtype, copy=True, order="C")
