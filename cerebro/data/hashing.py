"""The seeded content hash of rows, and the mergeable multiset digest of a data set (``data_hash``).

Data identity (binding, see API.md): rows are assigned to partitions, and
ordered within them, by a seeded hash of their *content*, so the same rows in
any order, arriving as pandas or Parquet or Spark, give the same partitions in
the same order. Each row gets two independent 64-bit hashes
(:func:`hash_pair`): h1 orders the rows, h2 breaks ties of h1; their seeds
come from the experiment seed (:func:`cerebro.core.seeds.content_hash_seeds`).
Both preparation paths hash with these very functions (the Spark path on
Arrow batches in its executors), so they agree bit for bit.

``data_hash`` is a multiset digest of the rows' hash pairs
(:func:`multiset_lanes`, :func:`multiset_digest`), mergeable from per-batch
partial sums, so no process ever needs every row's hash at once.

Pure, thread-safe, vectorised numpy; no I/O.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np

from cerebro.core.seeds import content_hash_seeds

from .columns import column_from_arrow

__all__ = ["hash_columns", "hash_pair", "multiset_digest", "multiset_lanes", "row_hashes"]

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
# Rows per hashing block: small enough that the block and its temporaries stay in cache.
_HASH_BLOCK_VALUES = 1 << 16

# Multiset digest of the (h1, h2) pairs: this many independent 64-bit lanes.
_DIGEST_LANES = 4
_DIGEST_SEED = 0x6D756C7469736574  # b"multiset"
_DIGEST_SALTS = None  # filled lazily by _digest_salts()


def _mix_int(z: int) -> int:
    """splitmix64 finalizer on a Python int (for deriving salts)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def _salts(seed: int, count: int) -> np.ndarray:
    """``count`` pseudo-random 64-bit salts from ``seed`` (splitmix64 stream)."""
    state = (int(seed) ^ _GOLDEN) & _MASK64
    out = []
    for _ in range(count):
        state = (state + _GOLDEN) & _MASK64
        out.append(_mix_int(state))
    return np.array(out, dtype=np.uint64)


def _mix_inplace(x: np.ndarray, tmp: np.ndarray) -> None:
    """splitmix64 finalizer, vectorised and in place on a uint64 array (wrapping arithmetic)."""
    np.right_shift(x, np.uint64(30), out=tmp)
    x ^= tmp
    x *= np.uint64(_MIX1)
    np.right_shift(x, np.uint64(27), out=tmp)
    x ^= tmp
    x *= np.uint64(_MIX2)
    np.right_shift(x, np.uint64(31), out=tmp)
    x ^= tmp


