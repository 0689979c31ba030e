"""The memory-pressure monitor: levels, reclaim, graded release, critical admission."""

from __future__ import annotations

import logging

import fsspec
import pytest
from conftest import BS, GatedBackend, payload

import netcache
from netcache import MemoryPressureMonitor, MemoryReading
from netcache.buffers import drop_recycled, recycled_bytes
from netcache.page import StoreState
from netcache.policies import PressureLevel

L = PressureLevel
GiB = 1 << 30


class Probe:
    """A probe the test sets by hand: RSS as given, or a base plus the caches' bytes."""

    def __init__(self, rss: int = 0, available: int = 100 * GiB) -> None:
        self.rss = rss
        self.available = available
        self.fs: list[netcache.NetCacheFileSystem] = []

    def __call__(self) -> MemoryReading:
        cached = sum(fs.stats().pages.bytes for fs in self.fs)
        return MemoryReading(self.rss + cached, self.available)


def monitor(probe: Probe, limit: int = 1000, **kwargs: object) -> MemoryPressureMonitor:
    return MemoryPressureMonitor(limit, probe=probe, autostart=False,
                                 available_floor=0, **kwargs)  # fmt: skip


def test_levels_with_hysteresis() -> None:
    probe = Probe()
    m = monitor(probe)
    seen = []
    for rss in (790, 800, 899, 900, 950, 940, 919, 880, 860, 750, 701, 699, 790, 800):
        probe.rss = rss
        seen.append(m.check())
    assert seen == [L.NONE, L.MODERATE, L.MODERATE, L.HIGH, L.CRITICAL, L.CRITICAL,
                    L.HIGH, L.HIGH, L.MODERATE, L.MODERATE, L.MODERATE, L.NONE,
                    L.NONE, L.MODERATE]  # fmt: skip
    g = m.gauges()
    assert g["pressure.readings"] == 14
    assert (g["pressure.mod"], g["pressure.high"], g["pressure.crit"]) == (2, 1, 1)


def test_available_floor() -> None:
    probe = Probe(rss=0, available=900)
    m = MemoryPressureMonitor(10_000, probe=probe, autostart=False, available_floor=1000)
    assert m.check() is L.HIGH
    probe.available = 400
    assert m.check() is L.CRITICAL
    probe.available = 5000
    assert m.check() is L.NONE


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"moderate": 0.5, "target": 0.6}, "target < moderate"),
     ({"high": 0.99, "critical": 0.9}, "moderate <= high <= critical"),
     ({"critical": 1.5}, "critical=1.5 must be a fraction"),
     ({"interval": 0}, "interval=0"),
     ({"hysteresis": 0.5}, "hysteresis=0.5"),
     ({"limit": "lots"}, "limit='lots'")],
)  # fmt: skip
def test_bad_monitor_arguments(kwargs: dict, match: str) -> None:
    kwargs.setdefault("limit", 1000)
    with pytest.raises(ValueError, match=match):
        MemoryPressureMonitor(autostart=False, **kwargs)


def test_probe_must_be_callable() -> None:
    with pytest.raises(TypeError, match="probe="):
        MemoryPressureMonitor(1000, probe=42, autostart=False)  # type: ignore[arg-type]


def mem_fs(m: MemoryPressureMonitor, name: str, npages: int, **kwargs: object):  # type: ignore[no-untyped-def]
    mem = fsspec.filesystem("memory")
    mem.pipe_file(f"/pr/{name}", payload(npages * BS, hash(name) % 1000))
    kwargs.setdefault("cache_dir", False)
    return netcache.NetCacheFileSystem(fs=mem, block_size=BS, memory_monitor=m,
                                       skip_instance_cache=True, **kwargs)  # fmt: skip


def test_reclaims_down_to_target() -> None:
    probe = Probe(rss=3 * BS)
    m = monitor(probe, limit=40 * BS)  # moderate at 32 pages, target 28
    fs = mem_fs(m, "a", 30)
    probe.fs.append(fs)
    fs.cat_file("/pr/a")
    drop_recycled()
    assert m.check() is L.MODERATE  # 33 pages of 40
    # the reclaimed pages' buffers are given back, not kept for reuse
    assert recycled_bytes() == 0
    st = fs.stats()
    assert st.pages.n == 24  # 3 + 24 = 27 pages: under the target of 28
    assert st.pressure.rpages == 6 and st.pressure.rbytes == 6 * BS
    assert st.vmscan.nos == 6
    assert m.check() is L.NONE
    assert fs.stats().pressure.level == 0


def test_pressure_holds_the_cache_at_its_reclaimed_size() -> None:
    probe = Probe(rss=3 * BS)
    m = monitor(probe, limit=40 * BS)
    fs = mem_fs(m, "hold", 40)
    probe.fs.append(fs)
    fs.cat_file("/pr/hold", 0, 30 * BS)
    assert m.check() is L.MODERATE
    held = fs.stats().pages.n
    assert held == 24
    fs.cat_file("/pr/hold", 30 * BS, 40 * BS)  # new pages evict old ones meanwhile
    assert fs.stats().pages.n == held
    probe.rss = -10 * BS  # pressure over: the cache may grow to memory_limit again
    assert m.check() is L.NONE
    fs.cat_file("/pr/hold", 0, 10 * BS)
    assert fs.stats().pages.n == held + 10


