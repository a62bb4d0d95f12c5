"""HDFSStore: a Store under an ``hdfs://namenode:port/path`` prefix.

Two drivers move the bytes:

``libhdfs``
    pyarrow's :class:`pyarrow.fs.HadoopFileSystem` (the JNI ``libhdfs`` library and a JVM).
    Needs ``JAVA_HOME``, ``HADOOP_HOME``, ``CLASSPATH`` holding the Hadoop jars
    (``export CLASSPATH=$("$HADOOP_HOME/bin/hdfs" classpath --glob)``) and ``libhdfs.so``
    (found under ``$HADOOP_HOME/lib/native`` or ``$ARROW_LIBHDFS_DIR``).
``webhdfs``
    The ``hdfs`` package's WebHDFS REST client (``pip install 'cerebro-mop[hdfs]'``), wrapped
    for pyarrow by :class:`cerebro.storage._webhdfs.WebHDFSHandler`. Talks HTTP to the
    NameNode (``webhdfs_url``, default ``http://<namenode-host>:9870``; Hadoop 2 used 50070).

``driver="auto"`` takes libhdfs when it loads and connects, else WebHDFS, else raises a
:class:`~cerebro.errors.CerebroError` that names what to install or configure.

Guarantees per driver (the Store contract asks for atomic ``write_bytes`` and ``rename``):

=====================  ===========================================  ==========================================
operation              webhdfs                                      libhdfs
=====================  ===========================================  ==========================================
write_bytes replace    atomic: temp file, then ``RENAME`` with      temp file, then pyarrow's move, which for
                       ``renameoptions=OVERWRITE`` (HDFS rename2)   an existing target deletes it and renames:
                                                                    never a partial file, but for a moment no
                                                                    file (``read_bytes`` retries that window)
rename (publish dir)   atomic first-wins: ``renameoptions=NONE``    check, then rename; a directory created by
                                                                    another process in between is detected and
                                                                    reported as a lost race
create_exclusive       atomic: temp file, then rename2 ``NONE``     best effort: check, rename, read back;
                       (fails if the target exists)                 pyarrow exposes no exclusive create, so two
                                                                    processes racing within one NameNode round
                                                                    trip can both win
append_bytes           WebHDFS ``APPEND``                           ``FileSystem.append`` (open_append_stream)
=====================  ===========================================  ==========================================

"Durable" on HDFS means acknowledged by every DataNode of the write pipeline when the file
(or the append) is closed; neither driver can ask for ``hsync`` to disk.

The store is created without any I/O and pickles with plain attributes only (it is sent to
worker processes and Spark executors); each process picks and connects its driver on first
use and creates the prefix directory then.
"""

from __future__ import annotations

import importlib
import logging
import os
import posixpath
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from cerebro._checks import check_choice, check_int
from cerebro.errors import CerebroError
from cerebro.storage.base import (
    Store,
    StoreFileExistsError,
    StoreFileNotFoundError,
    is_temp_name,
    normalize_path,
    temp_sibling,
)
from cerebro.storage.hdfs_driver import HDFSDriver
from cerebro.storage.legacy import hdfs_prefix, ignore_extra_conf, ignore_layout_arguments

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow.fs

logger = logging.getLogger(__name__)

DRIVERS = ("auto", "libhdfs", "webhdfs")
DEFAULT_WEBHDFS_PORT = 9870

INSTALL_HINT = (
    "install the WebHDFS client with `pip install 'cerebro-mop[hdfs]'`, or set up libhdfs for pyarrow: "
    "JAVA_HOME, HADOOP_HOME, CLASSPATH=$(\"$HADOOP_HOME/bin/hdfs\" classpath --glob) and, if libhdfs.so "
    "is not under $HADOOP_HOME/lib/native, ARROW_LIBHDFS_DIR"
)

# libhdfs replaces an existing file by delete + rename: a reader may find no file for that
# moment. read_bytes/file_size retry a not-found this many times before believing it.
_LIBHDFS_MISSING_RETRIES = (0.01, 0.03, 0.1)


