"""The read-ahead pipe: the number of requests in flight doubles while that buys
throughput, stops where it does not, and the scheduler never sends more at once."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from conftest import BS, payload, wait_for
from fsspec.implementations.memory import MemoryFileSystem

import netcache
from netcache.pipe import GROWTH, STALLS, PipeGauge
from netcache.readahead import READAHEAD_CHUNK_BYTES, in_flight_limit


def run_round(gauge: PipeGauge, start: float, seconds: float, nbytes: int = 100) -> float:
    """One round of ``gauge.limit`` requests ending over ``seconds``, others waiting."""
    n = gauge.limit
    for i in range(1, n + 1):
        gauge.finished(nbytes, waiting=True, now=start + seconds * i / n)
    return start + seconds


def test_limit_doubles_while_each_round_delivers_more() -> None:
    gauge = PipeGauge(initial=2, ceiling=16)
    now = 0.0
    gauge.finished(100, waiting=True, now=now)  # the first end starts the round
    limits = []
    for _ in range(5):
        # each request takes 1 s whatever the number: a per-connection cap
        now = run_round(gauge, now, 1.0)
        limits.append(gauge.limit)
    assert limits == [4, 8, 16, 16, 16]
    assert gauge.full  # at the ceiling: no more growth


def test_limit_goes_back_when_more_requests_buy_nothing() -> None:
    gauge = PipeGauge(initial=2, ceiling=32)
    now = 0.0
    gauge.finished(100, waiting=True, now=now)
    now = run_round(gauge, now, 1.0)  # 2 requests a second
    assert gauge.limit == 4
    for _ in range(STALLS):  # 4 at once deliver no more: a shared bound (or the CPU)
        assert not gauge.full
        now = run_round(gauge, now, 2.0)
    assert gauge.full and gauge.limit == 2
    now = run_round(gauge, now, 0.1)  # once full, it stays
    assert gauge.limit == 2


def test_growth_needs_the_growth_factor() -> None:
    gauge = PipeGauge(initial=4, ceiling=32)
    now = 0.0
    gauge.finished(100, waiting=True, now=now)
    now = run_round(gauge, now, 1.0)
    assert gauge.limit == 8
    # 8 requests in 2 / GROWTH * 0.99 s: just short of GROWTH times the rate
    for _ in range(STALLS):
        now = run_round(gauge, now, 2 / GROWTH / 0.99)
    assert gauge.limit == 4 and gauge.full


def test_rounds_where_nothing_waited_measure_the_reader_and_do_not_count() -> None:
    gauge = PipeGauge(initial=2, ceiling=32)
    for i in range(100):
        gauge.finished(100, waiting=False, now=float(i))
    assert gauge.limit == 2 and not gauge.full


@pytest.mark.parametrize(("initial", "ceiling"), [(0, 4), (5, 4)])
def test_bad_gauge_arguments(initial: int, ceiling: int) -> None:
    with pytest.raises(ValueError, match="initial"):
        PipeGauge(initial=initial, ceiling=ceiling)


def test_in_flight_bound_grows_with_the_pipe_within_the_memory_budget() -> None:
    budget = 512 << 20
    assert in_flight_limit(budget, 4) == 64 << 20
    assert in_flight_limit(budget, 8) == 2 * 8 * READAHEAD_CHUNK_BYTES
    assert in_flight_limit(budget, 32) == budget // 4
    assert in_flight_limit(64 << 20, 32) == 8 << 20  # a small budget: an eighth of it


class Gated(MemoryFileSystem):
    """A memory target whose read-ahead requests wait on a gate; counts them in flight."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def cat_file(self, path, start=None, end=None, **kwargs):  # type: ignore[no-untyped-def]
        if not threading.current_thread().name.startswith("netcache-readahead"):
            return super().cat_file(path, start, end, **kwargs)
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            assert self.gate.wait(30), "the test never opened the gate"
            return super().cat_file(path, start, end, **kwargs)
        finally:
            with self.lock:
                self.now -= 1


