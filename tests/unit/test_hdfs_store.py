"""HDFSStore without an HDFS server: URL and argument validation, Store.create dispatch, laziness,
pickling, driver selection errors, path safety, and cerebro's WebHDFS translation layer.

No HDFS server can be installed on the development machine and none is faked. The WebHDFS
tests at the end use tests/webhdfs_fake_client.py, an in-memory object with the ``hdfs``
package's client API (NOT a server), to check what *our* adapter sends and how it maps the
answers. HDFSStore against a real HDFS: tests/integration/test_store_contract.py with
CEREBRO_TEST_HDFS_URL set.
"""

from __future__ import annotations

import pickle
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from cerebro.errors import CerebroError
from cerebro.storage import HDFSStore, LocalStore, Store
from cerebro.storage import base as store_base
from cerebro.storage.hdfs import parse_hdfs_url


def _have_libhdfs() -> bool:
    import pyarrow.lib

    return bool(pyarrow.lib.have_libhdfs())


@pytest.fixture
def no_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to open an HDFS driver fail the test."""

    def refuse(self: HDFSStore) -> Any:
        raise AssertionError("HDFSStore tried to connect")

    monkeypatch.setattr(HDFSStore, "_open_libhdfs", refuse)
    monkeypatch.setattr(HDFSStore, "_open_webhdfs", refuse)


# ----------------------------------------------------------------- URL parsing


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("hdfs://namenode:8020/user/me/store", ("namenode", 8020, "/user/me/store")),
        ("hdfs://namenode/user/me/store", ("namenode", None, "/user/me/store")),
        ("HDFS://NameNode:8020/a/", ("namenode", 8020, "/a")),
        ("hdfs://nn:9000//a/./b//", ("nn", 9000, "/a/b")),
        ("hdfs://nn:9000/with%20space", ("nn", 9000, "/with space")),
    ],
)
def test_parse_valid_urls(url: str, expected: tuple[str, int | None, str]) -> None:
    assert parse_hdfs_url(url) == expected


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("foo", "no 'hdfs://' scheme"),
        ("/user/me/store", "no 'hdfs://' scheme"),
        ("file:///tmp/x", "scheme 'file' is not 'hdfs'"),
        ("s3://bucket/x", "scheme 's3' is not 'hdfs'"),
        ("hdfs:///user/me", "namenode host is missing"),
        ("hdfs:relative/path", "namenode host is missing"),
        ("hdfs://nn:8020", "path after the host is missing"),
        ("hdfs://nn:8020/", "file system's root"),
        ("hdfs://nn:8020/a/../b", "contains '..'"),
        ("hdfs://me@nn:8020/a", "user in the URL"),
        ("hdfs://nn:8020/a?x=1", "query or fragment"),
        ("hdfs://nn:port/a", "port"),
        ("hdfs://nn:0/a", "port"),
    ],
)
def test_bad_urls_name_the_parameter_and_the_value(url: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        HDFSStore(url)
    msg = str(info.value)
    assert msg.startswith("The 'prefix_path' parameter of HDFSStore must be an hdfs://host:port/path URL")
    assert why in msg
    assert f"Got {url!r} instead." in msg


def test_non_string_prefix_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="'prefix_path' parameter of HDFSStore"):
        HDFSStore(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"user": ""}, "user"),
        ({"user": 3}, "user"),
        ({"kerb_ticket": ""}, "kerb_ticket"),
        ({"webhdfs_url": "namenode:9870"}, "webhdfs_url"),
        ({"webhdfs_url": "ftp://namenode:9870"}, "webhdfs_url"),
        ({"webhdfs_url": "http://namenode:9870/webhdfs/v1"}, "webhdfs_url"),
        ({"replication": 0}, "replication"),
        ({"replication": True}, "replication"),
        ({"replication": 2.0}, "replication"),
        ({"driver": "jni"}, "driver"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(ValueError, match=f"The '{param}' parameter of HDFSStore must be") as info:
        HDFSStore("hdfs://nn:8020/x", **kwargs)
    assert f"Got {next(iter(kwargs.values()))!r} instead." in str(info.value)


def test_properties(no_connection: None) -> None:
    s = HDFSStore("hdfs://nn:8020/a/b/", user="me", replication=2, kerb_ticket=Path("/tmp/krb5cc_1"))
    assert s.url == "hdfs://nn:8020/a/b"
    assert s.root == "/a/b"
    assert s.driver == "auto"
    assert s.webhdfs_url == "http://nn:9870"
    assert repr(s) == "HDFSStore('hdfs://nn:8020/a/b')"
    assert HDFSStore("hdfs://ha-nameservice/a").url == "hdfs://ha-nameservice/a"
    ha = HDFSStore("hdfs://nn:8020/a", webhdfs_url="http://nn1:9870;https://nn2:9871")
    assert ha.webhdfs_url == "http://nn1:9870;https://nn2:9871"
    assert s == HDFSStore("hdfs://nn:8020/a/b") and hash(s) == hash(HDFSStore("hdfs://nn:8020/a/b"))
    assert s != HDFSStore("hdfs://nn:8020/a/c")


# ----------------------------------------------------------------- Store.create dispatch


def test_create_file_url_and_bare_paths(tmp_path: Path) -> None:
    bare = Store.create(str(tmp_path / "s"))
    assert isinstance(bare, LocalStore) and bare.root == str(tmp_path / "s")
    assert Store.create(f"file://{tmp_path}/s") == bare
    assert Store.create(tmp_path / "s") == bare
    assert Store.create(bare) is bare


def test_create_hdfs_is_lazy(no_connection: None) -> None:
    s = Store.create("hdfs://namenode:8020/user/me/store")
    assert type(s) is HDFSStore
    assert s.url == "hdfs://namenode:8020/user/me/store"
    assert s.driver == "auto"
    assert s._impl is None  # nothing was contacted (no_connection would have failed the test)


def test_create_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(CerebroError) as info:
        Store.create("s3://bucket/prefix")
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    assert "'s3'" in msg and "'s3://bucket/prefix'" in msg
    assert "'file://'" in msg and "'hdfs://'" in msg


def test_create_names_what_to_install_when_an_implementation_cannot_be_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(
        store_base._STORE_REGISTRY, "hdfs", ("cerebro.storage._no_such_module", "HDFSStore", "pip install 'cerebro-mop[hdfs]'")
    )
    with pytest.raises(CerebroError, match=r"pip install 'cerebro-mop\[hdfs\]'"):
        Store.create("hdfs://nn:8020/x")


def test_cerebro_exports_hdfs_store() -> None:
    import cerebro

    assert cerebro.HDFSStore is HDFSStore
    assert "HDFSStore" in cerebro.__all__


# ----------------------------------------------------------------- pickling


def test_pickle_roundtrip_keeps_plain_attributes_only(no_connection: None) -> None:
    s = HDFSStore("hdfs://nn:8020/p", user="me", webhdfs_url="http://nn:50070", replication=2, driver="webhdfs")
    clone = pickle.loads(pickle.dumps(s))
    assert clone == s and type(clone) is HDFSStore
    assert vars(clone).keys() == vars(s).keys()
    for name in ("_host", "_port", "_root", "_user", "_kerb_ticket", "_webhdfs_url", "_replication", "_driver_choice"):
        assert getattr(clone, name) == getattr(s, name)
    assert clone._impl is None


# ----------------------------------------------------------------- driver selection


@pytest.mark.skipif(_have_libhdfs(), reason="libhdfs loads in this process, so the missing-libhdfs error cannot occur")
def test_libhdfs_driver_missing_is_a_clear_error() -> None:
    s = HDFSStore("hdfs://nn:8020/x", driver="libhdfs")
    with pytest.raises(CerebroError) as info:
        s.exists("a")
    msg = str(info.value)
    for needle in ("'libhdfs' driver", "JAVA_HOME", "HADOOP_HOME", "CLASSPATH", "ARROW_LIBHDFS_DIR", "cerebro-mop[hdfs]"):
        assert needle in msg


def test_webhdfs_driver_without_the_hdfs_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hdfs", None)  # makes `import hdfs` raise ImportError
    with pytest.raises(CerebroError, match=r"needs the 'hdfs' package \(`pip install 'cerebro-mop\[hdfs\]'`\)"):
        HDFSStore("hdfs://nn:8020/x", driver="webhdfs").connect()


@pytest.mark.skipif(_have_libhdfs(), reason="libhdfs loads in this process")
def test_auto_without_any_driver_names_both_fixes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hdfs", None)
    with pytest.raises(CerebroError) as info:
        HDFSStore("hdfs://nn:8020/x").listdir("")
    msg = str(info.value)
    assert "no HDFS driver is available" in msg
    assert "pip install 'cerebro-mop[hdfs]'" in msg and "ARROW_LIBHDFS_DIR" in msg


# ----------------------------------------------------------------- path safety (before any connection)


@pytest.mark.parametrize("bad", ["..", "../x", "a/../../x", "/etc/passwd", "\\abs", "C:/x", "a\x00b"])
def test_paths_escaping_the_prefix_are_refused_without_connecting(no_connection: None, bad: str) -> None:
    s = HDFSStore("hdfs://nn:8020/store")
    calls = [
        lambda: s.read_bytes(bad), lambda: s.write_bytes(bad, b"1"), lambda: s.exists(bad),
        lambda: s.listdir(bad), lambda: s.delete(bad), lambda: s.rename("x", bad), lambda: s.rename(bad, "x"),
        lambda: s.makedirs(bad), lambda: s.file_size(bad), lambda: s.isdir(bad), lambda: s.size(bad),
        lambda: s.create_exclusive(bad, b"1"), lambda: s.append_bytes(bad, b"1"),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()


def test_root_only_operations_are_refused(no_connection: None) -> None:
    s = HDFSStore("hdfs://nn:8020/store")
    for call in (lambda: s.delete(""), lambda: s.read_bytes(""), lambda: s.write_bytes("", b"")):
        with pytest.raises(ValueError, match="root"):
            call()


# ----------------------------------------------------------------- WebHDFS translation (fake client, NOT HDFS)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """(module, webhdfs_url): HDFSStore's WebHDFS client replaced by a fresh in-memory fake client."""
    pytest.importorskip("hdfs", reason="the 'hdfs' package is part of the [test] extra")
    import webhdfs_fake_client as module  # tests/ is on sys.path

    from cerebro.storage import _webhdfs

    monkeypatch.setattr(_webhdfs, "new_client", module.fake_new_client)
    url = f"http://fake-{uuid.uuid4().hex[:12]}:9870"
    yield module, url
    module.forget(url)


