"""Read-ahead: only for sequential readers, bounded, never past EOF, never a failure
that reaches a reader who does not need the page, off under critical pressure."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from conftest import BS, payload, wait_for
from fsspec.implementations.memory import MemoryFileSystem

import netcache
import netcache.page
from netcache import MemoryPressureMonitor, MemoryReading
from netcache.policies import PressureLevel
from netcache.readahead import Readahead


def test_window_grows_while_sequential_and_resets_on_seek() -> None:
    ra = Readahead(block_size=100, max_bytes=1600, size=10_000)
    assert ra.advise(0, 100) == range(1, 5)  # 4 pages ahead of page 0
    assert ra.advise(100, 200) == range(5, 10)  # window 8: up to page 9
    assert ra.advise(200, 300) == range(10, 19)  # window 16 (the cap)
    assert ra.advise(300, 400) == range(19, 20)
    assert ra.advise(5000, 5100) is None  # a seek: random access reads nothing ahead
    assert ra.advise(5100, 5200) == range(52, 56)
    assert ra.advise(9900, 10_000) is None


def test_steady_state_asks_in_batches() -> None:
    ra = Readahead(block_size=100, max_bytes=3200, size=100_000, batch_bytes=800)
    got = [ra.advise(i * 100, (i + 1) * 100) for i in range(12)]
    asked = [r for r in got if r is not None]
    assert asked[0] == range(1, 5)  # ramp-up starts at once
    assert all(len(r) >= 8 for r in asked[3:])  # then 8 pages (800 bytes) at a time
    assert [p for r in asked for p in r] == list(range(1, asked[-1][-1] + 1))  # no gaps


def test_window_starts_at_four_reads_and_grows_eightfold_while_small() -> None:
    kib = 1024
    ra = Readahead(block_size=128 * kib, max_bytes=32 << 20, size=1 << 30)  # 256 pages
    # a first read of 8 pages: a window of 32 (at least 1/16 of the most, so it doubles)
    assert ra.advise(0, 1 << 20) == range(8, 40)
    assert ra.request_pages == 8  # a quarter of the window
    assert ra.advise(1 << 20, 2 << 20) == range(40, 80)  # window 64
    assert ra.request_pages == 16
    assert ra.advise(2 << 20, 3 << 20) == range(80, 152)  # window 128
    assert ra.advise(3 << 20, 4 << 20) == range(152, 288)  # window 256, the most
    assert ra.request_pages == 64
    small = Readahead(block_size=128 * kib, max_bytes=32 << 20, size=1 << 30)
    assert small.advise(0, 64 * kib) == range(1, 5)  # a small read: INITIAL_PAGES
    assert small.request_pages == 8  # never under 1 MiB a request
    assert small.advise(64 * kib, 128 * kib) == range(5, 33)  # eightfold while under 16
    assert small.advise(128 * kib, 192 * kib) == range(33, 66)  # then twofold


def test_never_past_eof_and_off_switch() -> None:
    ra = Readahead(block_size=100, max_bytes=1 << 20, size=450)
    assert ra.advise(0, 100) == range(1, 5)  # page 4 is the last
    assert ra.advise(100, 450) is None
    assert Readahead(block_size=100, max_bytes=0, size=10_000).advise(0, 100) is None


class Memory(MemoryFileSystem):
    """A memory target that counts data requests and can fail those from read-ahead."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.requested: list[tuple[int, int]] = []
        self.fail_readahead = False

    def cat_file(self, path, start=None, end=None, **kwargs):  # type: ignore[no-untyped-def]
        ahead = threading.current_thread().name.startswith("netcache-readahead")
        if ahead and self.fail_readahead:
            raise ConnectionResetError("read-ahead made to fail")
        with self.lock:
            self.requested.append((start, end))
        return super().cat_file(path, start, end, **kwargs)


def make(npages: int, **kwargs: object) -> tuple[netcache.NetCacheFileSystem, Memory, bytes]:
    target = Memory(skip_instance_cache=True)
    data = payload(npages * BS - 100, npages)
    target.pipe_file("/ra/f", data)
    kwargs.setdefault("cache_dir", False)
    fs = netcache.NetCacheFileSystem(fs=target, block_size=BS, check_interval=None,
                                     skip_instance_cache=True, **kwargs)  # fmt: skip
    return fs, target, data


