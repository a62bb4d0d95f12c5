"""Seed derivation: every random stream of an experiment comes from (seed, purpose, ...)."""

from __future__ import annotations

import numpy as np


def derive_seed(*keys: int) -> int:
    """A 31-bit seed from integer keys (order matters), stable across runs and platforms."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1)[0] & 0x7FFFFFFF)


def sub_epoch_seed(seed: int, model_index: int, epoch: int, partition: int) -> int:
    """The seed of one sub-epoch's row shuffle (and of Keras' random state during it).

    A retried sub-epoch gets the same seed, so a retry reproduces the lost attempt exactly.
    """
    return derive_seed(seed, 1, model_index, epoch, partition)
