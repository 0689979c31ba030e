"""The stats snapshot: immutable, exact, FS-Cache style text, flat dict."""

from __future__ import annotations

import dataclasses
import re

import fsspec
import pytest
from conftest import BS, payload

import netcache


def flat_plain(st: netcache.StatsSnapshot) -> dict[str, object]:
    return {k: v for k, v in st.as_dict().items() if "." not in k}


def test_snapshot_text_attributes_and_dict() -> None:
    mem = fsspec.filesystem("memory")
    mem.pipe_file("/s/f.bin", payload(3 * BS, 1))
    fs = netcache.NetCacheFileSystem(fs=mem, cache_dir=False, block_size=BS, memory_limit=8 * BS)
    fs.cat_file("/s/f.bin", 0, 2 * BS)  # 2 pages from the remote, one request
    fs.cat_file("/s/f.bin", BS, 3 * BS)  # 1 from memory, 1 from the remote
    st = fs.stats()
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.vmscan.can = 5  # type: ignore[misc]
    assert (st.retrievals.mem, st.retrievals.remote, st.retrievals.req) == (1, 3, 2)
    assert st.pages.n == 3 and st.pages.bytes == 3 * BS and st.pages.limit == 8 * BS
    text = str(st)
    summary, lines = text.split("\n\n")
    # people first: the hit ratio, the bytes from each tier, the stores, the pressure
    assert (
        summary.splitlines()[0] == "hit ratio 25.0% of 4 pages read: 1 from memory, 0 "
        "from disk, 3 from the remote"
    )
    assert "the remote was spared 64.0 KiB" in summary and "memory pressure: NONE" in summary
    assert st.hit_ratio == 0.25 and st.bytes_from_memory == BS == st.bytes_saved
    assert st.retrievals.memory == st.retrievals.mem == 1  # plain names beside the short
    with pytest.raises(AttributeError, match=r"its fields are mem, disk.*memory \(mem\)"):
        st.retrievals.memroy  # noqa: B018
    assert flat_plain(st) == {"hit_ratio": 0.25, "bytes_from_memory": BS,
                              "bytes_from_disk": 0, "bytes_from_remote": 3 * BS,
                              "bytes_saved": BS, "stores_given_up": 0,
                              "pressure_level": "NONE"}  # fmt: skip
    names = [line.split(":")[0].strip() for line in lines.splitlines()]
    assert names == ["Pages", "Retrvls", "Stores", "Unstord", "VmScan", "Evict", "Invals",
                     "Disk", "Pressure", "Peers"]  # fmt: skip
    assert re.search(r"^Pressure: .* level=NONE$", text, re.M)
    assert re.search(r"^VmScan : nos=0 gon=0 bsy=0 can=0 wt=0 kep=0$", text, re.M)
    assert re.search(rf"^Retrvls: mem=1 disk=0 remote=3 rbytes={3 * BS} req=2 ", text, re.M)
    flat = st.as_dict()
    assert flat["retrievals.remote"] == 3 and flat["vmscan.can"] == 0
    for name, group in st.groups().items():
        for f in dataclasses.fields(group):
            assert flat[f"{name}.{f.name}"] == getattr(group, f.name)
    # a snapshot does not move when the cache does
    fs.cat_file("/s/f.bin")
    assert st.retrievals.mem == 1 and fs.stats().retrievals.mem == 4


def test_process_stats_has_every_counter_even_with_no_cache() -> None:
    """``cluster_stats`` gives every worker the same keys: zero where nothing was read."""
    from netcache.dask import process_stats
    from netcache.stats import COUNTER_NAMES

    empty = process_stats()
    assert set(empty) == set(COUNTER_NAMES) and not any(empty.values())
    mem = fsspec.filesystem("memory")
    mem.pipe_file("/ps/f.bin", payload(BS, 3))
    netcache.NetCacheFileSystem(fs=mem, cache_dir=False, block_size=BS).cat_file("/ps/f.bin")
    busy = process_stats()
    assert set(busy) == set(COUNTER_NAMES) and busy["retrievals.remote"] == 1
