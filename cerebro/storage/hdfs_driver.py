"""The interface between HDFSStore and the code that moves its bytes: :class:`HDFSDriver`.

HDFSStore (:mod:`cerebro.storage.hdfs`) talks to HDFS through one driver per process: the
libhdfs one (in :mod:`cerebro.storage.hdfs`) or the WebHDFS one (in
:mod:`cerebro.storage._webhdfs`). Both derive from this base class, which lives in a module of
its own so that neither driver module has to import the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow.fs

__all__ = ["HDFSDriver"]


class HDFSDriver:
    """What HDFSStore needs beyond the pyarrow FileSystem API: the renames and the append.

    ``fs`` serves reads, listings, deletes and plain writes. Paths are absolute HDFS paths.
    """

    name = "?"
    #: Whether ``replace_file`` is atomic (a reader never finds the target missing).
    atomic_replace = False
    #: Whether ``rename_noreplace`` is one atomic NameNode operation.
    atomic_noreplace = False

    def __init__(self, fs: "pyarrow.fs.FileSystem") -> None:
        self.fs = fs

    def replace_file(self, src: str, dst: str) -> None:
        """Move the file ``src`` to ``dst``, replacing a file there (never a directory)."""
        raise NotImplementedError

    def rename_noreplace(self, src: str, dst: str) -> None:
        """Move ``src`` (file or directory) to ``dst``; ``FileExistsError`` if ``dst`` exists."""
        raise NotImplementedError

    def read_file(self, path: str) -> bytes:
        """The whole file, as one consistent version (one open stream)."""
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def append(self, path: str, data: bytes) -> None:
        """Append ``data`` to the existing file ``path``."""
        with self.fs.open_append_stream(path) as f:
            f.write(data)
