"""The Store contract: one suite that every Store implementation must pass.

``StoreContract`` is not collected by itself (its name does not start with
``Test``). An implementation's test module subclasses it and provides the
``store`` fixture (a fresh, empty store per test), like fsspec's
``tests/abstract`` and Optuna's ``StorageTestCase``::

    class TestHDFSStore(StoreContract):
        @pytest.fixture
        def store(self, hdfs_tmp_url):
            return HDFSStore(hdfs_tmp_url)
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import threading
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from cerebro.errors import CerebroError
from cerebro.storage import HDFSStore, LocalStore, Store

# A real HDFS for the HDFSStore params, e.g. hdfs://namenode:8020/tmp/cerebro-test (and, if the
# NameNode's WebHDFS is not on http://<host>:9870, CEREBRO_TEST_WEBHDFS_URL).
HDFS_URL = os.environ.get("CEREBRO_TEST_HDFS_URL", "").strip()
WEBHDFS_URL = os.environ.get("CEREBRO_TEST_WEBHDFS_URL", "").strip() or None
NO_HDFS_REASON = (
    "CEREBRO_TEST_HDFS_URL is not set: no HDFS server can be installed on this machine, so the Store "
    "contract does not run against HDFSStore here (set it to e.g. hdfs://namenode:8020/tmp/cerebro-test)"
)


class StoreContract:
    """Behaviour every Store must have. Subclasses provide the ``store`` fixture."""

    @pytest.fixture
    def store(self) -> Store:  # pragma: no cover - overridden
        raise NotImplementedError

    # ------------------------------------------------------------- bytes

    def test_roundtrip(self, store: Store) -> None:
        store.write_bytes("a/b/c.bin", b"\x00\x01hello")
        assert store.read_bytes("a/b/c.bin") == b"\x00\x01hello"
        assert store.exists("a/b/c.bin")
        assert store.exists("a/b")
        assert store.isdir("a/b")
        assert not store.isdir("a/b/c.bin")

    def test_empty_file(self, store: Store) -> None:
        store.write_bytes("empty", b"")
        assert store.read_bytes("empty") == b""
        assert store.file_size("empty") == 0

    def test_overwrite(self, store: Store) -> None:
        store.write_bytes("f", b"first version, longer")
        store.write_bytes("f", b"second")
        assert store.read_bytes("f") == b"second"
        assert store.listdir("") == ["f"]

    def test_bytearray_and_memoryview(self, store: Store) -> None:
        store.write_bytes("x", bytearray(b"ab"))
        store.write_bytes("y", memoryview(b"cd"))
        assert store.read_bytes("x") == b"ab"
        assert store.read_bytes("y") == b"cd"

    def test_missing_file_error_names_the_path(self, store: Store) -> None:
        with pytest.raises(CerebroError, match="nope/missing.bin"):
            store.read_bytes("nope/missing.bin")
        with pytest.raises(FileNotFoundError):
            store.read_bytes("nope/missing.bin")
        with pytest.raises(FileNotFoundError, match="missing.bin"):
            store.file_size("missing.bin")
        assert not store.exists("nope/missing.bin")

    def test_path_normalisation(self, store: Store) -> None:
        store.write_bytes("./a//b/./c", b"1")
        assert store.read_bytes("a/b/c") == b"1"
        assert store.listdir("a/") == ["b"]

    # ------------------------------------------------------------- atomicity

    def test_write_leaves_no_temporary_files(self, store: Store) -> None:
        for i in range(5):
            store.write_bytes("dir/file.bin", bytes([i]) * 1000)
        assert store.listdir("dir") == ["file.bin"]
        local = store.local_path("dir")
        if local is not None:
            # Not even hidden ones: every temporary was renamed or removed.
            assert os.listdir(local) == ["file.bin"]

    def test_concurrent_readers_never_see_a_partial_write(self, store: Store) -> None:
        contents = [b"a" * 300_000, b"b" * 700_000]
        store.write_bytes("hot", contents[0])
        stop = threading.Event()
        errors: list[str] = []

        def writer() -> None:
            i = 0
            while not stop.is_set():
                store.write_bytes("hot", contents[i % 2])
                i += 1

        t = threading.Thread(target=writer)
        t.start()
        try:
            for _ in range(200):
                data = store.read_bytes("hot")
                if data not in contents:
                    errors.append(f"read {len(data)} bytes that are neither version")
        finally:
            stop.set()
            t.join()
        assert errors == []
        assert store.listdir("") == ["hot"]

    def test_temporary_entries_are_hidden_from_listdir(self, store: Store) -> None:
        # prepare_data writes into data/.tmp-<key>-<uuid>/ before renaming it into place.
        store.write_bytes("data/.tmp-abc-123/train/part-00000.parquet", b"x")
        store.write_bytes("data/published/_manifest.json", b"{}")
        assert store.listdir("data") == ["published"]
        assert store.exists("data/.tmp-abc-123/train/part-00000.parquet")

    # ------------------------------------------------------------- listing, deleting

    def test_listdir_sorted_and_missing(self, store: Store) -> None:
        for name in ["b", "a", "c/d", "B"]:
            store.write_bytes(name, b"")
        assert store.listdir("") == ["B", "a", "b", "c"]
        assert store.listdir("c") == ["d"]
        assert store.listdir("missing") == []
        assert store.listdir("a") == []  # a file has no children

    def test_makedirs(self, store: Store) -> None:
        store.makedirs("x/y/z")
        store.makedirs("x/y/z")  # existing is fine
        assert store.isdir("x/y/z")
        assert store.listdir("x/y") == ["z"]

    def test_delete_recursive(self, store: Store) -> None:
        store.write_bytes("d/e/f", b"1")
        store.write_bytes("d/g", b"2")
        store.write_bytes("keep", b"3")
        store.delete("d")
        assert not store.exists("d")
        assert store.listdir("") == ["keep"]
        store.delete("keep")
        assert store.listdir("") == []

    def test_delete_missing_is_fine(self, store: Store) -> None:
        store.delete("never/existed")
        store.delete("never/existed")

    def test_delete_root_is_refused(self, store: Store) -> None:
        store.write_bytes("f", b"1")
        with pytest.raises(ValueError):
            store.delete("")
        assert store.read_bytes("f") == b"1"

    # ------------------------------------------------------------- rename

    def test_rename_file(self, store: Store) -> None:
        store.write_bytes("src", b"1")
        store.rename("src", "sub/dst")
        assert not store.exists("src")
        assert store.read_bytes("sub/dst") == b"1"

    def test_rename_file_replaces_file(self, store: Store) -> None:
        store.write_bytes("src", b"new")
        store.write_bytes("dst", b"old")
        store.rename("src", "dst")
        assert store.read_bytes("dst") == b"new"

    def test_rename_directory_publishes_it_whole(self, store: Store) -> None:
        store.write_bytes("data/.tmp-k-1/train/part-00000.parquet", b"p0")
        store.write_bytes("data/.tmp-k-1/val/part-00000.parquet", b"v0")
        store.rename("data/.tmp-k-1", "data/k")
        assert store.listdir("data") == ["k"]
        assert store.read_bytes("data/k/train/part-00000.parquet") == b"p0"
        assert store.read_bytes("data/k/val/part-00000.parquet") == b"v0"
        assert not store.exists("data/.tmp-k-1")

    def test_rename_onto_existing_directory_loses_the_race(self, store: Store) -> None:
        store.write_bytes("data/k/winner", b"w")
        store.write_bytes("data/.tmp-k-2/loser", b"l")
        with pytest.raises(FileExistsError):
            store.rename("data/.tmp-k-2", "data/k")
        with pytest.raises(CerebroError):
            store.rename("data/.tmp-k-2", "data/k")
        # Both sides untouched.
        assert store.listdir("data/k") == ["winner"]
        assert store.read_bytes("data/.tmp-k-2/loser") == b"l"

    def test_rename_onto_empty_directory_is_refused_too(self, store: Store) -> None:
        store.makedirs("target")
        store.write_bytes("src/f", b"1")
        with pytest.raises(FileExistsError):
            store.rename("src", "target")

    def test_rename_missing_source(self, store: Store) -> None:
        with pytest.raises(FileNotFoundError, match="ghost"):
            store.rename("ghost", "x")

    # ------------------------------------------------------------- derived helpers

    def test_json_roundtrip_sorted_and_indented(self, store: Store) -> None:
        obj = {"b": [1, 2.5, None], "a": {"z": True, "y": "text"}}
        store.write_json("m/manifest.json", obj)
        assert store.read_json("m/manifest.json") == obj
        text = store.read_bytes("m/manifest.json").decode()
        assert text.strip() == json.dumps(obj, sort_keys=True, indent=1)

    def test_read_json_of_garbage_is_a_cerebro_error(self, store: Store) -> None:
        store.write_bytes("bad.json", b"{not json")
        with pytest.raises(CerebroError, match="bad.json"):
            store.read_json("bad.json")

    def test_size(self, store: Store) -> None:
        store.write_bytes("s/a", b"x" * 10)
        store.write_bytes("s/b/c", b"x" * 32)
        store.write_bytes("other", b"x" * 5)
        assert store.size("s") == 42
        assert store.size("s/a") == 10
        assert store.size() == 47
        assert store.size("missing") == 0

    def test_local_path_is_none_or_the_real_file(self, store: Store) -> None:
        store.write_bytes("lp/f", b"content")
        local = store.local_path("lp/f")
        if local is not None:
            assert os.path.isabs(local)
            with open(local, "rb") as f:
                assert f.read() == b"content"

    def test_url_has_a_scheme(self, store: Store) -> None:
        assert "://" in store.url

    def test_arrow_filesystem_sees_the_same_files(self, store: Store) -> None:
        store.write_bytes("arrow/f.bin", b"via store")
        fs, root = store.arrow_filesystem()
        with fs.open_input_stream(f"{root}/arrow/f.bin") as f:
            assert f.read() == b"via store"

    # ------------------------------------------------------------- safety, pickling

    @pytest.mark.parametrize("bad", ["../x", "a/../../x", "..", "/etc/passwd", "a/../..", "\\abs"])
    def test_paths_escaping_the_prefix_are_refused(self, store: Store, bad: str) -> None:
        with pytest.raises(ValueError):
            store.write_bytes(bad, b"1")
        with pytest.raises(ValueError):
            store.read_bytes(bad)
        with pytest.raises(ValueError):
            store.exists(bad)
        with pytest.raises(ValueError):
            store.listdir(bad)
        with pytest.raises(ValueError):
            store.delete(bad)
        with pytest.raises(ValueError):
            store.rename("x", bad)
        with pytest.raises(ValueError):
            store.makedirs(bad)

    def test_pickle_roundtrip(self, store: Store) -> None:
        store.write_bytes("p", b"shared")
        clone = pickle.loads(pickle.dumps(store))
        assert clone == store
        assert type(clone) is type(store)
        assert clone.url == store.url
        assert clone.read_bytes("p") == b"shared"
        clone.write_bytes("q", b"back")
        assert store.read_bytes("q") == b"back"


class TestLocalStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Store:
        return LocalStore(tmp_path / "store")

    def test_prefix_is_created_and_absolute(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(tmp_path)
        s = LocalStore("rel/dir")
        assert (tmp_path / "rel" / "dir").is_dir()
        assert s.url == "file://" + str(tmp_path / "rel" / "dir")
        assert s.local_path("a/b") == str(tmp_path / "rel" / "dir" / "a" / "b")

    def test_file_url_prefix(self, tmp_path: Path) -> None:
        s = LocalStore(f"file://{tmp_path}/u")
        assert s.root == str(tmp_path / "u")
        assert s == LocalStore(tmp_path / "u")

    def test_file_url_with_a_host_is_refused(self) -> None:
        with pytest.raises(ValueError, match="host"):
            LocalStore("file://otherhost/x")

    def test_prefix_that_is_a_file_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / "f").write_bytes(b"")
        with pytest.raises(ValueError, match="not a directory"):
            LocalStore(tmp_path / "f")

    def test_failed_write_keeps_the_old_file_and_no_temp(
        self, store: LocalStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store.write_bytes("f", b"old")

        def broken_fsync(fd: int) -> None:
            raise OSError("disk on fire")

        monkeypatch.setattr(os, "fsync", broken_fsync)
        with pytest.raises(OSError, match="disk on fire"):
            store.write_bytes("f", b"new content")
        monkeypatch.undo()
        assert store.read_bytes("f") == b"old"
        assert os.listdir(store.root) == ["f"]


def _driver_library_missing(driver: str) -> str | None:
    """Why ``driver`` cannot be loaded in this process (None if it can)."""
    if driver == "libhdfs":
        import pyarrow.lib

        if not pyarrow.lib.have_libhdfs():
            return "pyarrow cannot load libhdfs.so/libjvm.so (set JAVA_HOME, HADOOP_HOME, CLASSPATH, ARROW_LIBHDFS_DIR)"
        return None
    if importlib.util.find_spec("hdfs") is None:
        return "the 'hdfs' package is not installed (pip install 'cerebro-mop[hdfs]')"
    return None


class TestHDFSStore(StoreContract):
    """The contract against a real HDFS, once per driver, each test in its own sub-prefix.

    Runs only where CEREBRO_TEST_HDFS_URL names an HDFS directory the tests may write in;
    otherwise every param is skipped, with that reason.
    """

    @pytest.fixture(
        params=[
            pytest.param(d, marks=pytest.mark.skipif(not HDFS_URL, reason=NO_HDFS_REASON))
            for d in ("libhdfs", "webhdfs")
        ]
    )
    def store(self, request: pytest.FixtureRequest) -> Iterator[Store]:
        driver = request.param
        missing = _driver_library_missing(driver)
        if missing:
            pytest.skip(f"CEREBRO_TEST_HDFS_URL is set, but the {driver!r} driver cannot run here: {missing}")
        parent = HDFSStore(HDFS_URL, driver=driver, webhdfs_url=WEBHDFS_URL)
        name = f"contract-{uuid.uuid4().hex}"
        store = HDFSStore(f"{parent.url}/{name}", driver=driver, webhdfs_url=WEBHDFS_URL)
        try:
            yield store
        finally:
            parent.delete(name)


# ----------------------------------------------------------------- the HDFSStore code over a fake client
#
# NOT HDFS. These run the same contract through HDFSStore's own code (both drivers' logic and the
# WebHDFS pyarrow handler) with tests/webhdfs_fake_client.py, an in-memory object with the
# hdfs.Client API, in place of the network. They check cerebro's translation layer only.


@pytest.fixture
def fake_webhdfs(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Route HDFSStore's WebHDFS client to a fresh FakeWebHDFSClient namespace; yields its webhdfs_url."""
    pytest.importorskip("hdfs", reason="the 'hdfs' package is part of the [test] extra")
    import webhdfs_fake_client as fake  # tests/ is on sys.path

    from cerebro.storage import _webhdfs

    monkeypatch.setattr(_webhdfs, "new_client", fake.fake_new_client)
    url = f"http://fake-{uuid.uuid4().hex[:12]}:9870"
    yield url
    fake.forget(url)


