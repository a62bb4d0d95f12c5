"""The Store interface: where an experiment's data, checkpoints and logs live.

A Store is a small interface in the style of fsspec's ``AbstractFileSystem``:
a handful of required primitives (``read_bytes``, ``write_bytes``, ``exists``,
``listdir``, ``delete``, ``rename``, ``makedirs``, ``file_size``, ``isdir``,
``arrow_filesystem``, ``url``) and helpers derived from them (``read_json``,
``write_json``, ``size``, ``local_path``). Path *naming* lives in the pure
module :mod:`cerebro.storage.layout`; this module only moves bytes.

Paths given to a Store are relative, ``'/'``-separated and resolved under the
store's prefix. ``''`` names the prefix itself. Absolute paths and ``'..'``
components are refused with ``ValueError`` so that nothing an experiment does
can reach outside its store.

Stores are sent to worker processes, so every implementation must be picklable
(plain attributes only: no open handles, no clients; create those lazily).
"""

from __future__ import annotations

import abc
import errno
import importlib
import json
import logging
import os
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cerebro.errors import CerebroError, StoreFullError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow.fs

logger = logging.getLogger(__name__)

# Temporary names used while writing. A name that starts with '.' and contains
# this marker is never returned by ``listdir``: readers that list a directory
# must not see a file or directory that is still being written.
_TEMP_MARKER = ".tmp-"


class StoreFileNotFoundError(CerebroError, FileNotFoundError):
    """A store path that was expected to exist does not.

    Both a :class:`CerebroError` and a :class:`FileNotFoundError`, so callers
    may catch either. Raised by the Store implementations; user code should
    catch ``CerebroError`` (or ``FileNotFoundError``), the public error surface.
    """


class StoreFileExistsError(CerebroError, FileExistsError):
    """A rename target that must not exist does (e.g. a directory another process published)."""


def store_full(store: "Store", path: str, nbytes: int, exc: OSError) -> StoreFullError:
    """The :class:`StoreFullError` for a write of ``nbytes`` to ``path`` that failed with ``exc``."""
    free = ""
    local = store.local_path("")
    if local is not None:
        try:
            st = os.statvfs(local)
            free = f", {st.f_bavail * st.f_frsize} bytes free"
        except OSError:
            pass
    err = StoreFullError(
        f"store {store.url} is full: writing {nbytes} bytes to {path!r} failed ({exc.strerror or exc}{free}). "
        "Nothing half-written was kept; free some space (or move the store) and resume with fit(..., resume=True)."
    )
    err.errno = exc.errno
    return err


#: errno values that mean "no room": a full file system or an exhausted quota.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class _UnknownStoreSchemeError(CerebroError, ValueError):
    """``Store.create`` got a URL scheme no Store implementation is registered for."""


# Lazy scheme registry for Store.create: scheme -> (module, class, what to install if the
# import fails). Modules are imported on first use only.
_STORE_REGISTRY: dict[str, tuple[str, str, str]] = {
    "file": ("cerebro.storage.local", "LocalStore", ""),
    "hdfs": ("cerebro.storage.hdfs", "HDFSStore", "pip install 'cerebro-mop[hdfs]'"),
}


def is_temp_name(name: str) -> bool:
    """Whether a child name is an in-progress temporary (hidden from ``listdir``)."""
    return name.startswith(".") and _TEMP_MARKER in name


def temp_sibling(path: str) -> str:
    """A unique temporary path next to ``path`` (same directory, so a rename is atomic).

    Pure; never touches the store. Used by ``write_bytes`` implementations.
    """
    parent, _, name = path.rpartition("/")
    tmp = f".{name}{_TEMP_MARKER}{uuid.uuid4().hex}"
    return f"{parent}/{tmp}" if parent else tmp