def gated(npages: int, **options: Any) -> tuple[netcache.NetCacheFileSystem, Gated, bytes]:
    """A memory-only cache over a ``Gated`` target holding ``/p/f``, ``npages`` long."""
    target = Gated(skip_instance_cache=True)
    data = payload(npages * BS, npages)
    target.pipe_file("/p/f", data)
    fs = netcache.NetCacheFileSystem(fs=target, block_size=BS, check_interval=None,
                                     cache_dir=False, skip_instance_cache=True,
                                     **options)  # fmt: skip
    return fs, target, data


def test_scheduler_sends_no_more_requests_at_once_than_the_pipe_takes() -> None:
    npages = 256
    fs, target, data = gated(npages)
    scheduler = fs.reader.context.readahead
    scheduler.pipe.limit = 3  # as if measured
    cookie = fs.reader.pin_version("/p/f")
    started = scheduler.start(target, cookie, range(0, npages), True, request_bytes=BS)
    assert started > 3  # more asked than the pipe takes: the rest wait in the queue
    assert wait_for(lambda: target.now == 3)
    assert len(scheduler._queue) > 0
    target.gate.set()
    with fs.open("/p/f") as f:
        assert f.read() == data
    assert target.most == 3


def random_reads(f: object, data: bytes, offsets: list[int], n: int = 1000) -> None:
    for off in offsets:
        f.seek(off)  # type: ignore[attr-defined]
        assert f.read(n) == data[off : off + n]  # type: ignore[attr-defined]


def test_a_small_file_read_at_random_is_fetched_whole_in_the_background() -> None:
    npages = 40
    fs, target, data = gated(npages, random_whole_below=(npages + 1) * BS)
    target.gate.set()
    with fs.open("/p/f") as f:
        random_reads(f, data, [30 * BS + 5, 3 * BS, 17 * BS])
        assert wait_for(lambda: fs.stats().retrievals.remote == npages)
        random_reads(f, data, [i * BS + 7 for i in range(npages)])
    assert fs.stats().retrievals.remote == npages  # every page once: the file's size


def test_a_file_over_the_limit_read_at_random_fetches_only_what_is_read() -> None:
    npages = 40
    fs, target, data = gated(npages, random_whole_below=npages * BS)
    with fs.open("/p/f") as f:
        random_reads(f, data, [30 * BS + 5, 3 * BS, 17 * BS, 9 * BS])
    fs.flush()
    assert target.most == 0  # no read-ahead request at all
    assert fs.stats().retrievals.remote <= 4 + 1  # the pages read (and a first look)


def test_bad_random_whole_below() -> None:
    with pytest.raises(TypeError, match="random_whole_below"):
        netcache.NetCacheFileSystem(fs=MemoryFileSystem(), cache_dir=False,
                                    random_whole_below=True)  # fmt: skip
    with pytest.raises(ValueError, match="random_whole_below"):
        netcache.NetCacheFileSystem(fs=MemoryFileSystem(), cache_dir=False,
                                    random_whole_below="lots")  # fmt: skip


def test_a_readers_own_pages_are_taken_back_from_requests_not_yet_sent() -> None:
    """The pipe takes one request, held at a gate: the reader's page, queued behind it,
    is fetched by the reader at once, not after the gate opens."""
    npages = 64
    fs, target, data = gated(npages)
    scheduler = fs.reader.context.readahead
    scheduler.pipe.limit = 1
    cookie = fs.reader.pin_version("/p/f")
    assert scheduler.start(target, cookie, range(npages), True, request_bytes=4 * BS) == npages
    assert wait_for(lambda: target.now == 1)  # the first request is held at the gate
    with fs.open("/p/f") as f:
        f.seek(50 * BS)
        assert f.read(BS) == data[50 * BS : 51 * BS]  # the gate is still shut
    assert target.now == 1
    target.gate.set()
    with fs.open("/p/f") as f:
        assert f.read() == data
    assert fs.stats().retrievals.remote == npages  # none twice