def test_coldest_first_across_caches() -> None:
    probe = Probe(rss=0)
    m = monitor(probe, limit=10 * BS)
    from netcache.backends import MappingBackend

    a = mem_fs(m, "a", 4, cache_dir=MappingBackend({}, BS, 1 << 20))
    b = mem_fs(m, "b", 4, cache_dir=MappingBackend({}, BS, 1 << 20))
    probe.fs += [a, b]
    for i in range(4):  # interleave: a0 b0 a1 b1 ...
        a.cat_file("/pr/a", i * BS, (i + 1) * BS)
        b.cat_file("/pr/b", i * BS, (i + 1) * BS)
    assert a.context is not b.context
    assert a.flush(10) and b.flush(10)  # all stored: every victim is releasable
    resident = lambda fs: sorted(k.index for k in fs.context.page_cache._pages)  # noqa: E731
    assert m.check() is L.MODERATE  # 8 of 10 pages; under 7 means 2 pages to free
    assert resident(a) == [1, 2, 3] and resident(b) == [1, 2, 3]  # a0 and b0 went
    probe.rss = 3 * BS  # 6 resident + 3 = 9 of 10: HIGH, 3 more to free
    assert m.check() is L.HIGH
    assert resident(a) == [3] and resident(b) == [2, 3]  # then a1, b1, a2


def test_graded_policy_under_the_monitor() -> None:
    probe = Probe(rss=0)
    m = monitor(probe, limit=20 * BS)
    backend = GatedBackend()
    mem = fsspec.filesystem("memory")
    mem.pipe_file("/pr/clean", payload(6 * BS, 1))
    mem.pipe_file("/pr/pend", payload(6 * BS, 2))
    fs = netcache.NetCacheFileSystem(fs=mem, cache_dir=backend, block_size=BS,
                                     writeback_workers=1, memory_monitor=m)  # fmt: skip
    probe.fs.append(fs)
    backend.gate.set()
    fs.cat_file("/pr/clean")
    assert fs.flush(10)
    backend.gate.clear()
    backend.storing.clear()
    fs.cat_file("/pr/pend")  # pending pages are now colder than ...
    assert backend.storing.wait(10)
    fs.cat_file("/pr/clean")  # ... the clean ones, which are hot
    probe.rss = 5 * BS  # 17 of 20: MODERATE, under 14 means 4 pages to free
    assert m.check() is L.MODERATE
    st = fs.stats()
    # the hot clean pages went, the cold pending ones were kept
    assert (st.vmscan.nos, st.vmscan.bsy, st.vmscan.kep, st.vmscan.can) == (4, 1, 5, 0)
    probe.rss = int(10.5 * BS)  # 8 resident + 10.5 = 18.5 of 20: HIGH
    assert m.check() is L.HIGH
    st = fs.stats()
    assert st.vmscan.can == 5  # high pressure cancels pending stores at once
    backend.gate.set()


def test_critical_stops_admission_and_resumes() -> None:
    probe = Probe(rss=0)
    m = monitor(probe, limit=100 * BS)
    backend = GatedBackend()
    backend.gate.set()
    mem = fsspec.filesystem("memory")
    data = payload(8 * BS, 3)
    mem.pipe_file("/pr/c", data)
    fs = netcache.NetCacheFileSystem(fs=mem, cache_dir=backend, block_size=BS,
                                     memory_monitor=m)  # fmt: skip
    probe.rss = 96 * BS
    assert m.check() is L.CRITICAL
    assert fs.context.page_cache.admitting is False
    assert fs.cat_file("/pr/c", 0, 4 * BS) == data[: 4 * BS]  # readers still get bytes
    st = fs.stats()
    assert st.pages.n == 0 and st.stores.n == 0
    probe.rss = 10 * BS
    assert m.check() is L.NONE
    assert fs.cat_file("/pr/c") == data
    assert fs.stats().pages.n == 8
    assert fs.flush(10) and fs.stats().stores.pgs == 8


def test_one_info_line_per_level_change(caplog: pytest.LogCaptureFixture) -> None:
    probe = Probe(rss=0)
    m = monitor(probe, limit=100 * BS)
    fs = mem_fs(m, "log", 60)
    probe.fs.append(fs)
    with caplog.at_level(logging.INFO, logger="netcache"):
        fs.cat_file("/pr/log")
        probe.rss = 25 * BS  # 85 of 100: moderate; reclaims 15+ pages, page by page
        assert m.check() is L.MODERATE
        m.check()
        probe.rss = 0
        assert m.check() is L.NONE
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "memory pressure MODERATE" in lines[0] and "rss=" in lines[0]
    assert "memory pressure over after" in lines[1] and "reclaimed" in lines[1]


def test_store_states_untouched_by_reading_levels() -> None:
    """A reading with no pressure never cancels or waits: stores just run."""
    probe = Probe(rss=0)
    m = monitor(probe, limit=1000 * BS)
    backend = GatedBackend()
    fs = netcache.NetCacheFileSystem(fs=fsspec.filesystem("memory"), cache_dir=backend,
                                     block_size=BS, memory_monitor=m)  # fmt: skip
    fs.fs.pipe_file("/pr/s", payload(3 * BS, 4))
    fs.cat_file("/pr/s")
    assert m.check() is L.NONE
    states = {p.state for p in fs.context.page_cache._pages.values()}
    assert states <= {StoreState.PENDING, StoreState.STORING}
    backend.gate.set()
    assert fs.flush(10) and fs.stats().vmscan.can == 0
