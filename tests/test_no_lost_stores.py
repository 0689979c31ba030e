"""Every page fetched reaches the disk tier, however far the write-back falls behind;
only memory pressure may give a store up, and every store given up is counted by why."""

from __future__ import annotations

import random
import subprocess
import sys
import threading

import fsspec
from conftest import BS, MiB, http_fs, payload

import netcache
from netcache.backends.directory import DirectoryBackend
from netcache.policies.release import PressureLevel
from netcache.testing.httpserver import RangeServer

_SECOND_PROCESS = """
import sys
import netcache
fs = netcache.NetCacheFileSystem(target_protocol="http", cache_dir=sys.argv[1],
                                 block_size=int(sys.argv[3]), check_interval=None)
with fs.open(sys.argv[2]) as f:
    while f.read(1 << 20):
        pass
print(fs.stats().retrievals.rbytes)
"""


class StarvedWorkers(DirectoryBackend):
    """A real disk tier whose write-back workers get no time until ``released``: the
    worst case of workers at the lowest CPU priority on busy cores."""

    released = threading.Event()

    def store_pages(self, pages):  # type: ignore[no-untyped-def]
        if threading.current_thread().name.startswith("netcache-writeback"):
            assert self.released.wait(60), "never released"
        super().store_pages(pages)


def _refetched_by_a_new_process(cache_dir: str, url: str) -> int:
    out = subprocess.run([sys.executable, "-c", _SECOND_PROCESS, cache_dir, url, str(BS)],
                         check=True, capture_output=True, text=True)  # fmt: skip
    return int(out.stdout)


def test_a_reader_faster_than_the_disk_loses_no_page(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = payload(24 * MiB, 3)
    cache_dir = str(tmp_path / "cache")
    with RangeServer({"stream.bin": data, "shuffled.bin": data[::-1]}) as server:
        backend = StarvedWorkers(cache_dir, BS, 1 << 30)
        backend.released = threading.Event()
        fs = netcache.NetCacheFileSystem(target_protocol="http", cache_dir=backend,
                                         block_size=BS, memory_limit="4MiB",
                                         check_interval=None, memory_monitor=False)  # fmt: skip
        with fs.open(f"{server.url}/stream.bin") as f:  # streamed in 1 MiB reads
            got = b"".join(iter(lambda: f.read(MiB), b""))
        assert got == data
        offsets = list(range(0, len(data), 256 << 10))
        random.Random(1).shuffle(offsets)
        with fs.open(f"{server.url}/shuffled.bin") as f:  # a shuffled 256 KiB pass
            for off in offsets:
                f.seek(off)
                assert f.read(256 << 10) == data[::-1][off : off + (256 << 10)]
        st = fs.stats()
        # memory held no more than its budget and the queue's share beyond it
        assert st.pages.bytes <= 4 * MiB + fs.context.writeback.max_pending_bytes
        assert st.stores.own > 0  # the reader paced itself to the disk
        backend.released.set()
        assert fs.flush(60)
        st = fs.stats()
        assert st.unstored == type(st.unstored)()  # nothing given up
        netcache.close_all()
        for name in ("stream.bin", "shuffled.bin"):
            assert _refetched_by_a_new_process(cache_dir, f"{server.url}/{name}") == 0


def test_only_pressure_gives_a_store_up_and_it_is_counted() -> None:
    from conftest import GatedBackend

    backend = GatedBackend(BS)
    mem = fsspec.filesystem("memory")
    mem.pipe_file("/p/f.bin", payload(8 * BS, 4))
    fs = netcache.NetCacheFileSystem(fs=mem, cache_dir=backend, block_size=BS,
                                     memory_limit=64 * BS, memory_monitor=False)  # fmt: skip
    assert fs.cat_file("/p/f.bin") == payload(8 * BS, 4)
    assert backend.storing.wait(10)  # one being stored, seven queued
    fs.reclaim(8 * BS, level=PressureLevel.HIGH)  # pressure: queued stores cancelled
    st = fs.stats()
    # the busy page was asked about in both walks: bsy counts answers
    assert st.vmscan.can == 7 and st.unstored.pressure == 7 and st.vmscan.bsy == 2
    backend.gate.set()
    assert fs.flush(10)
    assert [k.index for k in backend.stored] == [0]


def test_a_store_the_disk_fails_is_counted_by_why(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import errno

    class Full(DirectoryBackend):
        def store_pages(self, pages):  # type: ignore[no-untyped-def]
            raise OSError(errno.EIO if pages[0][0].index % 2 else errno.ENOSPC, "no")

    mem = fsspec.filesystem("memory")
    mem.pipe_file("/q/f.bin", payload(4 * BS, 5))
    full = Full(str(tmp_path), BS, 1 << 30)
    full.store_batch_pages = 1  # a page a store: pages 0 and 2 find the disk full
    fs = netcache.NetCacheFileSystem(fs=mem, cache_dir=full, block_size=BS,
                                     memory_monitor=False)  # fmt: skip
    assert fs.cat_file("/q/f.bin") == payload(4 * BS, 5)
    assert fs.flush(10)
    st = fs.stats()
    assert (st.unstored.full, st.unstored.error) == (2, 2) and st.stores.pgs == 0


def test_stores_still_queued_at_close_are_counted(server: RangeServer, cache_dir: str) -> None:
    from conftest import GatedBackend

    backend = GatedBackend(BS)
    fs = http_fs(backend, memory_monitor=False)
    assert fs.cat_file(f"{server.url}/big.bin", 0, 4 * BS)
    assert backend.storing.wait(10)
    assert not netcache.close_all(drain_timeout=0.2)  # the gate holds the first store
    backend.gate.set()
    st = fs.context.stats()
    assert st.unstored.closed == 3
