"""HDFSStore's WebHDFS driver: a pyarrow FileSystemHandler over the ``hdfs`` package's client.

Imported only when the ``webhdfs`` driver is used (it needs ``pip install 'cerebro-mop[hdfs]'``).
The handler translates pyarrow's FileSystem calls into the client's WebHDFS requests
(GETFILESTATUS, LISTSTATUS, OPEN with offset/length, CREATE, APPEND, MKDIRS, DELETE, RENAME)
and HDFS's Java exception names into Python's ``OSError`` subclasses, so that
``pyarrow.fs.PyFileSystem(WebHDFSHandler(client))`` works with ``pyarrow.parquet``.

Renames use WebHDFS's ``renameoptions`` (HDFS ``rename2``): ``OVERWRITE`` replaces a file
atomically, ``NONE`` fails if the target exists, atomically. Both never move the source
*into* an existing directory, as the plain HDFS rename does. (HttpFS gateways may not
support ``renameoptions``; point ``webhdfs_url`` at the NameNode.)
"""

from __future__ import annotations

import errno
import io
import logging
import os
import posixpath
import tempfile
from typing import Any, Callable

import pyarrow
import pyarrow.fs
from hdfs.util import HdfsError

from cerebro.errors import CerebroError
from cerebro.storage.hdfs_driver import HDFSDriver

logger = logging.getLogger(__name__)

# Uploads are buffered in memory up to this size, then in a local temporary file.
_SPOOL_BYTES = 32 * 1024 * 1024

# HDFS RemoteException class names -> Python exceptions.
_EXCEPTIONS: dict[str, type[OSError]] = {
    "FileNotFoundException": FileNotFoundError,
    "FileAlreadyExistsException": FileExistsError,
    "AccessControlException": PermissionError,
    "ParentNotDirectoryException": NotADirectoryError,
}


def new_client(url: str, *, user: str | None = None, kerb_ticket: str | None = None) -> Any:
    """A WebHDFS client for ``url`` (the NameNode's http(s) endpoint; ';' separates HA ones).

    Without ``kerb_ticket``: ``hdfs.InsecureClient`` as ``user`` (default
    ``$HADOOP_USER_NAME``, else the local user). With it: ``KRB5CCNAME`` is set to the ticket
    cache for this process and ``hdfs.ext.kerberos.KerberosClient`` is used (``user``, if
    given, is the proxy user); that needs the ``requests-kerberos`` package.
    """
    import hdfs

    user = user or os.environ.get("HADOOP_USER_NAME") or None
    if kerb_ticket is None:
        return hdfs.InsecureClient(url, user=user)
    try:
        from hdfs.ext.kerberos import KerberosClient
    except ImportError as exc:
        raise CerebroError(
            f"HDFSStore with kerb_ticket= and the 'webhdfs' driver needs the 'requests-kerberos' package "
            f"(`pip install requests-kerberos`): {exc}"
        ) from exc
    if os.environ.get("KRB5CCNAME") != kerb_ticket:
        logger.info("setting KRB5CCNAME=%s for WebHDFS Kerberos authentication", kerb_ticket)
        os.environ["KRB5CCNAME"] = kerb_ticket
    return KerberosClient(url, proxy=user)


def _os_error(exc: HdfsError, what: str, path: str) -> OSError:
    """The Python exception for an HdfsError: FileNotFoundError for FileNotFoundException, etc."""
    name = getattr(exc, "exception", None) or ""
    message = f"WebHDFS {what} {path!r} failed: {getattr(exc, 'message', exc)}"
    if name == "PathIsNotEmptyDirectoryException":
        return OSError(errno.ENOTEMPTY, message)
    return _EXCEPTIONS.get(name, OSError)(message)


def _call(what: str, path: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except HdfsError as exc:
        raise _os_error(exc, what, path) from exc


class _RangeReader(io.RawIOBase):
    """A seekable read-only file over WebHDFS OPEN requests with offset and length.

    Every ``read(n)`` is one request for exactly the bytes asked for (capped at the end of
    the file), so Parquet footers and column chunks are fetched without reading the file.
    Each request resolves the path again: a file replaced while it is read could mix
    versions. Cerebro only reads Parquet files that are never replaced (they are published
    by renaming a whole directory); ``HDFSStore.read_bytes`` reads in one request.
    """

    def __init__(self, client: Any, path: str, size: int) -> None:
        super().__init__()
        self._client = client
        self._path = path
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset} in {self._path!r}")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        remaining = self._size - self._pos
        n = remaining if size is None or size < 0 else min(size, remaining)
        if n <= 0:
            return b""

        def fetch() -> bytes:
            with self._client.read(self._path, offset=self._pos, length=n) as reader:
                return reader.read()

        data = _call("read", self._path, fetch)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(memoryview(buffer)))
        memoryview(buffer)[: len(data)] = data
        return len(data)