def hash_columns(columns: Sequence[np.ndarray], seeds: Sequence[int]) -> list[np.ndarray]:
    """One uint64 content hash per row for each seed, in one pass over the data.

    Canonical row content: the values of ``columns`` in order, each as float64
    (arrays flattened, -0.0 normalised to 0.0). Each value's bits are salted by
    its position and the seed and mixed (splitmix64 finalizer); the mixed values
    are summed (mod 2**64) and mixed again. Position-dependent salts make the
    hash depend on column order, and the block-wise numpy loop keeps the
    temporaries in cache (no per-row Python loop).
    """
    if not columns:
        raise ValueError("row_hashes() needs at least one column")
    arrays = [np.asarray(c) for c in columns]
    n = arrays[0].shape[0]
    widths = []
    for a in arrays:
        if a.shape[0] != n:
            raise ValueError(f"row_hashes(): columns have different lengths ({a.shape[0]} and {n})")
        widths.append(int(np.prod(a.shape[1:], dtype=np.int64)) if a.ndim > 1 else 1)
    width = sum(widths)
    salts = [_salts(s, width + 1) for s in seeds]
    outs = [np.empty(n, dtype=np.uint64) for _ in seeds]
    block_rows = max(256, _HASH_BLOCK_VALUES // max(width, 1))
    block = np.empty((min(block_rows, max(n, 1)), width), dtype=np.float64)
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        b = stop - start
        blk = block[:b]
        off = 0
        for a, w in zip(arrays, widths):
            # Assignment casts ints and bools to float64: the canonical value.
            blk[:, off : off + w] = a[start:stop].reshape(b, w)
            off += w
        # IEEE: -0.0 + 0.0 == +0.0, so equal numbers get equal bits.
        blk += 0.0
        bits = blk.view(np.uint64)
        x = np.empty_like(bits)
        tmp = np.empty_like(bits)
        for salt, out in zip(salts, outs):
            np.bitwise_xor(bits, salt[:width], out=x)
            _mix_inplace(x, tmp)
            h = x.sum(axis=1, dtype=np.uint64)
            h ^= salt[width]
            _mix_inplace(h, np.empty_like(h))
            out[start:stop] = h
    return outs


def hash_pair(columns: Sequence[np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows' two content hashes under the experiment ``seed``: h1 orders them, h2 breaks ties.

    Both preparation paths sort rows by ``(h1, h2)``; the seeds are
    :func:`cerebro.core.seeds.content_hash_seeds` of ``seed``.
    """
    h1, h2 = hash_columns(columns, list(content_hash_seeds(seed)))
    return h1, h2


def row_hashes(columns: Any, seed: int) -> np.ndarray:
    """Seeded content hash of every row: a uint64 array of length n.

    ``columns`` is a sequence of numeric numpy arrays of equal length (shape
    ``(n,)`` or ``(n, d)``: bool, int or float), or a ``pyarrow.Table`` /
    ``RecordBatch`` whose columns (numeric scalars or lists of numbers) are
    taken in order. The hash depends only on the values as float64 (so int 3
    and float 3.0 agree, -0.0 equals 0.0) and their positions, never on row
    order, chunking or the source format: the Spark path computes the same
    hash on Arrow batches. :func:`cerebro.data.prepare_data` uses the pair of
    :func:`hash_pair`, whose h1 is ``row_hashes(cols, seed)``.

    Pure, thread-safe, no I/O. NaN values hash by their bit pattern; callers
    validate first.
    """
    if hasattr(columns, "column_names") and hasattr(columns, "column"):
        arrays = [
            column_from_arrow(columns.column(i), str(name), "feature", str(columns.schema.field(i).type)).values
            for i, name in enumerate(columns.column_names)
        ]
    else:
        arrays = list(columns)
    return hash_columns(arrays, [int(seed)])[0]


def _digest_salts() -> np.ndarray:
    global _DIGEST_SALTS
    if _DIGEST_SALTS is None:
        _DIGEST_SALTS = _salts(_DIGEST_SEED, 2 * _DIGEST_LANES)
    return _DIGEST_SALTS


def multiset_lanes(h1: np.ndarray, h2: np.ndarray) -> list[int]:
    """Partial sums of the multiset digest of the pairs ``(h1[i], h2[i])``: ``_DIGEST_LANES`` Python ints.

    Lane ``j`` is the sum (mod 2**64) over rows of a splitmix64 mix of
    ``(h1, h2)`` salted for that lane. Sums commute, so partials of any split
    of the rows (Arrow batches, Spark partitions) add up (mod 2**64) to the
    lanes of the whole: see :func:`multiset_digest`. Vectorised, O(n).
    """
    h1 = np.asarray(h1, dtype=np.uint64)
    h2 = np.asarray(h2, dtype=np.uint64)
    salts = _digest_salts()
    x = np.empty_like(h1)
    tmp = np.empty_like(h1)
    lanes = []
    for j in range(_DIGEST_LANES):
        np.bitwise_xor(h1, salts[2 * j], out=x)
        _mix_inplace(x, tmp)
        x ^= h2
        x += salts[2 * j + 1]
        _mix_inplace(x, tmp)
        lanes.append(int(x.sum(dtype=np.uint64)))
    return lanes


def multiset_digest(lanes: Sequence[int], count: int) -> str:
    """The data set's ``data_hash``: sha256 (hex) of the row count and the summed lanes.

    ``lanes`` is the element-wise sum (any order, reduced mod 2**64 here) of
    :func:`multiset_lanes` partials over all rows. The sorted order of the rows
    is a function of their multiset of hashes, so equal digests mean the same
    content in the same order (up to hash collisions).
    """
    blob = b"cerebro-multiset-v1" + int(count).to_bytes(8, "little")
    blob += b"".join((int(v) & _MASK64).to_bytes(8, "little") for v in lanes)
    return hashlib.sha256(blob).hexdigest()