@pytest.fixture
def client(fake: Any) -> Any:
    module, url = fake
    return module.fake_new_client(url)


@pytest.fixture
def handler(client: Any) -> Any:
    from cerebro.storage._webhdfs import WebHDFSHandler

    return WebHDFSHandler(client, replication=2)


@pytest.fixture
def wfs(handler: Any) -> Any:
    import pyarrow.fs

    return pyarrow.fs.PyFileSystem(handler)


def test_handler_file_info_and_listing(client: Any, wfs: Any) -> None:
    import pyarrow.fs

    client.write("/d/a.bin", b"12345")
    client.write("/d/sub/b.bin", b"xy")
    a, d, missing = wfs.get_file_info(["/d/a.bin", "/d", "/nope"])
    assert (a.type, a.size, a.base_name) == (pyarrow.fs.FileType.File, 5, "a.bin")
    assert a.mtime is not None
    assert d.type == pyarrow.fs.FileType.Directory
    assert missing.type == pyarrow.fs.FileType.NotFound

    flat = wfs.get_file_info(pyarrow.fs.FileSelector("/d"))
    assert sorted((i.path, i.type) for i in flat) == [
        ("/d/a.bin", pyarrow.fs.FileType.File), ("/d/sub", pyarrow.fs.FileType.Directory)
    ]
    deep = wfs.get_file_info(pyarrow.fs.FileSelector("/d/", recursive=True))
    assert sorted(i.path for i in deep) == ["/d/a.bin", "/d/sub", "/d/sub/b.bin"]
    assert wfs.get_file_info(pyarrow.fs.FileSelector("/nope", allow_not_found=True)) == []
    with pytest.raises(FileNotFoundError):
        wfs.get_file_info(pyarrow.fs.FileSelector("/nope"))
    with pytest.raises(NotADirectoryError):
        wfs.get_file_info(pyarrow.fs.FileSelector("/d/a.bin"))