class _UploadOnClose(io.RawIOBase):
    """A write-only file that spools its bytes and sends them in one CREATE or APPEND on close.

    An error of the upload is raised by ``close``; nothing reaches HDFS before it.
    """

    def __init__(self, upload: Callable[[Any], None], path: str) -> None:
        super().__init__()
        self._upload = upload
        self._path = path
        self._spool: Any = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)
        self._written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = self._spool.write(data)
        self._written += n
        return n

    def tell(self) -> int:
        return self._written

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._spool.seek(0)
            self._upload(self._spool)
        finally:
            self._spool.close()
            super().close()


def _rewind(data: Any) -> None:
    if hasattr(data, "seek"):
        data.seek(0)


class WebHDFSHandler(pyarrow.fs.FileSystemHandler):
    """pyarrow FileSystem calls on absolute HDFS paths, served by an ``hdfs`` client.

    Use as ``pyarrow.fs.PyFileSystem(WebHDFSHandler(client))``. ``replication`` applies to
    the files it creates. Two extras beyond pyarrow's interface serve HDFSStore:
    :meth:`rename_noreplace` and :meth:`append`.
    """

    def __init__(self, client: Any, *, replication: int | None = None) -> None:
        self.client = client
        self.replication = replication

    # --------------------------------------------------------------- identity

    def __eq__(self, other: object) -> bool:
        if isinstance(other, WebHDFSHandler):
            return self.client is other.client
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        if isinstance(other, WebHDFSHandler):
            return self.client is not other.client
        return NotImplemented

    def get_type_name(self) -> str:
        return "webhdfs"

    def normalize_path(self, path: str) -> str:
        return path

    # --------------------------------------------------------------- status

    def _status(self, path: str) -> dict[str, Any] | None:
        """FileStatus of ``path``, or None if it does not exist (other errors are raised)."""
        try:
            return self.client.status(path, strict=True)
        except HdfsError as exc:
            if getattr(exc, "exception", None) == "FileNotFoundException":
                return None
            raise _os_error(exc, "status of", path) from exc

    @staticmethod
    def _info(path: str, status: dict[str, Any] | None) -> pyarrow.fs.FileInfo:
        if status is None:
            return pyarrow.fs.FileInfo(path, pyarrow.fs.FileType.NotFound)
        mtime_ns = int(status.get("modificationTime", 0)) * 1_000_000
        if status.get("type") == "DIRECTORY":
            return pyarrow.fs.FileInfo(path, pyarrow.fs.FileType.Directory, mtime_ns=mtime_ns)
        return pyarrow.fs.FileInfo(
            path, pyarrow.fs.FileType.File, mtime_ns=mtime_ns, size=int(status.get("length", 0))
        )

    def get_file_info(self, paths: list[str]) -> list[pyarrow.fs.FileInfo]:
        return [self._info(p, self._status(p)) for p in paths]

    def get_file_info_selector(self, selector: pyarrow.fs.FileSelector) -> list[pyarrow.fs.FileInfo]:
        base = selector.base_dir.rstrip("/") or "/"
        status = self._status(base)
        if status is None:
            if selector.allow_not_found:
                return []
            raise FileNotFoundError(f"WebHDFS listing of {base!r} failed: no such directory")
        if status.get("type") != "DIRECTORY":
            raise NotADirectoryError(f"WebHDFS listing of {base!r} failed: not a directory")
        infos: list[pyarrow.fs.FileInfo] = []
        pending = [base]
        while pending:
            directory = pending.pop()
            try:
                children = _call("listing of", directory, self.client.list, directory, status=True)
            except FileNotFoundError:
                if directory == base and not selector.allow_not_found:
                    raise
                continue  # deleted while we walked
            for name, child in children:
                full = posixpath.join(directory, name)
                infos.append(self._info(full, child))
                if selector.recursive and child.get("type") == "DIRECTORY":
                    pending.append(full)
        return infos

    # --------------------------------------------------------------- directories

    def create_dir(self, path: str, recursive: bool) -> None:
        if not recursive:
            parent = self._status(posixpath.dirname(path.rstrip("/")) or "/")
            if parent is None:
                raise FileNotFoundError(f"WebHDFS mkdir {path!r} failed: the parent directory does not exist")
        _call("mkdir", path, self.client.makedirs, path)

    def delete_dir(self, path: str) -> None:
        status = self._status(path)
        if status is None:
            raise FileNotFoundError(f"WebHDFS delete of {path!r} failed: no such directory")
        if status.get("type") != "DIRECTORY":
            raise NotADirectoryError(f"WebHDFS delete of {path!r} failed: not a directory")
        _call("delete of", path, self.client.delete, path, recursive=True)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        if path.strip("/") == "":
            raise PermissionError("refusing to delete the contents of the HDFS root through WebHDFSHandler")
        try:
            names = _call("listing of", path, self.client.list, path)
        except FileNotFoundError:
            if missing_dir_ok:
                return
            raise
        for name in names:
            child = posixpath.join(path, name)
            _call("delete of", child, self.client.delete, child, recursive=True)

    def delete_root_dir_contents(self) -> None:
        raise PermissionError("refusing to delete the contents of the HDFS root through WebHDFSHandler")

    # --------------------------------------------------------------- files

    def delete_file(self, path: str) -> None:
        status = self._status(path)
        if status is None:
            raise FileNotFoundError(f"WebHDFS delete of {path!r} failed: no such file")
        if status.get("type") == "DIRECTORY":
            raise IsADirectoryError(f"WebHDFS delete of {path!r} failed: it is a directory")
        _call("delete of", path, self.client.delete, path, recursive=False)

    def _rename2(self, src: str, dest: str, option: str) -> None:
        # WebHDFS RENAME with renameoptions runs HDFS's rename2: it never moves src *into* an
        # existing directory, and it fails with FileAlreadyExistsException (NONE) or replaces a
        # file / empty directory of the same kind (OVERWRITE), atomically on the NameNode.
        _call(f"rename to {dest!r} of", src, self.client._rename, src, destination=dest, renameoptions=option)

    def move(self, src: str, dest: str) -> None:
        """pyarrow's move: replace ``dest`` if it is a file (or an empty directory), atomically."""
        self._rename2(src, dest, "OVERWRITE")

    def rename_noreplace(self, src: str, dest: str) -> None:
        """Move ``src`` to ``dest``; ``FileExistsError`` if ``dest`` exists (atomic)."""
        self._rename2(src, dest, "NONE")

    def copy_file(self, src: str, dest: str) -> None:
        with self.open_input_stream(src) as f:
            data = f.read()
        self._create(dest, io.BytesIO(data.to_pybytes() if hasattr(data, "to_pybytes") else data))

    def read_whole(self, path: str) -> bytes:
        """The whole file in one OPEN request (one version of it, even if it is being replaced)."""

        def fetch() -> bytes:
            with self.client.read(path) as reader:
                return reader.read()

        return _call("read", path, fetch)

    def open_input_stream(self, path: str) -> pyarrow.NativeFile:
        return self.open_input_file(path)

    def open_input_file(self, path: str) -> pyarrow.NativeFile:
        status = self._status(path)
        if status is None:
            raise FileNotFoundError(f"WebHDFS open of {path!r} failed: no such file")
        if status.get("type") == "DIRECTORY":
            raise IsADirectoryError(f"WebHDFS open of {path!r} failed: it is a directory")
        return pyarrow.PythonFile(_RangeReader(self.client, path, int(status.get("length", 0))), mode="r")

    def _create(self, path: str, data: Any, *, overwrite: bool = True) -> None:
        _call(
            "create of", path, self.client.write, path, data=data, overwrite=overwrite,
            replication=self.replication,
        )

    def append(self, path: str, data: Any) -> None:
        """Append ``data`` (bytes or a file object) to ``path``, creating it if it is missing."""
        for _ in range(3):
            try:
                _call("append to", path, self.client.write, path, data=data, append=True)
                return
            except FileNotFoundError:
                pass
            _rewind(data)
            try:
                self._create(path, data, overwrite=False)
                return
            except FileExistsError:  # another appender created it first: append after all
                _rewind(data)
        raise OSError(f"WebHDFS append to {path!r} failed: the file keeps appearing and disappearing")

    def open_output_stream(self, path: str, metadata: Any = None) -> pyarrow.NativeFile:
        return pyarrow.PythonFile(_UploadOnClose(lambda spool: self._create(path, spool), path), mode="w")

    def open_append_stream(self, path: str, metadata: Any = None) -> pyarrow.NativeFile:
        return pyarrow.PythonFile(_UploadOnClose(lambda spool: self.append(path, spool), path), mode="w")


class WebHDFSDriver(HDFSDriver):
    """HDFSStore's ``webhdfs`` driver: atomic renames and a real append (see the module docstring)."""

    name = "webhdfs"
    atomic_replace = True
    atomic_noreplace = True

    def __init__(self, client: Any, *, replication: int | None = None) -> None:
        self.client = client
        self.handler = WebHDFSHandler(client, replication=replication)
        super().__init__(pyarrow.fs.PyFileSystem(self.handler))

    def replace_file(self, src: str, dst: str) -> None:
        # rename2 refuses a file over a directory ("must both be directories/files").
        self.handler.move(src, dst)

    def rename_noreplace(self, src: str, dst: str) -> None:
        self.handler.rename_noreplace(src, dst)

    def read_file(self, path: str) -> bytes:
        # One OPEN request: ranged requests could straddle a concurrent replacement.
        return self.handler.read_whole(path)

    def append(self, path: str, data: bytes) -> None:
        self.handler.append(path, data)
