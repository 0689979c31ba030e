"""The disk tier's bookkeeping stays true: metadata written again after an invalidation,
a full disk culled before a store is given up, small limits that hold what they say,
targets rebuilt across fork(), and offsets of any integer type."""

from __future__ import annotations

import multiprocessing
import threading

import fsspec
import numpy as np
import pytest
from conftest import BS, MiB, http_fs, payload

import netcache
from netcache.backends.segments import table_size
from netcache.page import PageKey
from netcache.testing.httpserver import RangeServer


def _reopen_offline(cache_dir: str) -> netcache.NetCacheFileSystem:
    netcache.close_all()
    netcache.NetCacheFileSystem.clear_instance_cache()
    return http_fs(cache_dir, check_interval=0, offline=True, readahead=False)


@pytest.mark.parametrize("how", ["invalidate", "clear"])
def test_metadata_is_written_again_after_an_invalidation(cache_dir: str, how: str) -> None:
    data = payload(6 * BS, 21)
    with RangeServer({"m.bin": data}) as server:
        url = f"{server.url}/m.bin"
        fs = http_fs(cache_dir, check_interval=None, readahead=False)
        assert fs.cat_file(url) == data and fs.flush(10)
        if how == "invalidate":
            fs.invalidate(url)
        else:
            fs.clear()
        assert fs.cat_file(url) == data and fs.flush(10)  # read, and stored, again
        server.stop()  # the remote goes away
        # another process, offline: the version and the pages come from the disk tier
        again = _reopen_offline(cache_dir)
        assert again.cat_file(url) == data
        assert again.stats().retrievals.disk == 6


def test_a_disk_limit_of_two_pages_holds_two_pages(cache_dir: str) -> None:
    smallest = 2 * (BS + table_size(1))
    with pytest.raises(ValueError, match=f"disk_limit=.*{smallest} bytes"):
        http_fs(cache_dir, disk_limit=2 * BS)
    fs = http_fs(cache_dir, disk_limit=smallest)
    backend = fs.context.backend
    assert backend is not None
    keys = [PageKey("ab" * 16, "cd" * 16, i) for i in range(3)]
    backend.store_page(keys[0], payload(BS, 0))
    backend.store_page(keys[1], payload(BS, 1))
    assert backend.usage().pages == 2
    assert bytes(backend.load_page(keys[0])) == payload(BS, 0)  # type: ignore[arg-type]
    backend.store_page(keys[2], payload(BS, 2))  # a third: the least recently used goes
    assert backend.usage().pages == 2 and backend.load_page(keys[1]) is None


def test_a_full_disk_is_culled_before_a_store_is_given_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from test_reliability import small_filesystem

    mem = fsspec.filesystem("memory")
    files = {f"/full/{i}": payload(8 * BS, i) for i in range(8)}  # 4 MiB in all
    for path, data in files.items():
        mem.pipe_file(path, data)
    where = str(tmp_path / "small")
    with small_filesystem(where, "2m") as mounted:
        if not mounted:
            pytest.skip("no tmpfs can be mounted here")
        fs = netcache.NetCacheFileSystem(fs=mem, cache_dir=where, block_size=BS,
                                         disk_limit="64MiB", check_interval=None,
                                         memory_monitor=False)  # fmt: skip
        for path, data in files.items():
            assert fs.cat_file(path) == data
            assert fs.flush(30)
        st = fs.stats()
        # the folder filled up long before its 64 MiB limit: older files were culled to
        # make room, and no store was given up
        assert st.unstored.full == 0 and st.stores.pgs == 8 * 8 and st.disk.culls > 0
        last = fs.reader.pin_version("/full/7")
        backend = fs.context.backend
        assert backend is not None
        assert all(backend.holds(PageKey(last.file_id, last.version, i)) for i in range(8))


def _read_in_forked_child(fs: netcache.NetCacheFileSystem, url: str, out) -> None:  # type: ignore[no-untyped-def]
    try:
        out.put(fs.cat_file(url, 10, 20))
    except BaseException as exc:  # the parent asserts on what the child saw
        out.put(repr(exc))


def test_a_target_is_rebuilt_in_a_forked_child(server: RangeServer, cache_dir: str) -> None:
    url = f"{server.url}/big.bin"
    fs = http_fs(cache_dir)
    assert fs.cat_file(url, 0, 10)  # the parent's event loop and session are in use
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_read_in_forked_child, args=(fs, f"{server.url}/small.bin", out))
    child.start()
    got = out.get(timeout=60)
    child.join(60)
    assert got == server.data("/small.bin")[10:20]
    assert child.exitcode == 0
    assert fs.cat_file(url, 0, 10) == server.data("/big.bin")[:10]  # the parent's own


def test_offsets_may_be_numpy_integers(server: RangeServer, cache_dir: str) -> None:
    url = f"{server.url}/big.bin"
    data = server.data("/big.bin")
    fs = http_fs(cache_dir)
    assert fs.cat_file(url, np.int64(5), np.uint32(MiB)) == data[5:MiB]
    starts, ends = np.array([0, 100]), np.array([10, 200])
    assert fs.cat_ranges([url, url], starts, ends) == [data[:10], data[100:200]]
    with fs.open(url) as f:
        f.seek(np.int64(1000))
        assert f.read(np.int32(10)) == data[1000:1010]
    with pytest.raises(TypeError, match="start="):
        fs.cat_file(url, True, 10)


def test_a_cache_being_built_holds_up_no_other(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from netcache.backends.directory import DirectoryBackend

    gate, entered = threading.Event(), threading.Event()
    rescan = DirectoryBackend._rescan

    def slow_rescan(self: DirectoryBackend) -> None:
        if "slow" in self.files and not gate.is_set():  # a large folder being read
            entered.set()
            assert gate.wait(30)
        rescan(self)

    monkeypatch.setattr(DirectoryBackend, "_rescan", slow_rescan)
    made: dict[str, netcache.NetCacheFileSystem] = {}

    def build(name: str) -> None:
        made[name] = netcache.NetCacheFileSystem(
            target_protocol="memory", cache_dir=str(tmp_path / name), memory_monitor=False,
            skip_instance_cache=True,
        )  # fmt: skip

    slow = threading.Thread(target=build, args=("slow",))
    slow.start()
    assert entered.wait(10)
    other = threading.Thread(target=build, args=("fast",))
    other.start()
    other.join(10)  # the registry's lock is not held while the slow folder is read
    done_first = not other.is_alive()
    twin = threading.Thread(target=build, args=("slow",))  # the same folder, meanwhile
    twin.start()
    gate.set()
    slow.join(30)
    twin.join(30)
    assert done_first and "fast" in made
    assert made["slow"].context is netcache.NetCacheFileSystem(
        target_protocol="memory", cache_dir=str(tmp_path / "slow"), memory_monitor=False,
        skip_instance_cache=True,
    ).context  # fmt: skip
