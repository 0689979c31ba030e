"""fsspec's own conformance suite (``fsspec.tests.abstract``: copy, get, put, open,
pipe) against netcache over the local and the memory filesystem, set up as fsspec's
``implementations/tests/local`` and ``memory`` set up theirs."""

from __future__ import annotations

import os
from collections.abc import Iterator

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.tests.abstract import AbstractFixtures
from fsspec.tests.abstract.copy import AbstractCopyTests
from fsspec.tests.abstract.get import AbstractGetTests
from fsspec.tests.abstract.open import AbstractOpenTests
from fsspec.tests.abstract.pipe import AbstractPipeTests
from fsspec.tests.abstract.put import AbstractPutTests

import netcache
from netcache.testing import RangeServer


def _over(target: fsspec.AbstractFileSystem) -> netcache.NetCacheFileSystem:
    return netcache.NetCacheFileSystem(
        fs=target, cache_dir=False, block_size=4096, memory_monitor=False,
        skip_instance_cache=True,
    )  # fmt: skip


class LocalFixtures(AbstractFixtures):
    @pytest.fixture
    def fs(self) -> netcache.NetCacheFileSystem:
        return _over(LocalFileSystem(auto_mkdir=True))

    @pytest.fixture
    def fs_path(self, tmpdir) -> str:  # type: ignore[no-untyped-def]
        return str(tmpdir)


class MemoryFixtures(AbstractFixtures):
    @pytest.fixture
    def fs(self) -> Iterator[netcache.NetCacheFileSystem]:
        m = fsspec.filesystem("memory")
        m.store.clear()
        m.pseudo_dirs.clear()
        m.pseudo_dirs.append("")
        try:
            yield _over(m)
        finally:
            m.store.clear()
            m.pseudo_dirs.clear()
            m.pseudo_dirs.append("")

    @pytest.fixture
    def fs_join(self):  # type: ignore[no-untyped-def]
        return lambda *args: "/".join(args)

    @pytest.fixture
    def fs_path(self) -> str:
        return ""


class TestLocalCopy(AbstractCopyTests, LocalFixtures):
    pass


class TestLocalGet(AbstractGetTests, LocalFixtures):
    pass


class TestLocalPut(AbstractPutTests, LocalFixtures):
    pass


class TestLocalOpen(AbstractOpenTests, LocalFixtures):
    pass


class TestLocalPipe(AbstractPipeTests, LocalFixtures):
    pass


class TestMemoryCopy(AbstractCopyTests, MemoryFixtures):
    pass


class TestMemoryGet(AbstractGetTests, MemoryFixtures):
    pass


class TestMemoryPut(AbstractPutTests, MemoryFixtures):
    pass


class TestMemoryOpen(AbstractOpenTests, MemoryFixtures):
    pass


class TestMemoryPipe(AbstractPipeTests, MemoryFixtures):
    pass


# fsspec's mv tests (fsspec.tests.abstract.mv) name the local filesystem itself; the
# same tests, through netcache over it.


def test_move_raises_error_with_tmpdir(tmpdir) -> None:  # type: ignore[no-untyped-def]
    source = tmpdir.join("source_file.txt")
    source.write("content")
    destination = tmpdir.join("non_existent_directory/destination_file.txt")
    fs = _over(fsspec.filesystem("file"))
    with pytest.raises(FileNotFoundError):
        fs.mv(str(source), str(destination))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
@pytest.mark.parametrize("recursive", [True, False])
def test_move_raises_error_with_tmpdir_permission(recursive: bool, tmpdir) -> None:  # type: ignore[no-untyped-def]
    source = tmpdir.join("source_file.txt")
    source.write("content")
    protected_dir = tmpdir.mkdir("protected_directory")
    os.chmod(str(protected_dir), 0o555)
    destination = protected_dir.join("destination_file.txt")
    fs = _over(fsspec.filesystem("file"))
    try:
        with pytest.raises(PermissionError):
            fs.mv(str(source), str(destination), recursive=recursive)
        assert not os.path.exists(destination)
    finally:
        os.chmod(str(protected_dir), 0o755)


# Over HTTP (the test server), fsspec's read-only tests: ``get``. Their scenarios are
# written straight to the server, which netcache only reads.


class _ServerWriter:
    """What the scenarios write with, on the server: files from URLs; folders are
    implied by their files."""

    def __init__(self, server: RangeServer) -> None:
        self.server = server

    def _path(self, url: str) -> str:
        return url[len(self.server.url) :]

    def touch(self, url: str) -> None:
        self.server.put(self._path(url), self._path(url).encode())  # bytes of its own

    def pipe(self, path: str, value: bytes) -> None:
        self.server.put(self._path(path), value)

    def makedirs(self, url: str, exist_ok: bool = False) -> None:
        pass  # HTTP has no folders but the paths of files

    def mkdir(self, url: str, create_parents: bool = True) -> None:
        pass


# The tests that copy a folder (directory, glob, recursive): a folder over HTTP is an
# HTML index page, which netcache's ``isdir``/``isfile`` answer from ``info()`` as the
# file it is (fsspec's HTTP ``isdir`` downloads and parses it for links), and the test
# server serves no index pages. They apply to the local and memory targets above.
_FOLDER_TESTS = {
    "test_get_directory_to_existing_directory", "test_get_directory_to_new_directory",
    "test_get_glob_to_existing_directory", "test_get_glob_to_new_directory",
    "test_get_glob_edge_cases", "test_get_directory_recursive",
    "test_get_directory_without_files_with_same_name_prefix",
}  # fmt: skip


class HttpFixtures(AbstractFixtures):
    @pytest.fixture
    def server(self) -> Iterator[RangeServer]:
        with RangeServer({}) as server:
            yield server

    @pytest.fixture
    def fs(self, server: RangeServer) -> netcache.NetCacheFileSystem:
        return netcache.NetCacheFileSystem(target_protocol="http", cache_dir=False,
                                           block_size=4096, memory_monitor=False,
                                           skip_instance_cache=True)  # fmt: skip

    @pytest.fixture
    def fs_join(self):  # type: ignore[no-untyped-def]
        return lambda *args: "/".join(args)

    @pytest.fixture
    def fs_path(self, server: RangeServer) -> str:
        return server.url

    @pytest.fixture
    def fs_bulk_operations_scenario_0(self, server, fs_join, fs_path):  # type: ignore[no-untyped-def]
        return self._bulk_operations_scenario_0(_ServerWriter(server), fs_join, fs_path)

    @pytest.fixture
    def fs_10_files_with_hashed_names(self, server, fs_join, fs_path):  # type: ignore[no-untyped-def]
        return self._10_files_with_hashed_names(_ServerWriter(server), fs_join, fs_path)

    @pytest.fixture(autouse=True)
    def _folders_do_not_apply(self, request: pytest.FixtureRequest) -> None:
        if request.node.originalname in _FOLDER_TESTS:
            pytest.skip("a folder over HTTP is an HTML index page: see _FOLDER_TESTS")


class TestHttpGet(AbstractGetTests, HttpFixtures):
    pass
