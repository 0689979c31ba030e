"""First look: a cold open over HTTP learns the version and size from one ranged GET, and
its first bytes come with them."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import BS, MiB, http_fs, payload

from netcache.errors import FileChangedError
from netcache.firstlook import FIRST_LOOK_BYTES
from netcache.testing.httpserver import RangeServer


@pytest.fixture
def srv() -> RangeServer:  # type: ignore[misc]
    files = {"small.bin": payload(300_000, 1), "big.bin": payload(3 * MiB + 777, 2)}
    with RangeServer(files) as server:
        yield server


def test_small_file_is_one_get_and_then_cached(srv: RangeServer) -> None:
    fs = http_fs(False, skip_instance_cache=True)
    data = srv.data("/small.bin")
    with fs.open(f"{srv.url}/small.bin") as f:
        assert f.size == len(data)
        assert f.read() == data
    assert (srv.gets, srv.heads) == (1, 0)  # plain fsspec sends a HEAD, then a GET
    assert fs.cat_file(f"{srv.url}/small.bin") == data
    assert (srv.gets, srv.heads) == (1, 0)
    assert fs.stats().retrievals.req == 1


def test_big_file_first_read_comes_with_the_open(srv: RangeServer) -> None:
    fs = http_fs(False, readahead=False, skip_instance_cache=True)
    data = srv.data("/big.bin")
    with fs.open(f"{srv.url}/big.bin") as f:
        assert f.size == len(data)
        assert f.read(FIRST_LOOK_BYTES) == data[:FIRST_LOOK_BYTES]
        assert (srv.gets, srv.heads, srv.bytes_sent) == (1, 0, FIRST_LOOK_BYTES)
        f.seek(len(data) - 100)
        assert f.read() == data[-100:]  # beyond the first look: one more request
    assert (srv.gets, srv.heads) == (2, 0)
    assert fs.cat_file(f"{srv.url}/big.bin") == data


def test_info_and_reads_from_elsewhere_do_not_fetch_first_bytes(srv: RangeServer) -> None:
    fs = http_fs(False, readahead=False, skip_instance_cache=True)
    url = f"{srv.url}/big.bin"
    data = srv.data("/big.bin")
    assert fs.info(url)["size"] == len(data)
    assert (srv.gets, srv.heads, srv.bytes_sent) == (0, 1, 0)
    small = srv.data("/small.bin")
    assert fs.cat_file(f"{srv.url}/small.bin", BS + 1, BS + 9) == small[BS + 1 : BS + 9]
    # no HEAD: the one page read came with the version
    assert (srv.gets, srv.heads, srv.bytes_sent) == (1, 1, BS)
    assert fs.cat_file(f"{srv.url}/small.bin", BS + 5, BS + 20) == small[BS + 5 : BS + 20]
    assert (srv.gets, srv.heads) == (1, 1)


def test_look_spans_are_whole_pages_joined_and_bounded() -> None:
    from netcache.firstlook import look_spans

    whole = -(-FIRST_LOOK_BYTES // BS) * BS
    assert look_spans([(None, None)], BS, 10 * MiB) == [(0, whole)]
    # sorted; overlapping and adjacent pages joined; empty ranges dropped
    ranges = [(5 * BS + 1, 6 * BS), (10, 20), (BS - 1, BS + 1), (6 * BS, 6 * BS + 1), (7, 7)]
    assert look_spans(ranges, BS, 10 * MiB) == [(0, 2 * BS), (5 * BS, 7 * BS)]
    # the size is needed first: from the end, or to the end from elsewhere
    assert look_spans([(0, 10), (-5, None)], BS, 10 * MiB) == []
    assert look_spans([(0, 10), (3, -1)], BS, 10 * MiB) == []
    assert look_spans([(BS, None)], BS, 10 * MiB) == []
    # more than the limit: ask info() first
    assert look_spans([(0, 4 * BS)], BS, 4 * BS) == [(0, 4 * BS)]
    assert look_spans([(0, 4 * BS + 1)], BS, 4 * BS) == []


def test_cold_cat_ranges_fetches_its_pages_with_the_version(srv: RangeServer) -> None:
    fs = http_fs(False, readahead=False, skip_instance_cache=True)
    url = f"{srv.url}/big.bin"
    data = srv.data("/big.bin")
    # two ranges share page 2, one ends a page later, one ends at the end of the file
    ranges = [(2 * BS + 10, 2 * BS + 100), (2 * BS + 500, 3 * BS + 1), (5, 17),
              (len(data) - 300, len(data))]  # fmt: skip
    starts, ends = [a for a, _ in ranges], [b for _, b in ranges]
    assert fs.cat_ranges([url] * 4, starts, ends) == [data[a:b] for a, b in ranges]
    # one GET a run of pages (pages 0, 2-3 and the last), sent at once; no HEAD
    last = (len(data) - 300) // BS * BS
    assert (srv.gets, srv.heads) == (3, 0)
    assert srv.bytes_sent == BS + 2 * BS + len(data) - last
    # the version came from those answers: a read of those pages is a hit
    assert fs.cat_ranges([url] * 4, starts, ends) == [data[a:b] for a, b in ranges]
    assert fs.cat_file(url, 3 * BS, 4 * BS) == data[3 * BS : 4 * BS]
    assert (srv.gets, srv.heads) == (3, 0)


def test_a_first_look_stays_within_the_read_ahead_bound(srv: RangeServer) -> None:
    # 2 MiB of memory: a first look may fetch 1 MiB (its pages are not claimed, and
    # could be evicted before they are read); more is fetched after a HEAD, as before
    fs = http_fs(False, readahead=False, memory_limit="2MiB", skip_instance_cache=True)
    url = f"{srv.url}/big.bin"
    data = srv.data("/big.bin")
    n = FIRST_LOOK_BYTES // (2 * BS) + 1  # spans of 2 pages: more than 1 MiB
    starts = [i * 4 * BS for i in range(n)]
    ends = [s + BS + 1 for s in starts]
    want = [data[a:b] for a, b in zip(starts, ends, strict=True)]
    assert fs.cat_ranges([url] * n, starts, ends) == want
    assert (srv.gets, srv.heads) == (n, 1)
    assert srv.bytes_sent == n * 2 * BS


def test_ranges_counted_from_the_end_ask_for_the_size_first(srv: RangeServer) -> None:
    fs = http_fs(False, readahead=False, skip_instance_cache=True)
    url = f"{srv.url}/big.bin"
    data = srv.data("/big.bin")
    assert fs.cat_file(url, -100) == data[-100:]
    assert (srv.gets, srv.heads) == (1, 1)
    srv.reset_counts()
    url = f"{srv.url}/small.bin"
    small = srv.data("/small.bin")
    assert fs.cat_file(url, 1000) == small[1000:]  # to the end, from elsewhere
    assert (srv.gets, srv.heads) == (1, 1)


def test_a_range_beyond_the_end_or_a_change_between_answers_asks_info(srv: RangeServer) -> None:
    fs = http_fs(False, readahead=False, skip_instance_cache=True)
    url = f"{srv.url}/small.bin"
    small = srv.data("/small.bin")
    # a span past the end answers 416: the look is dropped, info() asked, and the pages
    # fetched again
    got = fs.cat_ranges([url] * 2, [0, len(small) + BS], [10, len(small) + 2 * BS])
    assert got == [small[:10], b""]
    assert srv.heads == 1
    assert fs.cat_file(url, 0, 10) == small[:10]

    # answers naming other versions: none of their bytes is kept
    versions = [payload(len(srv.data("/big.bin")), 40 + i) for i in range(4)]
    take, lock = srv.take, threading.Lock()

    def take_then_change(method: str, path: str):  # type: ignore[no-untyped-def]
        with lock:  # each of the first three GETs is answered from its own version
            answer = take(method, path)
            if method == "GET" and srv.gets <= 3:
                srv.put("big.bin", versions[srv.gets])
            return answer

    srv.take = take_then_change  # type: ignore[method-assign]
    srv.reset_counts()
    fs2 = http_fs(False, readahead=False, skip_instance_cache=True)
    starts = [0, 4 * BS, 8 * BS]
    got = fs2.cat_ranges([f"{srv.url}/big.bin"] * 3, starts, [s + 10 for s in starts])
    # the three answers disagreed: info() named the last version, and its pages were read
    assert got == [versions[3][s : s + 10] for s in starts]
    assert (srv.gets, srv.heads) == (6, 1)
    assert fs2.cat_file(f"{srv.url}/big.bin", 0, 10) == versions[3][:10]


def test_a_later_check_finds_the_same_version(srv: RangeServer) -> None:
    # the version from a GET's headers must equal the one from a HEAD, or every recheck
    # would drop the file's pages
    fs = http_fs(False, check_interval=0.05, readahead=False, skip_instance_cache=True)
    url = f"{srv.url}/small.bin"
    data = srv.data("/small.bin")
    assert fs.cat_file(url) == data
    time.sleep(0.1)
    assert fs.cat_file(url) == data
    assert (srv.gets, srv.heads) == (1, 1)  # the recheck is a HEAD; no page fetched again
    srv.put("small.bin", payload(300_000, 9))
    time.sleep(0.1)
    assert fs.cat_file(url) == srv.data("/small.bin")


def test_pages_after_the_first_look_are_pinned_to_its_version(srv: RangeServer) -> None:
    fs = http_fs(False, readahead=False, skip_instance_cache=True)
    url = f"{srv.url}/big.bin"
    data = srv.data("/big.bin")
    with fs.open(url) as f:
        assert f.read(10) == data[:10]
        srv.put("big.bin", payload(len(data), 3))  # same size, other bytes, new ETag
        f.seek(2 * MiB)
        with pytest.raises(FileChangedError):
            f.read(10)


@pytest.mark.parametrize("quirk", ["ignore_ranges", "hide_size", "both"])
def test_servers_that_answer_otherwise_still_read_right(srv: RangeServer, quirk: str) -> None:
    srv.ignore_ranges = quirk in ("ignore_ranges", "both")
    srv.hide_size = quirk in ("hide_size", "both")
    fs = http_fs(False, readahead=False, skip_instance_cache=True)
    data = srv.data("/big.bin")
    with fs.open(f"{srv.url}/big.bin") as f:
        assert f.size == len(data)
        assert f.read(100) == data[:100]
        f.seek(len(data) - 5000)
        assert f.read() == data[-5000:]
    assert fs.cat_file(f"{srv.url}/big.bin") == data
    if quirk == "hide_size":  # a range answer still states the size: one GET opened it
        assert srv.heads == 0
    if quirk == "both":  # no size anywhere: info() was asked, then the whole file read
        assert srv.heads >= 1


def test_a_failed_first_look_falls_back_to_info(srv: RangeServer) -> None:
    fs = http_fs(False, skip_instance_cache=True)
    data = srv.data("/small.bin")
    srv.fail_next(1, 403)  # not a plain answer (a 5xx would be asked again: test_retries)
    with fs.open(f"{srv.url}/small.bin") as f:
        assert f.read() == data
    assert srv.heads == 1
    srv.reset_counts()
    with pytest.raises(FileNotFoundError):
        fs.open(f"{srv.url}/missing.bin")
    assert (srv.gets, srv.heads) == (1, 0)  # not found is not asked twice


def test_other_targets_open_as_before(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import netcache

    path = tmp_path / "f.bin"
    path.write_bytes(payload(5000, 4))
    fs = netcache.NetCacheFileSystem(target_protocol="file", cache_dir=False, block_size=BS,
                                     skip_instance_cache=True)  # fmt: skip
    with fs.open(str(path)) as f:
        assert f.read() == path.read_bytes()
    assert fs.stats().retrievals.req == 1  # the first read's own fetch


def test_a_shorter_range_answer_keeps_only_whole_pages(srv: RangeServer) -> None:
    srv.range_limit = BS + 5000  # the server answers a page and a bit of the first look
    fs = http_fs(False, readahead=False, skip_instance_cache=True)
    data = srv.data("/big.bin")
    with fs.open(f"{srv.url}/big.bin") as f:
        assert f.size == len(data)
        cache = fs.context.page_cache
        assert cache.lookup_resident(f.cookie.file_id, f.cookie.version, 0, 0) is not None
        assert cache.lookup_resident(f.cookie.file_id, f.cookie.version, 1, 1) is None
        assert fs.stats().pages.n == 1  # the part of page 1 that came was not kept
        assert f.read(BS) == data[:BS]
    assert (srv.gets, srv.heads) == (1, 0)


def test_an_empty_file_opens_and_reads_empty(srv: RangeServer) -> None:
    srv.put("empty.bin", b"")
    fs = http_fs(False, skip_instance_cache=True)
    with fs.open(f"{srv.url}/empty.bin") as f:
        assert f.size == 0 and f.read() == b""
    assert fs.cat_file(f"{srv.url}/empty.bin") == b""


def test_threads_opening_one_cold_file_at_once_all_read_it_right(srv: RangeServer) -> None:
    import threading

    fs = http_fs(False, skip_instance_cache=True)
    url = f"{srv.url}/big.bin"
    data = srv.data("/big.bin")
    barrier = threading.Barrier(8)
    got: list[bytes] = []

    def reader() -> None:
        barrier.wait(10)
        with fs.open(url) as f:
            got.append(f.read())

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 8 and all(g == data for g in got)
    assert srv.heads == 0
    # each thread may have looked first; every page was admitted once and reads right
    assert fs.stats().pages.n == len(range(0, len(data), BS))
    assert fs.cat_file(url) == data


def test_importing_netcache_does_not_load_the_http_or_s3_clients() -> None:
    import subprocess
    import sys

    code = (
        "import sys, netcache; print([m in sys.modules for m in ('aiohttp', 's3fs', 'botocore')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[False, False, False]", out.stderr


def test_cat_of_many_cold_files_looks_in_waves_within_the_bound() -> None:
    # 32 MiB of memory: first looks of 4 MiB at once at most, 1 MiB a whole file
    files = {f"w/{i}.bin": payload(BS + 10 * i, 60 + i) for i in range(12)}
    with RangeServer(files, latency=0.05) as srv:  # long enough for requests to overlap
        fs = http_fs(False, memory_limit="32MiB", skip_instance_cache=True)
        urls = [f"{srv.url}/{name}" for name in files]
        assert fs.cat(urls) == dict(zip(urls, files.values(), strict=True))
        assert (srv.gets, srv.heads) == (len(files), 0)
        assert 1 < srv.most_in_flight <= 4


def test_a_failed_look_among_many_asks_info_for_that_file_alone() -> None:
    files = {f"m/{i}.bin": payload(BS + 10 * i, 70 + i) for i in range(6)}
    with RangeServer(files) as srv:
        fs = http_fs(False, skip_instance_cache=True)
        urls = [f"{srv.url}/{name}" for name in files]
        srv.fail_next(1, 403)  # whichever look comes first (not a 5xx: that is retried)
        assert fs.cat(urls) == dict(zip(urls, files.values(), strict=True))
        # that file: a HEAD and a GET after its failed look; the others one GET each
        assert (srv.gets, srv.heads) == (len(files) + 1, 1)
        srv.reset_counts()
        assert fs.cat(urls) == dict(zip(urls, files.values(), strict=True))
        assert srv.gets == srv.heads == 0
