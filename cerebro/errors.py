"""Errors raised by cerebro."""


class CerebroError(Exception):
    """Base class of errors raised by cerebro."""


class StoreFullError(CerebroError, OSError):
    """The store's file system has no room for a write (``ENOSPC``, or a quota: ``EDQUOT``).

    Names the store, the path and the bytes it needed.  A write that failed this way left no
    partial file behind (a journal append is cut back to where it started), so the experiment
    resumes once space is freed.  Also ``cerebro.storage.StoreFullError``."""


class StoreIntegrityError(CerebroError):
    """A file the engine would unpickle does not match the sha256 the journal records for it:
    it was replaced or corrupted in the store.  Never retried: the run stops."""