def remote_pages(fs: netcache.NetCacheFileSystem) -> int:
    return fs.stats().retrievals.remote


def test_sequential_reader_is_read_ahead_of_and_bounded() -> None:
    fs, target, data = make(64, readahead=8 * BS)
    with fs.open("/ra/f") as f:
        assert f.read(BS) == data[:BS]
        assert f.read(BS) == data[BS : 2 * BS]
        assert wait_for(lambda: remote_pages(fs) >= 9)
        # the reader has used 2 pages; at most 2 + the 8-page window were fetched
        assert remote_pages(fs) <= 2 + 8
        out = f.read()
    assert out == data[2 * BS :]
    assert remote_pages(fs) == 64  # every page once, none past EOF
    assert all(end <= len(data) for _, end in target.requested)


def test_read_ahead_requests_start_small_and_grow() -> None:
    """While the window grows, each request is a quarter of it (at least 1 MiB): the
    pages a reader needs next come alone, not at the end of an 8 MiB answer."""
    fs, target, data = make(512)  # 32 MiB of 64 KiB pages, the default 32 MiB window
    ahead: list[tuple[int, int]] = []
    cat_file = target.cat_file

    def recording(path, start=None, end=None, **kwargs):  # type: ignore[no-untyped-def]
        if threading.current_thread().name.startswith("netcache-readahead"):
            with target.lock:
                ahead.append((start, end))
        return cat_file(path, start, end, **kwargs)

    target.cat_file = recording  # type: ignore[method-assign]
    with fs.open("/ra/f") as f:
        assert b"".join(iter(lambda: f.read(1 << 20), b"")) == data
    sizes = [end - start for start, end in sorted(ahead)]
    assert sorted(ahead)[0] == (1 << 20, 2 << 20)  # after the first look's 1 MiB
    assert sizes[:4] == [1 << 20] * 4  # a 4 MiB window, in 4 requests
    assert max(sizes) == 8 << 20  # the steady state's requests, never more


def test_random_reader_is_not_read_ahead_of() -> None:
    fs, _, data = make(64, random_whole_below=64 * BS - 100)  # the file is as large
    with fs.open("/ra/f") as f:
        for page in (40, 7, 22, 3, 55):
            f.seek(page * BS + 10)
            assert f.read(100) == data[page * BS + 10 : page * BS + 110]
    assert remote_pages(fs) == 5


def test_readahead_off() -> None:
    fs, _, data = make(16, readahead=False)
    with fs.open("/ra/f") as f:
        assert f.read(2 * BS) == data[: 2 * BS]
    assert remote_pages(fs) == 2


def test_failed_readahead_never_reaches_the_reader(caplog: pytest.LogCaptureFixture) -> None:
    fs, target, data = make(32)
    target.fail_readahead = True
    with caplog.at_level(logging.WARNING, logger="netcache"):
        with fs.open("/ra/f") as f:
            for i in range(32):
                assert f.read(BS) == data[i * BS : (i + 1) * BS]  # own fetches succeed
        assert fs.stats().retrievals.err >= 1  # read-ahead did fail: counted, and said once

        def said() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "read-ahead fetch failed" in r.getMessage()]

        assert wait_for(lambda: len(said()) == 1) and len(said()) == 1
    target.fail_readahead = False
    assert fs.cat_file("/ra/f") == data  # nothing poisoned


def test_critical_pressure_stops_readahead_and_it_resumes() -> None:
    reading = [MemoryReading(97, 1 << 40)]
    monitor = MemoryPressureMonitor(100, probe=lambda: reading[0], autostart=False,
                                    available_floor=0)  # fmt: skip
    fs, _, data = make(64, memory_monitor=monitor)
    assert monitor.check() is PressureLevel.CRITICAL
    with fs.open("/ra/f") as f:
        for i in range(4):
            assert f.read(BS) == data[i * BS : (i + 1) * BS]
    assert remote_pages(fs) == 4 and fs.stats().pages.n == 0
    reading[0] = MemoryReading(0, 1 << 40)
    assert monitor.check() is PressureLevel.NONE
    with fs.open("/ra/f") as f:
        assert f.read(BS) == data[:BS]
        assert wait_for(lambda: remote_pages(fs) > 4 + 1)


