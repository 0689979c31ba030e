"""Eviction policies: LRU order, and 2Q's resistance to one long scan."""

from __future__ import annotations

import fsspec
import pytest
from conftest import BS, payload

import netcache
from netcache.policies import LRU, TwoQ


def drain(policy, keep=()) -> list:  # type: ignore[no-untyped-def]
    """Victims in order, removing each one not in ``keep``, as the page cache does."""
    out = []
    for key in policy.victims():
        out.append(key)
        if key not in keep:
            policy.remove(key)
    return out


def test_lru_order_and_kept_keys() -> None:
    lru = LRU()
    for k in range(5):
        lru.admit(k)
    lru.touch(1)
    assert drain(lru, keep={2}) == [0, 2, 3, 4, 1]
    assert list(lru.victims()) == [2] and len(lru) == 1


def test_2q_probation_first_then_protected() -> None:
    q = TwoQ(probation=0.25)
    for k in range(8):
        q.admit(k)
    for k in (1, 3):
        q.touch(k)  # used again: protected
    order = list(q.victims())
    assert sorted(order) == list(range(8)) and len(order) == 8  # each once, nothing lost
    # probation (6 of 8 pages, over its quarter) goes first, oldest first; then protected
    assert order[:4] == [0, 2, 4, 5]
    q.remove(0)
    q.admit(0)  # came back soon after it left: protected at once
    assert list(q.victims())[-1] == 0
    with pytest.raises(ValueError, match="probation="):
        TwoQ(probation=1.5)


@pytest.mark.parametrize(("policy", "hot_hits_at_least", "hot_hits_at_most"),
                         [("2q", 0.9, 1.0), ("lru", 0.0, 0.5)])  # fmt: skip
def test_scan_resistance(policy: str, hot_hits_at_least: float, hot_hits_at_most: float) -> None:
    mem = fsspec.filesystem("memory")
    mem.pipe_file(f"/scan/{policy}/hot", payload(20 * BS, 1))
    mem.pipe_file(f"/scan/{policy}/big", payload(600 * BS, 2))
    fs = netcache.NetCacheFileSystem(fs=mem, cache_dir=False, block_size=BS,
                                     memory_limit=100 * BS, eviction=policy,
                                     readahead=False, memory_monitor=False)  # fmt: skip
    hot, big = f"/scan/{policy}/hot", f"/scan/{policy}/big"
    fs.cat_file(hot)
    fs.cat_file(hot)  # the working set: read twice
    hits = reads = 0
    with fs.open(big) as f:  # one sequential scan, six times larger than memory
        for i in range(600):
            f.read(BS)
            if i % 150 == 149:  # the working set is used again during the scan
                before = fs.stats().retrievals.mem
                for page in range(20):
                    fs.cat_file(hot, page * BS, page * BS + 10)
                hits += fs.stats().retrievals.mem - before
                reads += 20
    assert hot_hits_at_least <= hits / reads <= hot_hits_at_most, (hits, reads)
    assert fs.stats().pages.bytes <= 100 * BS


def test_warm_reads_touch_every_page_they_use_and_only_then() -> None:
    mem = fsspec.filesystem("memory")
    data = payload(6 * BS, 3)
    mem.pipe_file("/touch/f", data)
    fs = netcache.NetCacheFileSystem(fs=mem, cache_dir=False, block_size=BS, readahead=False,
                                     memory_monitor=False, skip_instance_cache=True)  # fmt: skip
    cache = fs.context.page_cache
    with fs.open("/touch/f") as f:
        f.read(4 * BS)  # pages 0-3 resident, admitted in order
        order = [key.index for key in cache.eviction.victims()]
        assert order == [0, 1, 2, 3]
        hits = fs.stats().retrievals.mem
        f.seek(BS + 5)
        assert f.read(10) == data[BS + 5 : BS + 15]  # one page
        f.seek(2 * BS - 3)
        assert f.read(BS) == data[2 * BS - 3 : 3 * BS - 3]  # two pages
        assert [key.index for key in cache.eviction.victims()] == [0, 3, 1, 2]
        assert fs.stats().retrievals.mem == hits + 3
        pages = cache.lookup_resident(f.cookie.file_id, f.cookie.version, 0, 0)
        assert [page.key.index for page in pages] == [0]  # type: ignore[union-attr]
        assert [key.index for key in cache.eviction.victims()] == [3, 1, 2, 0]
        hits += 1
        # a read that needs a page not resident takes the fetching path: the resident
        # lookup touches nothing, and only the fetch's own lookup counts and touches
        assert cache.lookup_resident(f.cookie.file_id, f.cookie.version, 3, 4) is None
        assert [key.index for key in cache.eviction.victims()] == [3, 1, 2, 0]
        assert fs.stats().retrievals.mem == hits + 3
