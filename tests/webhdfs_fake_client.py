"""FakeWebHDFSClient: an in-process stand-in for the ``hdfs`` package's client. NOT HDFS.

There is no HDFS server on the development machine and none is faked here: this is a small
in-memory object with the *method signatures* of ``hdfs.Client`` (hdfs 2.7.3) that
cerebro's WebHDFS adapter (``cerebro.storage._webhdfs``) calls, raising ``hdfs.HdfsError``
with the RemoteException class names a NameNode sends back, following the WebHDFS REST
documentation (https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html)
and HDFS's rename/rename2 rules. It lets the unit tests check cerebro's *translation layer*
(pyarrow FileSystemHandler calls -> client calls, HdfsError -> OSError, rename options,
append, ranged reads). Whether real HDFS behaves the same is checked only by the contract
tests against a real cluster (``CEREBRO_TEST_HDFS_URL``).

Clients made by :func:`fake_new_client` for the same ``url`` share one in-memory namespace, so
a store that is pickled and rebuilt sees the same files, as it would on a cluster.
"""

from __future__ import annotations

import contextlib
import io
import posixpath
import threading
import time
from typing import Any, Iterator

from hdfs.util import HdfsError

_NAMESPACES: dict[str, "_Namespace"] = {}
_NAMESPACES_LOCK = threading.Lock()


class _Namespace:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = {"/"}
        self.mtime: dict[str, int] = {"/": 0}
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str]] = []


def fake_new_client(url: str, *, user: str | None = None, kerb_ticket: str | None = None) -> "FakeWebHDFSClient":
    """Drop-in for ``cerebro.storage._webhdfs.new_client`` in tests (monkeypatch it)."""
    with _NAMESPACES_LOCK:
        ns = _NAMESPACES.setdefault(url, _Namespace())
    return FakeWebHDFSClient(url, ns, user=user)


def forget(url: str) -> None:
    """Drop the namespace of ``url`` (test cleanup)."""
    with _NAMESPACES_LOCK:
        _NAMESPACES.pop(url, None)


def _err(message: str, exception: str | None = None) -> HdfsError:
    return HdfsError(message, exception=exception)


class _Response:
    def __init__(self, payload: Any = None) -> None:
        self._payload = payload
        self.content = b"" if payload is None else repr(payload).encode()

    def json(self) -> Any:
        if self._payload is None:
            raise ValueError("empty body")
        return self._payload