def test_handler_maps_hdfs_exception_names_to_python_errors(client: Any, handler: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from hdfs.util import HdfsError

    def denied(*args: Any, **kwargs: Any) -> Any:
        raise HdfsError("Permission denied: user=me, access=WRITE", exception="AccessControlException")

    monkeypatch.setattr(client, "makedirs", denied)
    with pytest.raises(PermissionError, match="Permission denied"):
        handler.create_dir("/x", recursive=True)
    monkeypatch.setattr(client, "status", denied)
    with pytest.raises(PermissionError):  # not reported as "missing"
        handler.get_file_info(["/x"])


def test_handler_directories(client: Any, wfs: Any, handler: Any) -> None:
    import pyarrow.fs

    with pytest.raises(FileNotFoundError):
        wfs.create_dir("/a/b", recursive=False)
    wfs.create_dir("/a/b", recursive=True)
    wfs.create_dir("/a/c", recursive=False)
    assert client.status("/a/b")["type"] == "DIRECTORY"
    client.write("/a/b/f", b"1")
    wfs.delete_dir_contents("/a")
    assert client.list("/a") == []
    wfs.delete_dir_contents("/missing", missing_dir_ok=True)
    with pytest.raises(FileNotFoundError):
        wfs.delete_dir_contents("/missing")
    with pytest.raises(FileNotFoundError):
        wfs.delete_dir("/missing")
    client.write("/a/f", b"1")
    with pytest.raises(NotADirectoryError):
        wfs.delete_dir("/a/f")
    with pytest.raises(IsADirectoryError):
        wfs.delete_file("/a")
    wfs.delete_file("/a/f")
    wfs.delete_dir("/a")
    assert wfs.get_file_info("/a").type == pyarrow.fs.FileType.NotFound
    with pytest.raises(PermissionError):
        wfs.delete_dir_contents("/")
    with pytest.raises(PermissionError):
        handler.delete_root_dir_contents()


def test_handler_move_replaces_files_and_never_nests_directories(client: Any, wfs: Any, handler: Any) -> None:
    client.write("/src", b"new")
    client.write("/dst", b"old")
    wfs.move("/src", "/dst")
    assert client.status("/src", strict=False) is None
    with client.read("/dst") as r:
        assert r.read() == b"new"
    # rename options go over the wire: OVERWRITE for pyarrow's move, NONE for rename_noreplace
    client.write("/dir1/f", b"1")
    client.write("/dir2/g", b"2")
    with pytest.raises(OSError, match="not empty"):
        wfs.move("/dir1", "/dir2")
    assert client.list("/dir2") == ["g"]  # not moved inside, as a plain HDFS rename would
    with pytest.raises(FileExistsError):
        handler.rename_noreplace("/dir1", "/dir2")
    with pytest.raises(FileNotFoundError):
        handler.rename_noreplace("/ghost", "/x")


def test_handler_reads_ranges_not_whole_files(client: Any, wfs: Any) -> None:
    client.write("/big", bytes(range(256)) * 4000)
    client.requests.clear()
    with wfs.open_input_file("/big") as f:
        assert f.size() == 1_024_000
        f.seek(1_000_000)
        assert f.read(10) == (bytes(range(256)) * 4000)[1_000_000:1_000_010]
        assert f.read_at(4, 2) == bytes([2, 3, 4, 5])
    opens = [r for r in client.requests if r[0] == "OPEN"]
    assert len(opens) == 2  # one request per read, each for the bytes asked for only
    with pytest.raises(IsADirectoryError):
        wfs.open_input_file("/")
    with pytest.raises(FileNotFoundError):
        wfs.open_input_stream("/nope")
    client.write("/empty", b"")
    with wfs.open_input_stream("/empty") as f:
        assert f.read() == b""


def test_handler_output_stream_uploads_once_on_close_with_replication(client: Any, wfs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    real_write = client.write

    def spy(path: str, data: Any = None, **kwargs: Any) -> None:
        seen.append(kwargs)
        real_write(path, data=data, **kwargs)

    monkeypatch.setattr(client, "write", spy)
    with wfs.open_output_stream("/out/f.bin") as f:
        f.write(b"part1-")
        f.write(b"part2")
        assert client.status("/out/f.bin", strict=False) is None  # nothing sent before close
    assert seen == [{"overwrite": True, "replication": 2}]
    with client.read("/out/f.bin") as r:
        assert r.read() == b"part1-part2"
    with wfs.open_append_stream("/out/f.bin") as f:
        f.write(b"+more")
    assert seen[-1] == {"append": True}
    with client.read("/out/f.bin") as r:
        assert r.read() == b"part1-part2+more"
    with wfs.open_append_stream("/out/new.bin") as f:  # append to a missing file creates it
        f.write(b"first")
    with client.read("/out/new.bin") as r:
        assert r.read() == b"first"
    wfs.copy_file("/out/new.bin", "/out/copy.bin")
    with client.read("/out/copy.bin") as r:
        assert r.read() == b"first"


def test_handler_upload_error_is_raised_by_close(client: Any, wfs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from hdfs.util import HdfsError

    def full(*args: Any, **kwargs: Any) -> None:
        raise HdfsError("The DiskSpace quota is exceeded", exception="DSQuotaExceededException")

    monkeypatch.setattr(client, "write", full)
    with pytest.raises(OSError, match="quota"):
        with wfs.open_output_stream("/q") as f:
            f.write(b"x")


def test_parquet_roundtrip_through_the_handler(wfs: Any) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"features": [[float(i), 1.0] for i in range(500)], "label": list(range(500))})
    pq.write_table(table, "/store/data/k/train/part-00000.parquet", filesystem=wfs)
    pq.write_table(table, "/store/data/k/train/part-00001.parquet", filesystem=wfs)
    assert pq.read_table("/store/data/k/train/part-00000.parquet", filesystem=wfs).equals(table)
    both = pq.read_table("/store/data/k/train", filesystem=wfs)
    assert both.num_rows == 1000


def _store(fake: Any, **kwargs: Any) -> HDFSStore:
    _, url = fake
    return HDFSStore("hdfs://fake-namenode:8020/s", driver="webhdfs", webhdfs_url=url, **kwargs)


def test_store_write_is_temp_then_atomic_rename(fake: Any) -> None:
    s = _store(fake)
    s.connect()
    client = s._impl.client
    client.requests.clear()
    s.write_bytes("a/f", b"1")
    ops = [op for op, _ in client.requests]
    assert ops == ["CREATE", "RENAME"]
    created = client.requests[0][1]
    assert created.startswith("/s/a/.f.tmp-")
    assert client.ns.files["/s/a/f"] == b"1"


def test_store_create_exclusive_is_one_atomic_rename(fake: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _store(fake)
    s.connect()
    client = s._impl.client
    options: list[str | None] = []
    real = client._rename

    def spy(path: str, destination: str, renameoptions: str | None = None) -> Any:
        options.append(renameoptions)
        return real(path, destination=destination, renameoptions=renameoptions)

    monkeypatch.setattr(client, "_rename", spy)
    assert s.create_exclusive("LOCK", b"me")
    # Lost race: the target appears between our existence check and the rename.
    monkeypatch.setattr(s, "exists", lambda path: False)
    assert not s.create_exclusive("LOCK", b"you")
    assert s.read_bytes("LOCK") == b"me"
    assert options == ["NONE", "NONE"]
    assert HDFSStore.exists(s, "") and s.listdir("") == ["LOCK"]  # the loser's temporary is gone
    assert [n for n in client.list("/s")] == ["LOCK"]


def test_store_append_is_an_append_not_a_rewrite(fake: Any) -> None:
    s = _store(fake)
    s.append_bytes("j.jsonl", b"one\n")
    client = s._impl.client
    client.requests.clear()
    s.append_bytes("j.jsonl", b"two\n")
    ops = [op for op, _ in client.requests]
    assert "APPEND" in ops and "OPEN" not in ops and "RENAME" not in ops
    assert s.read_bytes("j.jsonl") == b"one\ntwo\n"


def test_store_replication_and_prefix_creation(fake: Any) -> None:
    s = _store(fake, replication=2)
    assert s._impl is None
    s.connect()
    assert s._impl.handler.replication == 2
    assert s.isdir("") and s.exists("")  # the prefix is created on first use


def test_store_pickles_after_connecting_and_reconnects_lazily(fake: Any) -> None:
    s = _store(fake)
    s.write_bytes("p", b"shared")
    clone = pickle.loads(pickle.dumps(s))
    assert clone._impl is None
    assert clone.read_bytes("p") == b"shared"
    assert clone._impl is not s._impl


def test_store_read_of_a_directory_is_a_clear_error(fake: Any) -> None:
    s = _store(fake)
    s.makedirs("d")
    with pytest.raises(CerebroError, match="is a directory"):
        s.read_bytes("d")
    with pytest.raises(CerebroError, match="is a directory"):
        s.file_size("d")


@pytest.fixture
def libhdfs_logic_store(fake: Any, monkeypatch: pytest.MonkeyPatch) -> HDFSStore:
    """HDFSStore(driver='libhdfs') whose driver object runs over the fake client (see the fake's
    ``libhdfs_like_driver``): tests the libhdfs driver's own logic, not libhdfs."""
    module, url = fake
    monkeypatch.setattr(HDFSStore, "_open_libhdfs", lambda self: module.libhdfs_like_driver(url))
    return HDFSStore("hdfs://fake-namenode:8020/s", driver="libhdfs", webhdfs_url=url)


def test_libhdfs_logic_retries_a_file_missing_during_a_replace(
    libhdfs_logic_store: HDFSStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.fs

    s = libhdfs_logic_store
    s.write_bytes("f", b"v1")
    d = s._impl
    real = d.read_file
    misses = iter([True, True])

    def flaky(path: str) -> bytes:  # the delete-then-rename window of pyarrow's HDFS move
        if next(misses, False):
            raise FileNotFoundError(path)
        return real(path)

    monkeypatch.setattr(d, "read_file", flaky)
    monkeypatch.setattr(s, "_type", lambda full: pyarrow.fs.FileType.NotFound)
    assert s.read_bytes("f") == b"v1"


def test_libhdfs_logic_detects_a_directory_published_during_its_rename(
    libhdfs_logic_store: HDFSStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = libhdfs_logic_store
    s.write_bytes("data/.tmp-k-2/part", b"loser")
    d = s._impl
    handler = d.fs.handler
    real_move = handler.move

    def racing_move(src: str, dest: str) -> None:
        if dest.endswith("/data/k"):  # another process publishes data/k first
            handler.client.write("/s/data/k/part", b"winner")
        real_move(src, dest)

    monkeypatch.setattr(handler, "move", racing_move)
    with pytest.raises(FileExistsError):
        s.rename("data/.tmp-k-2", "data/k")
    assert s.listdir("data/k") == ["part"]
    assert s.read_bytes("data/k/part") == b"winner"
    assert s.read_bytes("data/.tmp-k-2/part") == b"loser"  # put back where it was