def normalize_path(path: str, *, allow_root: bool = True) -> str:
    """Validate and normalise a store-relative path; return it without '.' or empty parts.

    Raises ``ValueError`` for absolute paths, ``'..'`` components, NUL bytes,
    non-strings, and (unless ``allow_root``) for the store root ``''``.
    Pure and idempotent.
    """
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise ValueError(f"store paths must be str, got {type(path).__name__}: {path!r}")
    if "\x00" in path:
        raise ValueError(f"store path {path!r} contains a NUL byte")
    if path.startswith("/") or path.startswith("\\") or (len(path) > 1 and path[1] == ":"):
        raise ValueError(
            f"store path {path!r} is absolute; store paths are relative to the store's prefix, "
            "e.g. 'experiments/my-exp/journal.jsonl'"
        )
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"store path {path!r} contains '..'; paths may not escape the store's prefix")
    norm = "/".join(parts)
    if not norm and not allow_root:
        raise ValueError(
            f"store path {path!r} names the store's root; this operation needs a file or directory under it"
        )
    return norm


class Store(abc.ABC):
    """Where an experiment's data, checkpoints and logs live.

    Paths are relative, '/'-separated, under the store's prefix.

    Implementations provide the abstract primitives; everything else is derived.
    All methods may block on I/O; none of them retries. Every method is safe to
    call concurrently from several processes on the same store, within the
    guarantees stated per method (atomic ``write_bytes`` and ``rename``).
    """

    # ------------------------------------------------------------------ required

    @abc.abstractmethod
    def read_bytes(self, path: str) -> bytes:
        """Return the whole content of the file at ``path``.

        Raises a ``CerebroError`` that is also a ``FileNotFoundError`` naming
        the path when it does not exist.
        """

    @abc.abstractmethod
    def write_bytes(self, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` atomically, replacing any existing file.

        Implementations write to a unique temporary name in the same directory
        (:func:`temp_sibling`), flush and fsync it, then rename it over the
        target, so a reader sees either the old content or the new, never a
        partial file. Parent directories are created. Idempotent for equal data.
        """

    @abc.abstractmethod
    def exists(self, path: str) -> bool:
        """Whether a file or directory exists at ``path`` (``''``: the root)."""

    @abc.abstractmethod
    def listdir(self, path: str) -> list[str]:
        """Child names of the directory ``path``, sorted; ``[]`` if it is missing or a file.

        In-progress temporary entries (see :func:`is_temp_name`) are left out.
        """

    @abc.abstractmethod
    def delete(self, path: str) -> None:
        """Delete the file or directory (recursively) at ``path``; a missing path is fine.

        Idempotent. Refuses the store root.
        """

    @abc.abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Move ``src`` (a file or a directory) to ``dst`` atomically.

        Used to publish a whole directory that was written under a temporary
        name. A file ``dst`` is replaced. If ``dst`` is an existing directory,
        raises a ``CerebroError`` that is also a ``FileExistsError`` and leaves
        both paths as they were: the caller lost a publish race. A missing
        ``src`` raises the not-found error. Parent directories of ``dst`` are
        created.
        """

    @abc.abstractmethod
    def makedirs(self, path: str) -> None:
        """Create the directory ``path`` and its parents; existing is fine."""

    @abc.abstractmethod
    def file_size(self, path: str) -> int:
        """Size in bytes of the file at ``path``; the not-found error if missing."""

    @abc.abstractmethod
    def isdir(self, path: str) -> bool:
        """Whether ``path`` is an existing directory."""

    @abc.abstractmethod
    def arrow_filesystem(self) -> tuple["pyarrow.fs.FileSystem", str]:
        """A pyarrow file system and the absolute root path of this store on it.

        For ``pyarrow.parquet`` reads and writes: the store path ``p`` is
        ``root + '/' + p`` on ``fs``. Implementations import pyarrow lazily.
        """

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """The store's prefix as a URL, e.g. ``'file:///abs/path'``."""

    # ------------------------------------------------------------------ derived

    def check_writable(self) -> None:
        """Write, then delete, a small hidden probe file at the store's root; CerebroError
        naming the store when that fails (a read-only mount, no permission, no space), so a run
        is refused before any work instead of dying on its first write with a bare OSError."""
        probe = temp_sibling("write-probe")
        try:
            self.write_bytes(probe, b"cerebro write probe\n")
            self.delete(probe)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise CerebroError(
                f"the store {self.url} is not writable ({type(exc).__name__}: {reason}); cerebro writes its "
                "prepared data, checkpoints, journal and logs there: give a store it can write"
            ) from exc

    def read_json(self, path: str) -> Any:
        """Parse the JSON file at ``path``. Raises ``CerebroError`` naming the path on bad JSON."""
        raw = self.read_bytes(path)
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CerebroError(f"store file {path!r} in {self.url} is not valid JSON: {exc}") from exc

    def write_json(self, path: str, obj: Any) -> None:
        """Write ``obj`` as JSON (sorted keys, indent=1) atomically to ``path``.

        The output is deterministic for equal objects, so concurrent writers of
        the same object are harmless.
        """
        text = json.dumps(obj, sort_keys=True, indent=1, allow_nan=False)
        self.write_bytes(path, (text + "\n").encode("utf-8"))

    def size(self, path: str = "") -> int:
        """Total bytes of the files under ``path`` (or of the file itself); 0 if missing.

        The default walks ``listdir``/``isdir``/``file_size``; implementations
        may override it with something faster. Temporary entries are not counted.
        """
        path = normalize_path(path)
        if not self.exists(path):
            return 0
        if not self.isdir(path):
            return self.file_size(path)
        total = 0
        for name in self.listdir(path):
            child = f"{path}/{name}" if path else name
            try:
                total += self.size(child)
            except FileNotFoundError:
                # Deleted while we walked: it no longer counts.
                pass
        return total

    def local_path(self, path: str = "") -> str | None:
        """Absolute local file-system path of ``path`` when the store is local, else ``None``."""
        normalize_path(path)
        return None

    def create_exclusive(self, path: str, data: bytes) -> bool:
        """Create ``path`` holding ``data`` only if it does not exist; True if this call created it.

        Used for the experiment lock.  This default is check-then-write (racy); stores whose
        file system offers an exclusive create override it.
        """
        if self.exists(path):
            return False
        self.write_bytes(path, data)
        return True

    def append_bytes(self, path: str, data: bytes) -> None:
        """Append ``data`` to ``path`` durably (the journal).  This default rewrites the file
        atomically (correct, O(size)); stores with an append primitive override it."""
        old = self.read_bytes(path) if self.exists(path) else b""
        self.write_bytes(path, old + data)

    # ------------------------------------------------------------------ factory

    @staticmethod
    def create(url_or_path: str | os.PathLike[str]) -> "Store":
        """Build the Store implementation for a URL or a plain path.

        ``'file:///x'`` or a bare path gives a :class:`~cerebro.storage.local.LocalStore`,
        ``'hdfs://namenode:port/path'`` an :class:`~cerebro.storage.hdfs.HDFSStore` (no
        connection is made until first use). The implementation comes from a lazy scheme
        registry (fsspec-style): its module is imported only now, so one store's optional
        dependencies never break another, and an ``ImportError`` becomes a
        ``CerebroError`` naming what to install. An unknown scheme raises a
        ``CerebroError`` (also a ``ValueError``) naming it and the known ones. A Store is
        returned as is.
        """
        if isinstance(url_or_path, Store):
            return url_or_path
        if isinstance(url_or_path, os.PathLike):
            url_or_path = os.fspath(url_or_path)
        if not isinstance(url_or_path, str):
            raise TypeError(
                f"Store.create() takes a URL or a path (str or os.PathLike), got {type(url_or_path).__name__}"
            )
        if not url_or_path.strip():
            raise ValueError("Store.create() got an empty URL; pass a directory path or a 'file://' URL")
        scheme = urlsplit(url_or_path).scheme.lower()
        # A one-letter "scheme" is a Windows drive letter, i.e. a plain path.
        if scheme == "" or len(scheme) == 1:
            scheme = "file"
        entry = _STORE_REGISTRY.get(scheme)
        if entry is None:
            known = ", ".join(f"'{s}://'" for s in _STORE_REGISTRY)
            raise _UnknownStoreSchemeError(
                f"unsupported store URL scheme {scheme!r} in {url_or_path!r}; known schemes: {known} "
                "(a plain path means 'file://')"
            )
        module_name, class_name, install = entry
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise CerebroError(
                f"store URL {url_or_path!r} needs {class_name}, which could not be imported ({exc}); "
                f"to install what it needs: {install or 'reinstall cerebro-mop'}"
            ) from exc
        return getattr(module, class_name)(url_or_path)

    # ------------------------------------------------------------------ misc

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.url == other.url  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.url))