class FakeWebHDFSClient:
    """The subset of ``hdfs.Client`` that cerebro's adapter uses, on an in-memory tree. Not HDFS."""

    def __init__(self, url: str, ns: _Namespace, *, user: str | None = None) -> None:
        self.url = url
        self.user = user
        self.ns = ns

    # ------------------------------------------------------------------ tree helpers

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(operation, path) of every call so far, for tests that count round trips."""
        return self.ns.requests

    def _log(self, op: str, path: str) -> str:
        if not path.startswith("/"):
            raise AssertionError(f"the adapter must send absolute paths, got {path!r}")
        path = posixpath.normpath(path)
        self.ns.requests.append((op, path))
        return path

    def _kind(self, path: str) -> str | None:
        if path in self.ns.dirs:
            return "DIRECTORY"
        if path in self.ns.files:
            return "FILE"
        return None

    def _status_of(self, path: str) -> dict[str, Any]:
        kind = self._kind(path)
        return {
            "type": kind,
            "length": len(self.ns.files[path]) if kind == "FILE" else 0,
            "modificationTime": self.ns.mtime.get(path, 0),
            "pathSuffix": "",
            "replication": 3 if kind == "FILE" else 0,
        }

    def _children(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        names = {p[len(prefix):].split("/")[0] for p in (*self.ns.files, *self.ns.dirs) if p.startswith(prefix) and p != prefix}
        return sorted(names)

    def _mkdirs(self, path: str) -> None:
        parts = [p for p in path.split("/") if p]
        cur = ""
        for part in parts:
            cur = f"{cur}/{part}"
            if cur in self.ns.files:
                if cur == path:
                    raise _err(f"Path is not a directory: {path}", "FileAlreadyExistsException")
                raise _err(f"Parent path is not a directory: {cur}", "ParentNotDirectoryException")
            if cur not in self.ns.dirs:
                self.ns.dirs.add(cur)
                self.ns.mtime[cur] = int(time.time() * 1000)

    def _remove_tree(self, path: str) -> None:
        prefix = path.rstrip("/") + "/"
        for p in [p for p in self.ns.files if p == path or p.startswith(prefix)]:
            del self.ns.files[p]
        for p in [p for p in self.ns.dirs if p == path or p.startswith(prefix)]:
            self.ns.dirs.discard(p)

    def _move_tree(self, src: str, dst: str) -> None:
        prefix = src.rstrip("/") + "/"
        for p in [p for p in self.ns.files if p == src or p.startswith(prefix)]:
            self.ns.files[dst + p[len(src):]] = self.ns.files.pop(p)
        for p in [p for p in self.ns.dirs if p == src or p.startswith(prefix)]:
            self.ns.dirs.discard(p)
            self.ns.dirs.add(dst + p[len(src):])

    @staticmethod
    def _bytes(data: Any) -> bytes:
        if data is None:
            raise NotImplementedError("FakeWebHDFSClient.write(data=None) (the AsyncWriter form) is not used by cerebro")
        if isinstance(data, str):
            return data.encode()
        if isinstance(data, (bytes, bytearray, memoryview)):
            return bytes(data)
        if hasattr(data, "read"):
            return data.read()
        return b"".join(bytes(c) for c in data)

    # ------------------------------------------------------------------ hdfs.Client API

    def status(self, hdfs_path: str, strict: bool = True) -> dict[str, Any] | None:
        with self.ns.lock:
            path = self._log("GETFILESTATUS", hdfs_path)
            if self._kind(path) is None:
                if strict:
                    raise _err(f"File does not exist: {path}", "FileNotFoundException")
                return None
            return self._status_of(path)

    def list(self, hdfs_path: str, status: bool = False) -> list[Any]:
        with self.ns.lock:
            path = self._log("LISTSTATUS", hdfs_path)
            kind = self._kind(path)
            if kind is None:
                raise _err(f"File {path} does not exist.", "FileNotFoundException")
            if kind == "FILE":
                raise _err(f"{path!r} is not a directory.")  # hdfs.Client raises this without an exception name
            names = self._children(path)
            if status:
                return [(n, self._status_of(posixpath.join(path, n))) for n in names]
            return names

    @contextlib.contextmanager
    def read(self, hdfs_path: str, offset: int = 0, length: int | None = None, **kwargs: Any) -> Iterator[io.BytesIO]:
        if kwargs.get("encoding") or kwargs.get("chunk_size") or kwargs.get("delimiter"):
            raise NotImplementedError("FakeWebHDFSClient.read supports the raw file-like form only")
        with self.ns.lock:
            path = self._log("OPEN", hdfs_path)
            if path not in self.ns.files:
                why = "Path is not a file" if path in self.ns.dirs else "File does not exist"
                raise _err(f"{why}: {path}", "FileNotFoundException")
            data = self.ns.files[path]
            if offset < 0 or (offset >= len(data) and len(data) > 0) or offset > len(data):
                raise _err(f"Offset={offset} out of the range [0, {len(data)}); OPEN, path={path}", "IOException")
            chunk = data[offset:] if length is None else data[offset : offset + length]
        yield io.BytesIO(chunk)

    def write(
        self,
        hdfs_path: str,
        data: Any = None,
        overwrite: bool = False,
        permission: Any = None,
        blocksize: Any = None,
        replication: int | None = None,
        buffersize: Any = None,
        append: bool = False,
        encoding: str | None = None,
    ) -> None:
        if append and overwrite:
            raise ValueError("Cannot both overwrite and append.")
        if append and (permission or blocksize or replication):
            raise ValueError("Cannot change file properties while appending.")
        payload = self._bytes(data)
        if encoding:
            raise NotImplementedError("encoding= is not used by cerebro")
        with self.ns.lock:
            path = self._log("APPEND" if append else "CREATE", hdfs_path)
            kind = self._kind(path)
            if append:
                if kind != "FILE":
                    raise _err(f"Failed to append to non-existent file {path}", "FileNotFoundException")
                self.ns.files[path] += payload
            else:
                if kind == "DIRECTORY":
                    raise _err(f"{path} already exists as a directory", "FileAlreadyExistsException")
                if kind == "FILE" and not overwrite:
                    raise _err(f"{path} for client 127.0.0.1 already exists", "FileAlreadyExistsException")
                self._mkdirs(posixpath.dirname(path))
                self.ns.files[path] = payload
            self.ns.mtime[path] = int(time.time() * 1000)

    def delete(self, hdfs_path: str, recursive: bool = False, skip_trash: bool = True) -> bool:
        with self.ns.lock:
            path = self._log("DELETE", hdfs_path)
            kind = self._kind(path)
            if kind is None:
                return False
            if kind == "DIRECTORY" and self._children(path) and not recursive:
                raise _err(f"`{path} is non empty': Directory is not empty", "PathIsNotEmptyDirectoryException")
            self._remove_tree(path)
            return True

    def makedirs(self, hdfs_path: str, permission: Any = None) -> None:
        with self.ns.lock:
            path = self._log("MKDIRS", hdfs_path)
            self._mkdirs(path)

    def _rename(self, hdfs_path: str, destination: str, renameoptions: str | None = None, **params: Any) -> _Response:
        """WebHDFS RENAME: without renameoptions HDFS's rename (boolean), with them rename2."""
        with self.ns.lock:
            src = self._log("RENAME", hdfs_path)
            dst = posixpath.normpath(destination)
            if renameoptions is None:
                return _Response({"boolean": self._rename1(src, dst)})
            options = {o.strip() for o in renameoptions.split(",")}
            self._rename2(src, dst, overwrite="OVERWRITE" in options)
            return _Response(None)

    def rename(self, hdfs_src_path: str, hdfs_dst_path: str) -> None:
        if not self._rename(hdfs_src_path, destination=hdfs_dst_path).json()["boolean"]:
            raise _err(f"Unable to rename {hdfs_src_path!r} to {hdfs_dst_path!r}.")

    # ------------------------------------------------------------------ rename rules

    def _rename1(self, src: str, dst: str) -> bool:
        """FileSystem.rename: false on most errors; an existing directory target takes src inside."""
        if self._kind(src) is None or src == "/":
            return False
        if dst == src or dst.startswith(src.rstrip("/") + "/"):
            return dst == src
        if self._kind(dst) == "DIRECTORY":
            dst = posixpath.join(dst, posixpath.basename(src))
        if self._kind(dst) is not None or self._kind(posixpath.dirname(dst)) != "DIRECTORY":
            return False
        self._move_tree(src, dst)
        return True

    def _rename2(self, src: str, dst: str, *, overwrite: bool) -> None:
        """rename2 (Options.Rename NONE / OVERWRITE), as FSDirRenameOp checks it."""
        src_kind = self._kind(src)
        if src_kind is None:
            raise _err(f"rename source {src} is not found.", "FileNotFoundException")
        if dst == src:
            raise _err(f"The source {src} and destination {dst} are the same", "FileAlreadyExistsException")
        if dst.startswith(src.rstrip("/") + "/"):
            raise _err(f"Rename destination {dst} is a directory or file under source {src}", "IOException")
        dst_kind = self._kind(dst)
        if dst_kind is not None:
            if not overwrite:
                raise _err(f"rename destination {dst} already exists", "FileAlreadyExistsException")
            if dst_kind != src_kind:
                raise _err(f"Source {src} and destination {dst} must both be directories", "IOException")
            if dst_kind == "DIRECTORY" and self._children(dst):
                raise _err(f"rename destination directory is not empty: {dst}", "IOException")
        parent = posixpath.dirname(dst)
        if self._kind(parent) is None:
            raise _err(f"rename destination parent {parent} not found.", "FileNotFoundException")
        if self._kind(parent) == "FILE":
            raise _err(f"rename destination parent {parent} is a file.", "ParentNotDirectoryException")
        if dst_kind is not None:
            self._remove_tree(dst)
        self._move_tree(src, dst)


