"""Every random stream of an experiment, by named purpose.  Pure.

Each stream is a function of the experiment seed and the keys that identify one draw, so a
draw never depends on which process makes it, in which order, or how many draws came before
(scikit-learn's ``check_random_state`` idea, with named purposes).  The purpose numbers below
are part of the on-disk contract: changing one changes every model trained after it.

=================================  ==========================================================
purpose                            stream
=================================  ==========================================================
``sub_epoch_seed``        (1)      one sub-epoch's row shuffle and framework random state
``driver_rng``            (2)      the search driver's generator (``SearchDriver.bind``)
``model_init_seed``       (3)      a configuration's initial weights
``exploit_init_seed``     (4)      the estimator rebuilt for a PBT exploit
``epoch_partition_order``          the deterministic scheduler's partition order per epoch
``row_order``                      the permutation of a partition's rows in a sub-epoch
``layer_seed_values``              the framework's per-layer seed generators (dropout masks)
``content_hash_seeds``             the two content-hash seeds of data preparation
=================================  ==========================================================
"""

from __future__ import annotations

import numpy as np

_SUB_EPOCH, _DRIVER, _MODEL_INIT, _EXPLOIT_INIT = 1, 2, 3, 4
_LAYER_SEEDS = 0x5EED
_MASK64 = (1 << 64) - 1
# Derives the tie-break hash seed h2 from the experiment seed; any fixed odd constant works.
_TIEBREAK_XOR = 0xD1B54A32D192ED03


def derive_seed(*keys: int) -> int:
    """A 31-bit seed from integer keys (order matters), stable across runs and platforms."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1)[0] & 0x7FFFFFFF)


def sub_epoch_seed(seed: int, model_index: int, epoch: int, partition: int) -> int:
    """The seed of one sub-epoch's row shuffle (and of the framework's random state during it).

    A retried sub-epoch gets the same seed, so a retry reproduces the lost attempt exactly.
    """
    return derive_seed(seed, _SUB_EPOCH, model_index, epoch, partition)


def driver_rng(seed: int) -> np.random.Generator:
    """The experiment's one generator for search decisions (drivers get it through ``bind``)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _DRIVER]))


def model_init_seed(seed: int, model_index: int) -> int:
    """Same seed and configuration index: same initial weights, in any run."""
    return derive_seed(seed, _MODEL_INIT, model_index)


def exploit_init_seed(seed: int, model_index: int, spec_version: int) -> int:
    """The seed under which the estimator of a PBT exploit (a new spec version) is rebuilt."""
    return derive_seed(seed, _EXPLOIT_INIT, model_index, spec_version)


def epoch_partition_order(seed: int, model_index: int, epoch: int, num_partitions: int) -> tuple[int, ...]:
    """The deterministic scheduler's order of partitions for one model's epoch.

    One random permutation per epoch, ``numpy.random.default_rng([seed, epoch])``, read
    cyclically from position ``model_index % num_partitions``: every epoch has a fresh order,
    and models with consecutive indices (those a search adds together) start on different
    partitions, so they pipeline across the workers instead of queueing for the same one.
    """
    base = np.random.default_rng([int(seed), int(epoch)]).permutation(num_partitions)
    start = int(model_index) % num_partitions
    return tuple(int(base[(start + k) % num_partitions]) for k in range(num_partitions))


def row_order(seed: int, num_rows: int) -> np.ndarray:
    """The row permutation of one sub-epoch (``seed`` is its :func:`sub_epoch_seed`)."""
    return np.random.default_rng(int(seed)).permutation(num_rows)


def layer_seed_values(seed: int, count: int) -> np.ndarray:
    """``count`` seeds for the framework's layer seed generators in one sub-epoch."""
    return np.random.default_rng([int(seed), _LAYER_SEEDS]).integers(1, 2**31 - 1, size=count)


def content_hash_seeds(seed: int) -> tuple[int, int]:
    """The seeds of the two 64-bit content hashes (h1 orders rows, h2 breaks ties)."""
    return int(seed), (int(seed) ^ _TIEBREAK_XOR) & _MASK64
