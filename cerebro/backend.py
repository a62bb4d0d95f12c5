"""``from cerebro.backend import SparkBackend``: the original Cerebro's backend arguments over
:class:`cerebro.SparkBackend` (docs/migrating.md).

``SparkBackend(spark_context=None, num_workers=None, start_timeout=600, disk_cache_size_gb=10,
data_readers_pool_type='thread', num_data_readers=10, nics=None, verbose=1)`` as in the original
(positional order kept).  ``spark_context``, ``num_workers`` and ``start_timeout`` mean what they
meant.  ``disk_cache_size_gb``, ``data_readers_pool_type``, ``num_data_readers`` and ``nics``
configured the original's petastorm readers and its own driver service, which do not exist
here: each one given is checked and warns that it has no effect.  ``verbose`` only controlled
the original backend's log lines; it is accepted silently (progress is the search's
``verbose``).  ``prepare_data(store, df, validation)`` followed by a search's
``fit_on_prepared_data()`` works as before (the data is prepared by that fit).
"""

from __future__ import annotations

import numbers
from typing import Any

from ._checks import check_choice, check_int, check_number, check_type, param_error
from ._compat import warn_ignored
from .backends import spark as _spark
from .storage import Store

__all__ = ["SparkBackend"]

_OWNER = "SparkBackend"


class SparkBackend(_spark.SparkBackend):
    """:class:`cerebro.SparkBackend` with the original Cerebro's constructor (see the module
    docstring for what each argument does here)."""

    def __init__(self, spark_context: Any = None, num_workers: int | None = None, start_timeout: float = 600,
                 disk_cache_size_gb: float | None = None, data_readers_pool_type: str | None = None,
                 num_data_readers: int | None = None, nics: Any = None, verbose: int = 1) -> None:
        check_choice(_OWNER, "verbose", verbose, (0, 1, 2, True, False))
        if disk_cache_size_gb is not None:
            check_number(_OWNER, "disk_cache_size_gb", disk_cache_size_gb, low=0, low_open=True,
                         expected="a number of GB > 0 or None")
            warn_ignored(_OWNER, "disk_cache_size_gb", "each worker reads its partition once with pyarrow and "
                         "keeps it in memory (no petastorm disk cache)", stacklevel=2)
        if data_readers_pool_type is not None:
            check_choice(_OWNER, "data_readers_pool_type", data_readers_pool_type, ("thread", "process"))
            warn_ignored(_OWNER, "data_readers_pool_type", "there are no petastorm reader pools; each worker reads "
                         "its partition once with pyarrow", stacklevel=2)
        if num_data_readers is not None:
            check_int(_OWNER, "num_data_readers", num_data_readers, expected="an int >= 1 or None")
            warn_ignored(_OWNER, "num_data_readers", "there are no petastorm reader pools; each worker reads "
                         "its partition once with pyarrow", stacklevel=2)
        if nics is not None:
            if isinstance(nics, str) or not all(isinstance(n, str) and n for n in nics):
                raise param_error(_OWNER, "nics", "a list of network interface names or None", nics, TypeError)
            warn_ignored(_OWNER, "nics", "the driver listens on spark.driver.bindAddress (default: "
                         "spark.driver.host or this host's name) and the workers connect to spark.driver.host; "
                         "set those Spark options to choose the interface", stacklevel=2)
        super().__init__(spark_context, num_workers, start_timeout=start_timeout)
        self.verbose = verbose
        self._prepared: tuple[Store, Any, Any] | None = None

    # ------------------------------------------------------------------ the original's data flow

    def prepare_data(self, store: Store, dataset: Any, validation: float | str, num_partitions: int | None = None,
                     parquet_row_group_size_mb: float | None = None, dataset_idx: Any = None) -> None:
        """The original's ``backend.prepare_data(store, df, validation)``: remember ``dataset`` and
        its split for the next ``fit_on_prepared_data()`` of a search on this backend and
        ``store``, which prepares it (one partition per worker, the search's columns) and trains.

        Prepared data is reused whenever the same rows, split and worker count come again, so
        this costs nothing extra.  ``num_partitions`` and ``parquet_row_group_size_mb`` warn that
        they have no effect (there is one partition per worker); ``dataset_idx`` (several data sets
        in one store) is not supported.  Returns None (the original returned row counts and
        metadata).
        """
        from .data import is_spark_dataframe

        check_type("SparkBackend.prepare_data", "store", store, Store, "a cerebro Store (LocalStore, HDFSStore)")
        if not is_spark_dataframe(dataset):
            import pandas as pd

            if not isinstance(dataset, pd.DataFrame):
                raise param_error("SparkBackend.prepare_data", "dataset", "a Spark or pandas DataFrame", dataset,
                                  TypeError)
        if isinstance(validation, bool) or not isinstance(validation, (numbers.Real, str)):
            raise param_error("SparkBackend.prepare_data", "validation",
                              "a fraction in (0, 1) or the name of a validation column", validation, TypeError)
        if dataset_idx is not None:
            raise ValueError("The 'dataset_idx' parameter of SparkBackend.prepare_data (several data sets in one "
                             f"store) is not supported. Got {dataset_idx!r}; use one store per data set.")
        for name, value in (("num_partitions", num_partitions), ("parquet_row_group_size_mb", parquet_row_group_size_mb)):
            if value is not None:
                warn_ignored("SparkBackend.prepare_data", name, "the data is written as one Parquet partition per "
                             "worker", stacklevel=2)
        self._prepared = (store, dataset, validation)

    def prepared_data(self, store: Store) -> tuple[Any, Any]:
        """``(dataset, validation)`` of the last :meth:`prepare_data` call for ``store``; raises
        ``CerebroError`` when there was none (what ``fit_on_prepared_data()`` trains on)."""
        from .errors import CerebroError

        if self._prepared is None or not _same_store(self._prepared[0], store):
            raise CerebroError(
                "fit_on_prepared_data() trains on the DataFrame given to backend.prepare_data(store, df, validation) "
                "on this backend and store, and there was none. Data prepared elsewhere (petastorm, another "
                "process) cannot be read: load it into a DataFrame and call fit(df)."
            )
        return self._prepared[1], self._prepared[2]


def _same_store(a: Store, b: Store) -> bool:
    return a is b or (type(a) is type(b) and a.url == b.url)