def parse_hdfs_url(url: object, *, owner: str = "HDFSStore", param: str = "prefix_path") -> tuple[str, int | None, str]:
    """Split ``hdfs://host[:port]/abs/path`` into ``(host, port or None, '/abs/path')``.

    Pure. The path is normalised (no '.', empty or trailing components); ``'..'``, the
    file-system root, a user, query or fragment, and a missing host are refused with a
    ``ValueError`` that names the parameter and shows a valid example.
    """
    example = "e.g. 'hdfs://namenode:8020/user/me/cerebro'"

    def bad(why: str) -> ValueError:
        return ValueError(
            f"The {param!r} parameter of {owner} must be an hdfs://host:port/path URL ({why}; {example}). "
            f"Got {url!r} instead."
        )

    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str):
        raise TypeError(
            f"The {param!r} parameter of {owner} must be an hdfs://host:port/path URL (a str). "
            f"Got {type(url).__name__} {url!r} instead."
        )
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != "hdfs":
        raise bad(f"scheme {parts.scheme!r} is not 'hdfs'" if parts.scheme else "no 'hdfs://' scheme")
    if not parts.netloc or not parts.hostname:
        raise bad("the namenode host is missing")
    if "@" in parts.netloc:
        raise bad("a user in the URL is not supported, pass user='...' instead")
    if parts.query or parts.fragment:
        raise bad("a query or fragment is not supported")
    try:
        port = parts.port
    except ValueError:
        raise bad("the port is not a number from 1 to 65535") from None
    if port == 0:
        raise bad("the port is not a number from 1 to 65535")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise bad("the path after the host is missing")
    if "\x00" in path:
        raise bad("the path contains a NUL byte")
    comps = [c for c in path.split("/") if c not in ("", ".")]
    if ".." in comps:
        raise bad("the path contains '..'")
    if not comps:
        raise bad("the path names the file system's root; use a directory under it")
    return parts.hostname, port, "/" + "/".join(comps)


def _check_webhdfs_url(value: object) -> str:
    """Validate ``webhdfs_url``: one or more ``http(s)://host[:port]`` URLs separated by ';' (HA)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            "The 'webhdfs_url' parameter of HDFSStore must be an http(s)://host:port URL of the NameNode's "
            f"WebHDFS endpoint (several separated by ';' for HA), e.g. 'http://namenode:9870'. Got {value!r} instead."
        )
    for one in value.split(";"):
        parts = urlsplit(one.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(
                "The 'webhdfs_url' parameter of HDFSStore must be an http(s)://host:port URL of the NameNode's "
                f"WebHDFS endpoint (several separated by ';' for HA), e.g. 'http://namenode:9870'. Got {value!r} instead."
            )
    return value.strip()


class _LibHdfsDriver(HDFSDriver):
    """pyarrow's HadoopFileSystem. See the module docstring for what is (not) atomic."""

    name = "libhdfs"

    def _type(self, path: str) -> Any:
        return self.fs.get_file_info(path).type

    def replace_file(self, src: str, dst: str) -> None:
        import pyarrow.fs

        # HDFS's rename moves a file *into* an existing directory: refuse that first.
        if self._type(dst) == pyarrow.fs.FileType.Directory:
            raise IsADirectoryError(f"cannot replace {dst!r}: it is a directory")
        # pyarrow: rename; if the target is a file, delete it and rename again.
        self.fs.move(src, dst)

    def rename_noreplace(self, src: str, dst: str) -> None:
        import pyarrow.fs

        if self._type(dst) != pyarrow.fs.FileType.NotFound:
            raise FileExistsError(f"{dst!r} exists")
        nested = posixpath.join(dst, posixpath.basename(src))
        src_is_dir = self._type(src) == pyarrow.fs.FileType.Directory
        had_nested = src_is_dir and self._type(posixpath.join(src, posixpath.basename(src))) != pyarrow.fs.FileType.NotFound
        self.fs.move(src, dst)
        if src_is_dir and not had_nested and self._type(nested) != pyarrow.fs.FileType.NotFound:
            # Another process created dst between our check and the rename, and HDFS moved
            # src inside it: put it back and report the lost race.
            self.fs.move(nested, src)
            raise FileExistsError(f"{dst!r} was created by another process during the rename")


