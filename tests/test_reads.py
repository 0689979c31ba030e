"""Reads through pages, against a real HTTP server on 127.0.0.1 and the memory and local
targets: every byte verified against the source."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import threading
import time

import fsspec
import pytest
from conftest import BS, MiB, http_fs, payload, wait_for

import netcache
from netcache.testing.httpserver import RangeServer


def test_random_reads_every_byte(server: RangeServer, cache_dir: str) -> None:
    fs = http_fs(cache_dir)
    url = f"{server.url}/big.bin"
    data = server.data("/big.bin")
    rng = random.Random(7)
    with fs.open(url, "rb") as f:
        assert f.size == len(data)
        for _ in range(300):
            start = rng.randrange(len(data) + 10)
            n = rng.choice([0, 1, 100, BS - 1, BS, BS + 1, 3 * BS + 17, 300_000])
            f.seek(start)
            assert f.read(n) == data[start : start + n]
            assert f.tell() == min(start + n, len(data)) or start > len(data)


@pytest.mark.parametrize("kind", ["mapping", "view", "bytes"])
def test_page_joins_at_every_edge(kind: str) -> None:
    from netcache.buffers import page_buffer
    from netcache.page import Page, PageKey
    from netcache.page import join_pages as _join

    data = payload(3 * BS + 1000, 3)

    def buffer(chunk: bytes) -> object:
        return {"mapping": page_buffer, "view": memoryview, "bytes": bytes}[kind](chunk)

    pages = [
        Page(PageKey("ab", "cd", i), buffer(data[off : off + BS]))  # type: ignore[arg-type]
        for i, off in enumerate(range(0, len(data), BS))
    ]
    for first in range(len(pages)):
        for last in range(first, len(pages)):
            base = first * BS
            end = min((last + 1) * BS, len(data))
            lows = {base, base + 1, base + BS - 1} & set(range(base, end))
            highs = {end, end - 1, last * BS + 1} & set(range(base + 1, end + 1))
            for lo in lows:
                for hi in (h for h in highs if h > lo and h > last * BS):
                    got = _join(pages[first : last + 1], lo - base, hi - base)
                    assert type(got) is bytes and got == data[lo:hi], (first, last, lo, hi)


@pytest.mark.parametrize("target", ["memory", "file"])
def test_other_targets(target: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = payload(5 * BS + 3, 4)
    base = fsspec.filesystem(target)
    path = str(tmp_path / "f.bin") if target == "file" else "/nc-test/f.bin"
    base.pipe_file(path, data)
    fs = netcache.NetCacheFileSystem(fs=base, cache_dir=str(tmp_path / "c"), block_size=BS)
    rng = random.Random(1)
    for _ in range(100):
        a = rng.randrange(len(data))
        b = a + rng.randrange(3 * BS)
        assert fs.cat_file(path, a, b) == data[a:b]
    assert fs.cat_file(path, -10) == data[-10:]
    assert fs.cat_file(path, 5, -5) == data[5:-5]
    assert fs.cat_file(path, len(data) + 5, len(data) + 50) == b""


def test_only_missing_pages_fetched_adjacent_in_one_request(server: RangeServer,
                                                             cache_dir: str) -> None:  # fmt: skip
    fs = http_fs(cache_dir)
    url = f"{server.url}/big.bin"
    data = server.data("/big.bin")
    fs.info(url)
    server.reset_counts()
    # pages 2..5 in one request
    assert fs.cat_file(url, 2 * BS + 10, 6 * BS - 10) == data[2 * BS + 10 : 6 * BS - 10]
    assert server.gets == 1 and server.bytes_sent == 4 * BS
    # pages 0..7: 2..5 are resident, so two requests: 0..1 and 6..7
    assert fs.cat_file(url, 0, 8 * BS) == data[: 8 * BS]
    assert server.gets == 3 and server.bytes_sent == 8 * BS
    assert fs.cat_file(url, 0, 8 * BS) == data[: 8 * BS]
    assert server.gets == 3
    st = fs.stats()
    assert st.retrievals.remote == 8 and st.retrievals.req == 3 and st.retrievals.rbytes == 8 * BS


def test_cat_ranges_cat_read_block_get_file(server: RangeServer, cache_dir: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fs = http_fs(cache_dir)
    url = f"{server.url}/big.bin"
    small = f"{server.url}/small.bin"
    data = server.data("/big.bin")
    sdata = server.data("/small.bin")
    starts = [0, 5 * BS + 1, 40 * BS, 10]
    ends = [10, 7 * BS, 40 * BS + 5, 20]
    got = fs.cat_ranges([url, url, url, small], starts, ends)
    assert got == [data[0:10], data[5 * BS + 1 : 7 * BS], data[40 * BS : 40 * BS + 5], sdata[10:20]]
    assert fs.cat(small) == sdata
    assert fs.cat([small, url]) == {small: sdata, url: data}
    block = fs.read_block(url, 1000, 5000)
    assert block == data[1000:6000]
    target = tmp_path / "copy.bin"
    fs.get_file(url, str(target))
    assert target.read_bytes() == data
    # a missing path inside cat_ranges is that range's answer, not the whole call's
    out = fs.cat_ranges([small, f"{server.url}/missing"], [0, 0], [5, 5])
    assert out[0] == sdata[:5] and isinstance(out[1], FileNotFoundError)


def test_several_files_are_read_at_once_one_request_each(cache_dir: str) -> None:
    from netcache.context import FILE_WORKERS

    files = {f"f/{i}.bin": payload(BS + 100 * i, 40 + i) for i in range(2 * FILE_WORKERS)}
    with RangeServer(files, latency=0.05) as srv:  # long enough for requests to overlap
        fs = http_fs(cache_dir)
        urls = [f"{srv.url}/{name}" for name in files]
        missing = f"{srv.url}/f/missing.bin"
        got = fs.cat([*urls, missing], on_error="return")
        assert [got[u] for u in urls] == list(files.values())
        assert isinstance(got[missing], FileNotFoundError)
        # one GET a file (the first look), none asked twice, all at once (as plain
        # fsspec's cat), not a worker thread's worth at a time
        assert (srv.gets, srv.heads) == (len(files) + 1, 0)
        assert srv.most_in_flight > FILE_WORKERS
        # warm files are answered on the caller's thread: no worker, no request
        submit = fs.context.file_workers.submit
        hops: list[object] = []
        fs.context.file_workers.submit = lambda *a: (hops.append(a), submit(*a))[1]  # type: ignore[method-assign]
        srv.reset_counts()
        assert fs.cat(urls) == dict(zip(urls, files.values(), strict=True))
        assert hops == [] and srv.gets == 0
        with pytest.raises(FileNotFoundError):
            fs.cat([urls[0], missing])
        assert len(hops) == 1  # the missing one only
        assert fs.cat([urls[0], missing], on_error="omit") == {urls[0]: files["f/0.bin"]}
        srv.reset_counts()
        # ranges of several files, their order kept; each file's pages fetched together
        starts = [5, BS + 1, 3, 0]
        ends = [50, BS + 90, BS + 9, 2]
        paths = [urls[1], urls[1], urls[2], urls[3]]
        fs.invalidate()
        out = fs.cat_ranges(paths, starts, ends)
        assert out == [
            files[p.split("/", 3)[3]][a:b] for p, a, b in zip(paths, starts, ends, strict=True)
        ]
        assert srv.gets == 3  # one request per file


def test_eight_threads_single_flight(server: RangeServer, cache_dir: str) -> None:
    fs = http_fs(cache_dir, readahead=False)  # count only what the readers ask for
    url = f"{server.url}/big.bin"
    data = server.data("/big.bin")
    fs.info(url)
    server.reset_counts()
    server.latency = 0.05  # widen the window in which the threads overlap
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        try:
            rng = random.Random(seed)
            barrier.wait(timeout=10)
            with fs.open(url, "rb") as f:  # each thread gets its own fsspec instance
                for _ in range(20):
                    a = rng.randrange(0, 8 * BS)
                    f.seek(a)
                    assert f.read(BS) == data[a : a + BS]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    st = fs.stats()
    # 9 pages cover every read; each was fetched exactly once, however many readers
    assert st.retrievals.remote == 9
    assert server.bytes_sent == 9 * BS
    assert st.retrievals.joined > 0


def test_second_process_reads_without_remote(server: RangeServer, cache_dir: str) -> None:
    fs = http_fs(cache_dir)
    url = f"{server.url}/big.bin"
    data = server.data("/big.bin")
    assert fs.cat_file(url) == data
    assert fs.flush(timeout=30)
    server.reset_counts()
    code = f"""
