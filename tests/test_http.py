"""HTTP answers streamed into pages: every byte where it belongs, however the network
cuts the answer; requests bounded; a subclass that makes its own requests keeps them."""

from __future__ import annotations

import itertools
import random

import pytest
from conftest import BS, http_fs, payload
from fsspec.implementations.http import HTTPFileSystem
from hypothesis import given
from hypothesis import strategies as st

import netcache
from netcache.buffers import PageFiller
from netcache.http import streams_pages
from netcache.testing.httpserver import RangeServer


@given(
    size=st.integers(0, 5 * 1000 + 7),
    cuts=st.lists(st.integers(0, 5 * 1000 + 7), max_size=12),
    page_size=st.sampled_from([1, 7, 1000, 4096]),
)
def test_any_chunking_gives_the_same_pages(size: int, cuts: list[int], page_size: int) -> None:
    data = payload(size, size)
    bounds = sorted({0, size, *(c for c in cuts if c <= size)})
    filler = PageFiller(page_size, size)
    for lo, hi in itertools.pairwise(bounds):
        filler.feed(data[lo:hi])
    assert filler.received == size
    assert [bytes(p) for p in filler.pages] == [
        data[i : i + page_size] for i in range(0, size, page_size)
    ]


def test_more_bytes_than_asked_are_refused() -> None:
    filler = PageFiller(BS, BS + 10)
    filler.feed(b"x" * BS)
    with pytest.raises(netcache.ShortReadError, match="more than"):
        filler.feed(b"y" * 11)


class SigningHTTP(HTTPFileSystem):
    """A subclass that makes its own requests (as one that signs URLs would)."""

    requests = 0

    async def _cat_file(self, url, start=None, end=None, **kwargs):  # type: ignore[no-untyped-def]
        SigningHTTP.requests += 1
        return await super()._cat_file(url, start=start, end=end, **kwargs)


def test_only_fsspecs_own_requests_are_streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"fsspec": 0}
    cat_file = HTTPFileSystem._cat_file

    async def counted(self, url, start=None, end=None, **kwargs):  # type: ignore[no-untyped-def]
        calls["fsspec"] += 1
        return await cat_file(self, url, start=start, end=end, **kwargs)

    monkeypatch.setattr(HTTPFileSystem, "_cat_file", counted)
    data = payload(5 * BS + 99, 3)
    with RangeServer({"f.bin": data}) as srv:
        url = f"{srv.url}/f.bin"
        own = HTTPFileSystem(skip_instance_cache=True)
        signing = SigningHTTP(skip_instance_cache=True)
        assert streams_pages(own) and not streams_pages(signing)
        for target in (own, signing):
            fs = netcache.NetCacheFileSystem(
                fs=target, cache_dir=False, block_size=BS, readahead=False
            )
            before = dict(calls, signing=SigningHTTP.requests)
            assert fs.cat_file(url, BS - 5, 4 * BS + 3) == data[BS - 5 : 4 * BS + 3]
            heads = srv.heads  # the version is known: no fetch needs a HEAD after it
            assert fs.cat_file(url) == data
            signed = SigningHTTP.requests - before["signing"]
            through_fsspec = calls["fsspec"] - before["fsspec"]
            if target is own:  # streamed: fsspec's _cat_file made no request
                assert (signed, through_fsspec) == (0, 0) and srv.gets >= 2
            else:  # every request through the subclass's own _cat_file, still pinned
                assert signed >= 2 and through_fsspec == signed
            assert srv.heads == heads
            netcache.close_all()


def test_many_ranges_go_out_together_in_the_targets_batches() -> None:
    data = payload(100 * BS, 4)
    with RangeServer({"f.bin": data}, latency=0.05) as srv:
        url = f"{srv.url}/f.bin"
        fs = http_fs(False, readahead=False)
        # set after: fsspec's HTTP filesystem would pass it on to every request as well
        fs.fs.batch_size = 8
        fs.info(url)
        srv.reset_counts()
        rng = random.Random(4)
        starts = [2 * i * BS + rng.randrange(BS - 100) for i in range(45)]  # each in its page
        ends = [s + 100 for s in starts]
        got = fs.cat_ranges([url] * len(starts), starts, ends)
        assert got == [data[s:e] for s, e in zip(starts, ends, strict=True)]
        assert srv.gets == len(starts)
        assert 1 < srv.most_in_flight <= 8


def test_the_object_store_model_paces_each_connection_and_changes_no_byte() -> None:
    """RangeServer's bandwidth cap (benchmarks' object-store model): answers stay whole
    and exact; the cap is set per server and over the control endpoint. (How fast is
    measured in benchmarks/, never asserted here.)"""
    import urllib.request

    from netcache.testing import RangeServer, random_bytes

    data = random_bytes(300_000, 4)
    with RangeServer({"m.bin": data}, latency=0.001, bandwidth=64 << 20) as srv:
        fs = netcache.NetCacheFileSystem(target_protocol="http", cache_dir=False,
                                         block_size=64 << 10, memory_monitor=False,
                                         skip_instance_cache=True)  # fmt: skip
        url = f"{srv.url}/m.bin"
        assert (
            fs.cat_file(url) == data and fs.cat_file(url, 70_000, 200_001) == data[70_000:200_001]
        )
        urllib.request.urlopen(f"{srv.url}/_control/bandwidth/{8 << 20}").read()
        assert srv.bandwidth == 8 << 20
        urllib.request.urlopen(f"{srv.url}/_control/bandwidth/0").read()
        assert srv.bandwidth is None