class HDFSStore(Store):
    """A Store under ``hdfs://namenode:port/path``, shared by every worker of a cluster.

    Parameters (validated now, nothing is contacted until first use):

    - ``prefix_path``: ``hdfs://host[:port]/abs/path``. Without a port, libhdfs uses the
      cluster configuration (e.g. an HA nameservice).
    - ``user``: the HDFS user; default: libhdfs's login user, or ``$HADOOP_USER_NAME`` /
      the local user for WebHDFS.
    - ``kerb_ticket``: path of a Kerberos ticket cache (libhdfs; for WebHDFS it is exported
      as ``KRB5CCNAME`` and the ``requests-kerberos`` package is needed).
    - ``webhdfs_url``: WebHDFS endpoint(s), default ``http://<host>:9870``.
    - ``replication``: block replication of the files this store writes (default: the
      cluster's).
    - ``driver``: ``"auto"``, ``"libhdfs"`` or ``"webhdfs"``.
    - The original Cerebro's ``host`` and ``port`` complete a ``prefix_path`` given as
      ``hdfs:///path`` or ``/path``; its ``train_path``, ``val_path``, ``runs_path``, ``temp_dir``
      and ``extra_conf`` are accepted with a warning that they have no effect
      (docs/migrating.md).

    Store paths follow :func:`~cerebro.storage.base.normalize_path`, as in LocalStore.
    """

    def __init__(
        self,
        prefix_path: str,
        *,
        user: str | None = None,
        kerb_ticket: str | os.PathLike[str] | None = None,
        webhdfs_url: str | None = None,
        replication: int | None = None,
        driver: str = "auto",
        host: str | None = None,
        port: int | None = None,
        train_path: str | None = None,
        val_path: str | None = None,
        runs_path: str | None = None,
        temp_dir: str | None = None,
        extra_conf: dict | None = None,
    ) -> None:
        host, port, root = parse_hdfs_url(hdfs_prefix(prefix_path, host, port))
        ignore_layout_arguments("HDFSStore", 2, train_path=train_path, val_path=val_path,
                                runs_path=runs_path, temp_dir=temp_dir)
        ignore_extra_conf(extra_conf, 2)
        if user is not None and (not isinstance(user, str) or not user.strip()):
            raise ValueError(f"The 'user' parameter of HDFSStore must be a non-empty str or None. Got {user!r} instead.")
        if kerb_ticket is not None:
            if isinstance(kerb_ticket, os.PathLike):
                kerb_ticket = os.fspath(kerb_ticket)
            if not isinstance(kerb_ticket, str) or not kerb_ticket:
                raise ValueError(
                    "The 'kerb_ticket' parameter of HDFSStore must be the path of a Kerberos ticket cache or None. "
                    f"Got {kerb_ticket!r} instead."
                )
        if webhdfs_url is not None:
            webhdfs_url = _check_webhdfs_url(webhdfs_url)
        if replication is not None:
            replication = check_int("HDFSStore", "replication", replication, minimum=1, expected="an int >= 1 or None")
        check_choice("HDFSStore", "driver", driver, DRIVERS)
        self._host = host
        self._port = port
        self._root = root
        self._user = user
        self._kerb_ticket = kerb_ticket
        self._webhdfs_url = webhdfs_url or f"http://{host}:{DEFAULT_WEBHDFS_PORT}"
        self._replication = replication
        self._driver_choice = driver
        self._impl: HDFSDriver | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ pickling

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_impl"] = None  # connections stay in the process that made them
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        netloc = self._host if self._port is None else f"{self._host}:{self._port}"
        return f"hdfs://{netloc}{self._root}"

    @property
    def root(self) -> str:
        """The absolute HDFS path of the prefix."""
        return self._root

    @property
    def driver(self) -> str:
        """The driver asked for: ``'auto'``, ``'libhdfs'`` or ``'webhdfs'``."""
        return self._driver_choice

    @property
    def webhdfs_url(self) -> str:
        """The WebHDFS endpoint the ``webhdfs`` driver talks to."""
        return self._webhdfs_url

    # ------------------------------------------------------------------ drivers

    def connect(self) -> str:
        """Pick and connect this process's driver now (otherwise done on first use).

        Returns the driver's name (``'libhdfs'`` or ``'webhdfs'``); raises the
        ``CerebroError`` that names what to install or configure when none is available.
        """
        return self._d().name

    def _d(self) -> HDFSDriver:
        impl = self._impl
        if impl is not None:
            return impl
        with self._lock:
            if self._impl is None:
                impl = self._open_driver()
                impl.fs.create_dir(self._root, recursive=True)
                self._impl = impl
            return self._impl

    def _open_driver(self) -> HDFSDriver:
        choice = self._driver_choice
        problems: list[str] = []
        if choice in ("auto", "libhdfs"):
            try:
                return self._open_libhdfs()
            except CerebroError as exc:
                if choice == "libhdfs":
                    raise
                problems.append(str(exc))
                logger.info("HDFSStore %s: libhdfs driver unavailable, trying WebHDFS: %s", self.url, exc)
        try:
            return self._open_webhdfs()
        except CerebroError as exc:
            if choice == "webhdfs":
                raise
            problems.append(str(exc))
        raise CerebroError(
            f"HDFSStore {self.url}: no HDFS driver is available in this process. "
            + " ".join(problems)
            + f" To fix: {INSTALL_HINT}."
        )

    def _open_libhdfs(self) -> HDFSDriver:
        import pyarrow.fs
        import pyarrow.lib

        if not pyarrow.lib.have_libhdfs():
            raise CerebroError(
                f"HDFSStore {self.url}: the 'libhdfs' driver cannot load libhdfs.so and libjvm.so "
                f"(JAVA_HOME={os.environ.get('JAVA_HOME')!r}, HADOOP_HOME={os.environ.get('HADOOP_HOME')!r}, "
                f"ARROW_LIBHDFS_DIR={os.environ.get('ARROW_LIBHDFS_DIR')!r}). Set JAVA_HOME, HADOOP_HOME, "
                "CLASSPATH=$(\"$HADOOP_HOME/bin/hdfs\" classpath --glob) and, if libhdfs.so is elsewhere, "
                "ARROW_LIBHDFS_DIR; or use driver='webhdfs' after `pip install 'cerebro-mop[hdfs]'`."
            )
        kwargs: dict[str, Any] = {"user": self._user, "kerb_ticket": self._kerb_ticket}
        if self._replication is not None:
            kwargs["replication"] = self._replication
        try:
            fs = pyarrow.fs.HadoopFileSystem(self._host, self._port or 0, **kwargs)
        except Exception as exc:  # a JVM/CLASSPATH problem or an unreachable NameNode
            raise CerebroError(
                f"HDFSStore {self.url}: libhdfs loaded but could not connect to {self._host}:{self._port or 0} "
                f"({type(exc).__name__}: {exc}). Check CLASSPATH (the Hadoop jars) and the NameNode address."
            ) from exc
        logger.debug("HDFSStore %s: using libhdfs", self.url)
        return _LibHdfsDriver(fs)

    def _open_webhdfs(self) -> HDFSDriver:
        try:
            importlib.import_module("hdfs")  # the optional WebHDFS client
        except ImportError as exc:
            raise CerebroError(
                f"HDFSStore {self.url}: the 'webhdfs' driver needs the 'hdfs' package "
                f"(`pip install 'cerebro-mop[hdfs]'`): {exc}"
            ) from exc
        from cerebro.storage import _webhdfs

        client = _webhdfs.new_client(self._webhdfs_url, user=self._user, kerb_ticket=self._kerb_ticket)
        logger.debug("HDFSStore %s: using WebHDFS at %s", self.url, self._webhdfs_url)
        return _webhdfs.WebHDFSDriver(client, replication=self._replication)

    # ------------------------------------------------------------------ helpers

    def _abs(self, path: str, *, allow_root: bool = True) -> str:
        norm = normalize_path(path, allow_root=allow_root)
        return f"{self._root}/{norm}" if norm else self._root

    def _not_found(self, path: str) -> StoreFileNotFoundError:
        return StoreFileNotFoundError(f"no such file or directory in store {self.url}: {path!r}")

    def _type(self, full: str) -> Any:
        return self._d().fs.get_file_info(full).type

    def _retrying_missing(self, path: str, full: str, op: Any) -> Any:
        """Run ``op()``; map a missing file to the store's not-found error.

        With libhdfs a replaced file is missing for a moment, so a not-found is retried
        briefly before it is believed.
        """
        import pyarrow.fs

        d = self._d()
        waits = () if d.atomic_replace else _LIBHDFS_MISSING_RETRIES
        for wait in (*waits, None):
            try:
                return op()
            except OSError as exc:
                kind = self._type(full)
                if kind == pyarrow.fs.FileType.Directory:
                    raise CerebroError(f"store path {path!r} in {self.url} is a directory, not a file") from None
                if wait is None:
                    if kind == pyarrow.fs.FileType.NotFound:
                        raise self._not_found(path) from exc
                    raise
                if kind == pyarrow.fs.FileType.NotFound:
                    time.sleep(wait)
                # else: a file again (it was being replaced): retry at once
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ required

    def read_bytes(self, path: str) -> bytes:
        full = self._abs(path, allow_root=False)

        return self._retrying_missing(path, full, lambda: self._d().read_file(full))

    def write_bytes(self, path: str, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"write_bytes() needs bytes, got {type(data).__name__}")
        norm = normalize_path(path, allow_root=False)
        full, tmp = self._abs(norm), self._abs(temp_sibling(norm))
        d = self._d()
        try:
            self._write_new(tmp, data)
            d.replace_file(tmp, full)
        except BaseException:
            self._discard(tmp)
            raise

    def _write_new(self, full: str, data: bytes) -> None:
        """Write a file that nobody else names (a temporary); HDFS creates the parents."""
        with self._d().fs.open_output_stream(full) as f:
            f.write(data)

    def _discard(self, full: str) -> None:
        try:
            self._d().fs.delete_file(full)
        except Exception:  # best effort: it may never have been created
            logger.debug("could not remove temporary %s", full, exc_info=True)

    def exists(self, path: str) -> bool:
        import pyarrow.fs

        return self._type(self._abs(path)) != pyarrow.fs.FileType.NotFound

    def isdir(self, path: str) -> bool:
        import pyarrow.fs

        return self._type(self._abs(path)) == pyarrow.fs.FileType.Directory

    def listdir(self, path: str) -> list[str]:
        import pyarrow.fs

        full = self._abs(path)
        fs = self._d().fs
        try:
            infos = fs.get_file_info(pyarrow.fs.FileSelector(full, allow_not_found=True, recursive=False))
        except OSError:
            if self._type(full) != pyarrow.fs.FileType.Directory:
                return []  # a file, or gone meanwhile
            raise
        return sorted(i.base_name for i in infos if not is_temp_name(i.base_name))

    def delete(self, path: str) -> None:
        import pyarrow.fs

        full = self._abs(path, allow_root=False)
        fs = self._d().fs
        kind = self._type(full)
        try:
            if kind == pyarrow.fs.FileType.Directory:
                fs.delete_dir(full)
            elif kind != pyarrow.fs.FileType.NotFound:
                fs.delete_file(full)
        except OSError:
            if self._type(full) != pyarrow.fs.FileType.NotFound:
                raise
            # removed concurrently: deletion is idempotent

    def rename(self, src: str, dst: str) -> None:
        import pyarrow.fs

        src_full = self._abs(src, allow_root=False)
        dst_full = self._abs(dst, allow_root=False)
        d = self._d()
        src_kind = self._type(src_full)
        if src_kind == pyarrow.fs.FileType.NotFound:
            raise self._not_found(src)
        dst_kind = self._type(dst_full)
        if dst_kind == pyarrow.fs.FileType.Directory:
            raise StoreFileExistsError(f"cannot rename {src!r} to {dst!r} in {self.url}: the target directory exists")
        d.fs.create_dir(posixpath.dirname(dst_full), recursive=True)
        try:
            if dst_kind == pyarrow.fs.FileType.File and src_kind == pyarrow.fs.FileType.File:
                d.replace_file(src_full, dst_full)
                return
            if dst_kind == pyarrow.fs.FileType.File:
                d.fs.delete_file(dst_full)  # a directory over a file: rare, not atomic
            d.rename_noreplace(src_full, dst_full)
        except FileExistsError as exc:
            raise StoreFileExistsError(
                f"cannot rename {src!r} to {dst!r} in {self.url}: the target exists (another process published it)"
            ) from exc
        except FileNotFoundError:
            if self._type(src_full) == pyarrow.fs.FileType.NotFound:
                raise self._not_found(src) from None
            raise

    def makedirs(self, path: str) -> None:
        full = self._abs(path)
        self._d().fs.create_dir(full, recursive=True)

    def file_size(self, path: str) -> int:
        import pyarrow.fs

        full = self._abs(path, allow_root=False)

        def op() -> int:
            info = self._d().fs.get_file_info(full)
            if info.type == pyarrow.fs.FileType.NotFound:
                raise FileNotFoundError(full)
            if info.type == pyarrow.fs.FileType.Directory:
                raise IsADirectoryError(full)
            return int(info.size)

        return self._retrying_missing(path, full, op)

    def arrow_filesystem(self) -> tuple["pyarrow.fs.FileSystem", str]:
        return self._d().fs, self._root

    # ------------------------------------------------------------------ overrides

    def create_exclusive(self, path: str, data: bytes) -> bool:
        """Create ``path`` with ``data`` unless it exists; True if this call created it.

        The content is written to a temporary first, so a reader never sees a partial file.
        WebHDFS: atomic (HDFS rename2 without overwrite). libhdfs: best effort (check,
        rename, read back): see the module docstring.
        """
        norm = normalize_path(path, allow_root=False)
        full, tmp = self._abs(norm), self._abs(temp_sibling(norm))
        d = self._d()
        if self.exists(norm):
            return False
        try:
            self._write_new(tmp, data)
            d.rename_noreplace(tmp, full)
        except FileExistsError:
            self._discard(tmp)
            return False
        except BaseException:
            self._discard(tmp)
            raise
        if not d.atomic_noreplace:
            try:
                return self.read_bytes(norm) == bytes(data)
            except FileNotFoundError:
                return False
        return True

    def append_bytes(self, path: str, data: bytes) -> None:
        """Append ``data`` to ``path`` with HDFS's append (one round trip, not a rewrite).

        A missing file is created (via :meth:`create_exclusive`, so two first appenders do
        not clobber each other). The data is durable when this returns (see the module
        docstring). HDFS allows one writer per file at a time, as the journal has.
        """
        norm = normalize_path(path, allow_root=False)
        if not self.exists(norm) and self.create_exclusive(norm, data):
            return
        self._d().append(self._abs(norm), bytes(data))

    # ------------------------------------------------------------------ derived, faster

    def size(self, path: str = "") -> int:
        """Total bytes under ``path`` from one recursive listing; temporaries not counted."""
        import pyarrow.fs

        full = self._abs(path)
        fs = self._d().fs
        info = fs.get_file_info(full)
        if info.type == pyarrow.fs.FileType.NotFound:
            return 0
        if info.type != pyarrow.fs.FileType.Directory:
            return int(info.size or 0)
        total = 0
        for child in fs.get_file_info(pyarrow.fs.FileSelector(full, allow_not_found=True, recursive=True)):
            if child.type != pyarrow.fs.FileType.File:
                continue
            rel = posixpath.relpath(_strip_authority(child.path), full)
            if any(is_temp_name(part) for part in rel.split("/")):
                continue
            total += int(child.size or 0)
        return total


def _strip_authority(path: str) -> str:
    """``hdfs://nn:8020/a/b`` -> ``/a/b`` (some listings return full URIs); other paths unchanged."""
    if "://" in path:
        return urlsplit(path).path
    return path
