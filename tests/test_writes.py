"""Writes go to the target and invalidate the cached pages of what they touch."""

from __future__ import annotations

import fsspec
import pytest
from conftest import BS, payload

import netcache


@pytest.fixture
def fs(tmp_path) -> netcache.NetCacheFileSystem:  # type: ignore[no-untyped-def]
    local = fsspec.filesystem("file")
    return netcache.NetCacheFileSystem(fs=local, cache_dir=str(tmp_path / "cache"),
                                       block_size=BS, check_interval=None)  # fmt: skip


def test_pipe_open_write_put_invalidate(fs: netcache.NetCacheFileSystem, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "f.bin")
    one, two, three, four = (payload(3 * BS, i) for i in range(4))
    fs.pipe_file(path, one)
    assert fs.cat_file(path) == one
    assert fs.flush(10)
    # check_interval=None trusts the cache forever, so only invalidation can show new bytes
    fs.pipe_file(path, two)
    assert fs.cat_file(path) == two
    with fs.open(path, "wb") as f:
        f.write(three)
    assert fs.cat_file(path) == three
    src = tmp_path / "local.bin"
    src.write_bytes(four)
    fs.put_file(str(src), path)
    assert fs.cat_file(path) == four
    assert fs.stats().invalidations.n >= 4
    # a later process with the same folder sees the last bytes, not an old page
    assert fs.flush(10)
    netcache.close_all()
    netcache.NetCacheFileSystem.clear_instance_cache()
    again = netcache.NetCacheFileSystem(
        fs=fsspec.filesystem("file"), block_size=BS, cache_dir=str(tmp_path / "cache"),
        check_interval=None,
    )  # fmt: skip
    assert again.cat_file(path) == four


def test_rm_and_mv_invalidate(fs: netcache.NetCacheFileSystem, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a, b = str(tmp_path / "a.bin"), str(tmp_path / "b.bin")
    fs.pipe_file(a, payload(2 * BS, 1))
    fs.pipe_file(b, payload(2 * BS, 2))
    assert fs.cat_file(a) == payload(2 * BS, 1) and fs.cat_file(b) == payload(2 * BS, 2)
    fs.mv(a, b)
    assert fs.cat_file(b) == payload(2 * BS, 1)
    with pytest.raises(FileNotFoundError):
        fs.cat_file(a)
    fs.rm(b)
    with pytest.raises(FileNotFoundError):
        fs.cat_file(b)
    assert fs.stats().pages.n == 0


def test_invalidate_and_clear(fs: netcache.NetCacheFileSystem, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "f.bin")
    fs.pipe_file(path, payload(4 * BS, 1))
    fs.cat_file(path)
    assert fs.flush(10)
    usage = fs.disk_usage()
    assert usage is not None and usage.pages == 4
    assert fs.invalidate(path) == 8  # 4 in memory, 4 on disk
    usage = fs.disk_usage()
    assert usage is not None and usage.pages == 0 and fs.stats().pages.n == 0
    fs.cat_file(path)
    assert fs.flush(10)
    fs.clear()
    usage = fs.disk_usage()
    assert usage is not None and usage.pages == 0 and fs.stats().pages.n == 0


def test_invalidation_disowns_a_fetch_in_flight() -> None:
    import threading

    from fsspec.implementations.memory import MemoryFileSystem

    class SlowMemory(MemoryFileSystem):
        gate = threading.Event()
        entered = threading.Event()

        def cat_file(self, path, start=None, end=None, **kwargs):  # type: ignore[no-untyped-def]
            data = super().cat_file(path, start, end, **kwargs)
            if not self.gate.is_set():
                self.entered.set()
                assert self.gate.wait(10)
            return data

    target = SlowMemory(skip_instance_cache=True)
    target.pipe_file("/inflight/f", b"old" * BS)
    fs = netcache.NetCacheFileSystem(fs=target, cache_dir=False, block_size=BS,
                                     check_interval=None)  # fmt: skip
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fs.cat_file("/inflight/f", 0, 3)))
    reader.start()
    assert SlowMemory.entered.wait(10)  # the old bytes are on their way
    target.pipe_file("/inflight/f", b"new" * BS)  # changed behind netcache's back
    fs.invalidate("/inflight/f")
    SlowMemory.gate.set()
    assert fs.cat_file("/inflight/f", 0, 3) == b"new"  # a fresh claim, not the old fetch
    reader.join(10)
    assert got == [b"old"]  # the reader that asked before the invalidation
    assert fs.cat_file("/inflight/f", 0, 3) == b"new"  # and the old page was not admitted