import hashlib, json, netcache
fs = netcache.NetCacheFileSystem(target_protocol="http", cache_dir={cache_dir!r}, block_size={BS})
with fs.open({url!r}) as f:
    body = f.read()
print(json.dumps([hashlib.sha256(body).hexdigest(), fs.stats().as_dict()]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)  # fmt: skip
    digest, stats = json.loads(out.stdout)
    import hashlib

    assert digest == hashlib.sha256(data).hexdigest()
    assert server.gets == 0 and server.heads == 0
    assert stats["retrievals.disk"] == len(range(0, len(data), BS))
    assert stats["retrievals.remote"] == 0


def test_503_raises_then_next_read_is_right(server: RangeServer, cache_dir: str) -> None:
    fs = http_fs(cache_dir)
    url = f"{server.url}/big.bin"
    data = server.data("/big.bin")
    fs.info(url)
    server.fail_next(4, 503)  # the first try and its 3 retries
    with pytest.raises(Exception) as info:
        fs.cat_file(url, 0, 100)
    assert "503" in repr(info.value) or getattr(info.value, "status", None) == 503
    st = fs.stats()
    assert st.pages.n == 0 and st.retrievals.err == 1 and st.retrievals.retry == 3
    assert fs.cat_file(url, 0, 100) == data[:100]
    # an open file that hit the error keeps working too
    server.fail_next(4, 503)
    with fs.open(url) as f:
        f.seek(5 * BS)
        with pytest.raises(Exception):  # noqa: B017 - the remote's own error type
            f.read(10)
        f.seek(5 * BS)
        assert f.read(10) == data[5 * BS : 5 * BS + 10]


def test_remote_change_seen_after_check_interval(
    server: RangeServer, cache_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = http_fs(cache_dir, check_interval=30)
    url = f"{server.url}/small.bin"
    old = server.data("/small.bin")
    assert fs.cat_file(url) == old
    new = payload(1500, 99)
    server.put("small.bin", new)
    assert fs.cat_file(url) == old  # within check_interval: the cached version

    class ALittleLater:  # the version checks' clock, past check_interval (no sleeping)
        @staticmethod
        def time() -> float:
            return time.time() + 31

    monkeypatch.setattr(netcache.coherency, "time", ALittleLater)
    assert fs.cat_file(url) == new
    assert fs.info(url)["size"] == 1500
    assert fs.stats().invalidations.pages >= 1
    assert fs.flush(10)
    # the old version is gone from disk as well
    other = http_fs(cache_dir, check_interval=0)
    assert other.cat_file(url) == new


def test_open_file_keeps_its_version(server: RangeServer, cache_dir: str) -> None:
    fs = http_fs(cache_dir, check_interval=0, readahead=False)
    url = f"{server.url}/big.bin"
    old = server.data("/big.bin")
    with fs.open(url) as f:
        head = f.read(BS)
        server.put("big.bin", payload(len(old), 50))
        f.seek(BS)
        with pytest.raises(netcache.FileChangedError):
            f.read(BS)  # never a page of the new version inside the old one
        f.seek(0)
        assert f.read(BS) == head == old[:BS]
    assert fs.cat_file(url, 0, BS) == server.data("/big.bin")[:BS]


def test_remote_without_size_or_ranges(cache_dir: str) -> None:
    data = payload(3 * BS + 5, 3)
    with RangeServer({"f": data}) as srv:
        url = f"{srv.url}/f"
        srv.hide_size = True
        fs = http_fs(cache_dir, readahead=False)
        with fs.open(url) as f:
            assert f.size == len(data)
            f.seek(BS)
            assert f.read(10) == data[BS : BS + 10]
        assert fs.stats().retrievals.req == 1  # fsspec's own info may probe with a GET too
        gets = srv.gets
        assert fs.cat_file(url, 2 * BS, 3 * BS) == data[2 * BS : 3 * BS]
        assert fs.cat_file(url) == data
        assert srv.gets == gets
        srv.hide_size = False
        srv.reset_counts()
        srv.ignore_ranges = True
        fs2 = http_fs(cache_dir + "2", readahead=False)
        assert fs2.cat_file(url, BS, BS + 10) == data[BS : BS + 10]
        assert fs2.cat_file(url, 3 * BS, 3 * BS + 5) == data[3 * BS :]
        assert fs2.cat_file(url) == data
        # the first read's look was answered with the whole file, from elsewhere than
        # what it asked: dropped unread; then a HEAD, and one GET whose whole answer was
        # kept as pages
        assert (srv.gets, srv.heads) == (2, 1)


def test_short_read_raises_and_caches_nothing(server: RangeServer, cache_dir: str) -> None:
    fs = http_fs(cache_dir)
    url = f"{server.url}/big.bin"
    data = server.data("/big.bin")
    fs.info(url)
    server.short_by = 10
    with pytest.raises(netcache.ShortReadError):
        fs.cat_file(url, 0, BS)
    assert fs.stats().pages.n == 0
    server.short_by = 0
    assert fs.cat_file(url, 0, BS) == data[:BS]


def test_missing_path(server: RangeServer, cache_dir: str) -> None:
    fs = http_fs(cache_dir)
    with pytest.raises(FileNotFoundError):
        fs.open(f"{server.url}/nope")
    with pytest.raises(FileNotFoundError):
        fs.cat_file(f"{server.url}/nope")


def test_info_answered_from_cache(server: RangeServer, cache_dir: str) -> None:
    fs = http_fs(cache_dir, check_interval=60)
    url = f"{server.url}/small.bin"
    first = fs.info(url)
    heads = server.heads
    assert fs.info(url) == first and first["size"] == 1000 and first["name"] == url
    assert server.heads == heads


def test_chained_url_and_entry_point(server: RangeServer, cache_dir: str) -> None:
    url = f"{server.url}/small.bin"
    data = server.data("/small.bin")
    with fsspec.open(f"netcache::{url}", netcache={"cache_dir": cache_dir}) as f:
        assert f.read() == data
    # the entry point registers the protocol without importing netcache first
    code = (
        "import sys, fsspec\n"
        f"fs = fsspec.filesystem('netcache', target_protocol='http', cache_dir={cache_dir!r})\n"
        "assert 'netcache' in sys.modules\n"
        f"sys.stdout.buffer.write(fs.cat_file({url!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=60)
    assert out.stdout == data


def test_chained_memory_target(cache_dir: str) -> None:
    mem = fsspec.filesystem("memory")
    mem.pipe_file("/chain/x.bin", b"hello world")
    with fsspec.open("netcache::memory://chain/x.bin", netcache={"cache_dir": False}) as f:
        assert f.read() == b"hello world"


def test_text_mode_and_iteration(cache_dir: str) -> None:
    mem = fsspec.filesystem("memory")
    mem.pipe_file("/t/lines.txt", b"a\nbb\nccc\n")
    fs = netcache.NetCacheFileSystem(fs=mem, cache_dir=False)
    with fs.open("/t/lines.txt", "rt") as f:
        assert f.readlines() == ["a\n", "bb\n", "ccc\n"]
    with fs.open("/t/lines.txt", "rb") as f:
        buf = bytearray(4)
        assert f.readinto(buf) == 4 and bytes(buf) == b"a\nbb"
        assert isinstance(f, io.IOBase)


def test_metadata_goes_to_target(tmp_path) -> None:  # type: ignore[no-untyped-def]
    local = fsspec.filesystem("file")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_bytes(b"1")
    (tmp_path / "d" / "b.txt").write_bytes(b"22")
    fs = netcache.NetCacheFileSystem(fs=local, cache_dir=False)
    root = str(tmp_path / "d")
    assert sorted(os.path.basename(p) for p in fs.ls(root, detail=False)) == ["a.txt", "b.txt"]
    assert fs.exists(root + "/a.txt") and not fs.exists(root + "/c.txt")
    assert fs.isdir(root) and fs.isfile(root + "/a.txt")
    assert len(fs.glob(root + "/*.txt")) == 2
    assert len(fs.find(root)) == 2
    assert fs.du(root) == 3
    assert fs.info(root)["type"] == "directory"


def test_warm_reads_touch_nothing(server: RangeServer, cache_dir: str) -> None:
    fs = http_fs(cache_dir)
    url = f"{server.url}/big.bin"
    data = server.data("/big.bin")
    assert fs.cat_file(url) == data
    server.reset_counts()
    for _ in range(3):
        assert fs.cat_file(url) == data
    assert server.gets == 0 and server.heads == 0
    assert wait_for(lambda: fs.stats().stores.pgs == fs.stats().pages.n)
    assert len(data) > MiB


def test_open_file_keeps_its_version_with_readahead(server: RangeServer, cache_dir: str) -> None:
    fs = http_fs(cache_dir, check_interval=0)
    url = f"{server.url}/big.bin"
    old = server.data("/big.bin")
    with fs.open(url) as f:
        assert f.read(BS) == old[:BS]  # read-ahead of the following pages starts here
        server.put("big.bin", payload(len(old), 51))
        for i in range(1, 12):
            try:
                assert f.read(BS) == old[i * BS : (i + 1) * BS]  # old bytes or nothing
            except netcache.FileChangedError:
                f.seek((i + 1) * BS)
