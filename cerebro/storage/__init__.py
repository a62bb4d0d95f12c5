"""Stores: where an experiment's prepared data, checkpoints and logs live.

``Store`` is the interface (a few required primitives, derived helpers) and
``Store.create(url)`` picks an implementation from the URL scheme. Path naming
is in the pure :mod:`cerebro.storage.layout`.
"""

from __future__ import annotations

from cerebro.storage.base import Store, StoreFullError
from cerebro.storage.hdfs import HDFSStore
from cerebro.storage.local import LocalStore

__all__ = ["Store", "StoreFullError", "LocalStore", "HDFSStore"]
