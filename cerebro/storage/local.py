"""LocalStore: a Store on a local directory or a shared mount (NFS)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from cerebro.errors import CerebroError
from cerebro.storage.base import (
    NO_SPACE_ERRNOS,
    Store,
    StoreFileExistsError,
    StoreFileNotFoundError,
    is_temp_name,
    normalize_path,
    store_full,
    temp_sibling,
)
from cerebro.storage.legacy import ignore_layout_arguments

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow.fs

logger = logging.getLogger(__name__)


def _fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable. Best effort: some file systems refuse to fsync a directory."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LocalStore(Store):
    """A Store under a local directory or an NFS mount shared by all workers.

    ``prefix_path`` is a path or a ``file://`` URL; relative paths and ``~`` are
    resolved now, so the store means the same directory in every worker process.
    The directory is created if missing. Picklable: the only attribute is the
    absolute root path.

    ``train_path``, ``val_path``, ``runs_path`` and ``temp_dir`` are the original Cerebro's
    arguments, accepted so that its scripts run: everything is kept under ``prefix_path`` here,
    so each one given warns that it has no effect (docs/migrating.md).
    """

    def __init__(self, prefix_path: str | os.PathLike[str], *, train_path: str | None = None,
                 val_path: str | None = None, runs_path: str | None = None, temp_dir: str | None = None) -> None:
        ignore_layout_arguments("LocalStore", 2, train_path=train_path, val_path=val_path,
                                runs_path=runs_path, temp_dir=temp_dir)
        if isinstance(prefix_path, os.PathLike):
            prefix_path = os.fspath(prefix_path)
        if not isinstance(prefix_path, str):
            raise TypeError(
                f"LocalStore(prefix_path) takes a directory path or a 'file://' URL, got {type(prefix_path).__name__}"
            )
        if not prefix_path.strip():
            raise ValueError("LocalStore(prefix_path) got an empty path; pass a directory, e.g. './cerebro_store'")
        path = prefix_path
        if prefix_path.lower().startswith("file:"):
            parts = urlsplit(prefix_path)
            if parts.netloc not in ("", "localhost"):
                raise ValueError(
                    f"LocalStore cannot use {prefix_path!r}: a 'file://' URL must name a local path "
                    "(file:///abs/path), not a host"
                )
            path = unquote(parts.path)
            if not path:
                raise ValueError(f"LocalStore got a 'file://' URL without a path: {prefix_path!r}")
        root = os.path.abspath(os.path.expanduser(path))
        if os.path.exists(root) and not os.path.isdir(root):
            raise ValueError(f"LocalStore prefix {root!r} exists and is not a directory")
        os.makedirs(root, exist_ok=True)
        self._root = root

    # ------------------------------------------------------------------ helpers

    @property
    def root(self) -> str:
        """The absolute local directory of this store."""
        return self._root

    def _abs(self, path: str, *, allow_root: bool = True) -> str:
        norm = normalize_path(path, allow_root=allow_root)
        return os.path.join(self._root, *norm.split("/")) if norm else self._root

    def _not_found(self, path: str) -> StoreFileNotFoundError:
        return StoreFileNotFoundError(f"no such file or directory in store {self.url}: {path!r}")

    # ------------------------------------------------------------------ required

    def read_bytes(self, path: str) -> bytes:
        full = self._abs(path, allow_root=False)
        try:
            with open(full, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise self._not_found(path) from None
        except IsADirectoryError:
            raise CerebroError(f"store path {path!r} in {self.url} is a directory, not a file") from None

    def write_bytes(self, path: str, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"write_bytes() needs bytes, got {type(data).__name__}")
        norm = normalize_path(path, allow_root=False)
        full = self._abs(norm)
        tmp = self._abs(temp_sibling(norm))
        parent = os.path.dirname(full)
        try:
            os.makedirs(parent, exist_ok=True)
            # 'xb': the temp name is unique, so an existing file would mean a bug; never clobber.
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, full)
        except BaseException as exc:
            try:
                os.remove(tmp)
            except OSError:
                pass
            if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
                raise store_full(self, norm, len(data), exc) from exc
            raise
        _fsync_dir(parent)

    def exists(self, path: str) -> bool:
        return os.path.exists(self._abs(path))

    def create_exclusive(self, path: str, data: bytes) -> bool:
        full = self._abs(normalize_path(path, allow_root=False))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        try:
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(os.path.dirname(full))
        return True

    def append_bytes(self, path: str, data: bytes) -> None:
        norm = normalize_path(path, allow_root=False)
        full = self._abs(norm)
        try:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            fd = os.open(full, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                start = os.lseek(fd, 0, os.SEEK_END)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                except OSError:
                    # Cut a partial append back off: the file ends where it did (a whole record).
                    os.ftruncate(fd, start)
                    raise
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno in NO_SPACE_ERRNOS:
                raise store_full(self, norm, len(data), exc) from exc
            raise

    def listdir(self, path: str) -> list[str]:
        try:
            names = os.listdir(self._abs(path))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(n for n in names if not is_temp_name(n))

    def delete(self, path: str) -> None:
        full = self._abs(path, allow_root=False)
        try:
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.remove(full)
        except FileNotFoundError:
            # Missing (or removed concurrently): deletion is idempotent.
            pass

    def rename(self, src: str, dst: str) -> None:
        src_full = self._abs(src, allow_root=False)
        dst_full = self._abs(dst, allow_root=False)
        if not os.path.lexists(src_full):
            raise self._not_found(src)
        # POSIX rename replaces an *empty* directory silently; refuse any existing
        # directory so that publishing a directory is a clean first-wins race.
        if os.path.isdir(dst_full):
            raise StoreFileExistsError(
                f"cannot rename {src!r} to {dst!r} in {self.url}: the target directory exists"
            )
        os.makedirs(os.path.dirname(dst_full), exist_ok=True)
        try:
            os.replace(src_full, dst_full)
        except FileNotFoundError:
            raise self._not_found(src) from None
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                raise StoreFileExistsError(
                    f"cannot rename {src!r} to {dst!r} in {self.url}: the target exists"
                ) from exc
            raise
        _fsync_dir(os.path.dirname(dst_full))

    def makedirs(self, path: str) -> None:
        os.makedirs(self._abs(path), exist_ok=True)

    def file_size(self, path: str) -> int:
        full = self._abs(path, allow_root=False)
        try:
            return os.path.getsize(full)
        except FileNotFoundError:
            raise self._not_found(path) from None

    def isdir(self, path: str) -> bool:
        return os.path.isdir(self._abs(path))

    def arrow_filesystem(self) -> tuple["pyarrow.fs.FileSystem", str]:
        import pyarrow.fs

        return pyarrow.fs.LocalFileSystem(), self._root

    @property
    def url(self) -> str:
        return "file://" + self._root

    # ------------------------------------------------------------------ derived, faster

    def size(self, path: str = "") -> int:
        full = self._abs(path)
        if not os.path.exists(full):
            return 0
        if not os.path.isdir(full):
            return os.path.getsize(full)
        total = 0
        for dirpath, dirnames, filenames in os.walk(full):
            dirnames[:] = [d for d in dirnames if not is_temp_name(d)]
            for name in filenames:
                if is_temp_name(name):
                    continue
                try:
                    total += os.path.getsize(os.path.join(dirpath, name))
                except FileNotFoundError:
                    pass
        return total

    def local_path(self, path: str = "") -> str | None:
        return self._abs(path)
