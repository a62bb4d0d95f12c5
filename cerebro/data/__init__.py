"""Data preparation: a DataFrame or Parquet data set -> validated, split, partitioned Parquet in a Store.

Model hopper parallelism moves models, never data: :func:`prepare_data` is
called once per experiment (by the driver, before any worker starts), splits
the rows into one training and one validation partition per worker and writes
them to the store; each worker then calls :func:`load_partition` once for its
own partitions and keeps them in memory for the whole experiment.

Data identity (binding, see API.md): rows are assigned to partitions, and
ordered within them, by a seeded hash of their *content*
(:func:`row_hashes`), so the same rows in any order, arriving as pandas or
Parquet or Spark, give the same partitions in the same order, and the
same content key, so a prepared copy is found and reused. ``data_hash``
identifies the content: a multiset digest of the rows' hash pairs
(:func:`multiset_lanes`), mergeable from per-batch partial sums.

The modules, each importing only public names of those above it (``arrow`` hands
a Spark DataFrame to ``spark``, imported then):

==============  ===============================================================
``rules``       argument checks (:class:`~cerebro.data.rules.PrepareRequest`)
                and the messages of refused data, shared by both paths
``columns``     one pandas / Arrow column validated and converted to numpy
``hashing``     the seeded content hash and the multiset digest
``prepared``    :class:`PreparedData` (the manifest: checksums of the files,
                label statistics), partition files, publishing,
                :func:`load_partition` (verified against the manifest:
                :class:`PreparedDataCorrupted`)
``arrow``       :func:`prepare_data`: the pandas / pyarrow / Parquet path
``spark``       the same preparation done by Spark for a Spark DataFrame
                (identical output); imported only when one is prepared
==============  ===============================================================
"""

from __future__ import annotations

from .arrow import prepare_data
from .hashing import multiset_digest, multiset_lanes, row_hashes
from .prepared import FORMAT_VERSION, PartitionData, PreparedData, PreparedDataCorrupted, load_partition
from .rules import is_spark_dataframe

__all__ = [
    "FORMAT_VERSION",
    "PreparedData",
    "PartitionData",
    "PreparedDataCorrupted",
    "prepare_data",
    "load_partition",
    "row_hashes",
    "multiset_lanes",
    "multiset_digest",
    "is_spark_dataframe",
]
