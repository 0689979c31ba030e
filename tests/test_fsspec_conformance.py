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