@pytest.mark.parametrize("readahead", ["1KiB", -1])
def test_bad_readahead_argument(readahead: object) -> None:
    with pytest.raises((ValueError, TypeError), match="readahead"):
        make(1, readahead=readahead)


def test_a_reader_can_take_over_pages_another_claim_holds() -> None:
    """The last resort after read-ahead failed under a reader three times: fetch the
    pages it would wait for itself, without admitting them over the other claim."""
    fs, _, data = make(4)
    fetcher = fs.context.fetcher
    cookie = fs.reader.pin_version("/ra/f")
    keys = [netcache.page.PageKey(cookie.file_id, cookie.version, i) for i in range(2)]
    held = fs.context.page_cache.claim_missing(keys)  # a fetch that never finishes
    assert set(held) == set(keys)
    pages = fetcher._gather(fs.fs, dict.fromkeys(keys, cookie), verify=True, wait=False)
    assert pages is not None
    assert b"".join(bytes(pages[k].data) for k in keys) == data[: 2 * BS]
    assert fs.stats().pages.n == 0  # not admitted: the other claim is still the owner


def test_readahead_in_flight_is_bounded_by_the_memory_budget() -> None:
    """Answers in flight sit outside the budget: at most 1/8 of it, in requests of at most
    1/32 of it (a 32-page budget: 4 pages in flight, one page per request)."""

    class Slow(Memory):
        def __init__(self) -> None:
            super().__init__(skip_instance_cache=True)
            self.now = self.most = 0

        def cat_file(self, path, start=None, end=None, **kwargs):  # type: ignore[no-untyped-def]
            ahead = threading.current_thread().name.startswith("netcache-readahead")
            with self.lock:
                self.now += (end - start) * ahead
                self.most = max(self.most, self.now)
            try:
                if ahead:
                    time.sleep(0.01)  # slow enough for requests to pile up
                return super().cat_file(path, start, end, **kwargs)
            finally:
                with self.lock:
                    self.now -= (end - start) * ahead

    target = Slow()
    data = payload(120 * BS, 4)
    target.pipe_file("/ra/big", data)
    fs = netcache.NetCacheFileSystem(fs=target, block_size=BS, check_interval=None,
                                     cache_dir=False, memory_limit=32 * BS,
                                     skip_instance_cache=True)  # fmt: skip
    with fs.open("/ra/big") as f:
        assert b"".join(iter(lambda: f.read(BS // 2), b"")) == data
    assert 0 < target.most <= 4 * BS  # read ahead, but never more than 4 pages at once
    assert max(end - start for start, end in target.requested) <= BS


def test_a_window_larger_than_the_in_flight_bound_is_still_read_ahead() -> None:
    """Read-ahead past the in-flight bound goes out as room frees, not never: the
    reader does not fall back to fetching page after page itself (a round trip a read)."""

    class Slow(Memory):
        def cat_file(self, path, start=None, end=None, **kwargs):  # type: ignore[no-untyped-def]
            if threading.current_thread().name.startswith("netcache-readahead"):
                time.sleep(0.005)  # a remote's latency: the reader catches up and waits
            else:
                with self.lock:
                    self.by_reader += (end - start) // BS
            return super().cat_file(path, start, end, **kwargs)

    target = Slow(skip_instance_cache=True)
    target.by_reader = 0  # type: ignore[attr-defined]
    data = payload(120 * BS, 5)
    target.pipe_file("/ra/big", data)
    # 64 pages of memory: 8 pages in flight at most, in requests of 2; a 32-page window
    fs = netcache.NetCacheFileSystem(fs=target, block_size=BS, check_interval=None,
                                     cache_dir=False, memory_limit=64 * BS,
                                     readahead=32 * BS, skip_instance_cache=True)  # fmt: skip
    with fs.open("/ra/big") as f:
        assert b"".join(iter(lambda: f.read(BS // 2), b"")) == data
    # the first read's own page or two; the rest came ahead of the reader (when requests
    # beyond the bound were dropped, the reader fetched ~90 of the 120 pages itself)
    assert target.by_reader <= 12  # type: ignore[attr-defined]
    assert fs.stats().retrievals.remote == 120