class TestWebHDFSDriverOnFakeClient(StoreContract):
    """HDFSStore(driver='webhdfs') on the fake client: our WebHDFS translation, not HDFS."""

    @pytest.fixture
    def store(self, fake_webhdfs: str) -> Store:
        return HDFSStore("hdfs://fake-namenode:8020/tmp/store", driver="webhdfs", webhdfs_url=fake_webhdfs)


class TestLibhdfsDriverLogicOnFakeClient(StoreContract):
    """HDFSStore(driver='libhdfs')'s logic over a pyarrow FileSystem that moves like pyarrow's
    HadoopFileSystem (plain HDFS rename, then delete-and-rename for file over file), on the fake
    client. Checks the libhdfs driver's rename/replace/exclusive-create logic, not libhdfs."""

    @pytest.fixture
    def store(self, fake_webhdfs: str, monkeypatch: pytest.MonkeyPatch) -> Store:
        import webhdfs_fake_client as fake

        monkeypatch.setattr(HDFSStore, "_open_libhdfs", lambda self: fake.libhdfs_like_driver(self.webhdfs_url))
        return HDFSStore("hdfs://fake-namenode:8020/tmp/store", driver="libhdfs", webhdfs_url=fake_webhdfs)


# ----------------------------------------------------------------- Store.create dispatch


def test_create_bare_path_and_file_url(tmp_path: Path) -> None:
    a = Store.create(str(tmp_path / "a"))
    assert isinstance(a, LocalStore)
    assert a.root == str(tmp_path / "a")
    b = Store.create(f"file://{tmp_path}/a")
    assert b == a
    c = Store.create(tmp_path / "a")  # os.PathLike
    assert c == a


def test_create_hdfs_gives_an_hdfs_store() -> None:
    s = Store.create("hdfs://namenode:8020/user/me/store")
    assert isinstance(s, HDFSStore)
    assert s.url == "hdfs://namenode:8020/user/me/store"


def test_create_unknown_scheme_names_it_and_the_supported_ones() -> None:
    with pytest.raises(ValueError, match="'s3'") as info:
        Store.create("s3://bucket/prefix")
    assert isinstance(info.value, CerebroError)
    assert "file://" in str(info.value)
    assert "hdfs://" in str(info.value)


def test_create_bad_arguments() -> None:
    with pytest.raises(TypeError):
        Store.create(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Store.create("")