# ---------------------------------------------------------------------- the libhdfs driver's logic


def libhdfs_like_driver(url: str) -> Any:
    """HDFSStore's libhdfs driver object over :class:`LibhdfsLikeHandler` on the fake client.

    For testing that driver's own logic (what it does around pyarrow's move); not libhdfs.
    """
    import pyarrow.fs

    from cerebro.storage.hdfs import _LibHdfsDriver

    return _LibHdfsDriver(pyarrow.fs.PyFileSystem(_libhdfs_like_handler_class()(fake_new_client(url))))


def _libhdfs_like_handler_class() -> type:
    from cerebro.storage._webhdfs import WebHDFSHandler

    class LibhdfsLikeHandler(WebHDFSHandler):
        """Moves as pyarrow's HadoopFileSystem does (arrow/cpp/src/arrow/filesystem/hdfs.cc, ``Move``):
        HDFS's plain rename, which moves ``src`` *into* an existing directory and fails on an
        existing file; if it failed and both are files, delete ``dest`` and rename again."""

        def move(self, src: str, dest: str) -> None:
            if self.client._rename(src, destination=dest).json()["boolean"]:
                return
            if self._kind(src) == "FILE" and self._kind(dest) == "FILE":
                self.client.delete(dest)
                if self.client._rename(src, destination=dest).json()["boolean"]:
                    return
            raise OSError(f"HDFS rename {src!r} -> {dest!r} failed")

        def open_input_stream(self, path: str) -> Any:
            # An HDFS input stream reads the file it opened (DFSInputStream fetches the block
            # list on open), so a whole read sees one version: one request here.
            import pyarrow

            return pyarrow.BufferReader(self.read_whole(path))

        def _kind(self, path: str) -> str | None:
            status = self._status(path)
            return None if status is None else status["type"]

    return LibhdfsLikeHandler
