"""The disk tier: limits, corruption, sharing, zict mappings, permissions, secrets."""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import fsspec
import pytest
import zict
from conftest import BS, GatedBackend, MiB, http_fs, payload

import netcache
from netcache.backends import MappingBackend, segmentio
from netcache.backends.base import HEADER_SIZE as HEADER
from netcache.backends.segmentio import stored_slots
from netcache.backends.segments import LAYOUT, parse_segment_name, table_size
from netcache.firstlook import FIRST_LOOK_BYTES
from netcache.testing.httpserver import RangeServer


def segment_files(cache_dir: str) -> list[str]:
    out = []
    for folder, _, names in os.walk(os.path.join(cache_dir, LAYOUT)):
        out += [os.path.join(folder, n) for n in names if n.endswith(".seg")]
    return sorted(out)


def stored_pages(cache_dir: str) -> dict[int, tuple[str, int, int]]:
    """Page index -> (its segment, the offsets of its header and of its bytes), for every
    page stored (of one remote file)."""
    out = {}
    for path in segment_files(cache_dir):
        _, _, per_segment, segment = parse_segment_name(os.path.basename(path))  # type: ignore[misc]
        fd = os.open(path, os.O_RDONLY)
        try:
            mask = stored_slots(fd, per_segment)
        finally:
            os.close(fd)
        for slot in range(per_segment):
            if mask >> slot & 1:
                out[segment * per_segment + slot] = (
                    path,
                    slot * HEADER,
                    table_size(per_segment) + slot * BS,
                )
    return dict(sorted(out.items()))


def folder_bytes(cache_dir: str) -> int:
    return sum(
        os.path.getsize(os.path.join(folder, n))
        for folder, _, names in os.walk(cache_dir)
        for n in names
    )


def test_disk_limit_holds(server: RangeServer, cache_dir: str) -> None:
    limit = 8 * BS + 4096
    fs = http_fs(cache_dir, disk_limit=limit)
    url = f"{server.url}/big.bin"
    data = server.data("/big.bin")
    assert fs.cat_file(url) == data
    assert fs.flush(30)
    usage = fs.disk_usage()
    assert usage is not None and usage.used <= limit
    assert usage.culls >= len(range(0, len(data), BS)) - 8
    # slack: one meta.json per file, documented in DirectoryBackend
    assert folder_bytes(cache_dir) <= limit + 4096
    st = fs.stats()
    assert st.disk.used == usage.used and st.disk.culls == usage.culls


def _reopen(cache_dir: str) -> netcache.NetCacheFileSystem:
    netcache.close_all()
    netcache.NetCacheFileSystem.clear_instance_cache()
    return http_fs(cache_dir, check_interval=None)


@pytest.mark.parametrize("damage", ["flip", "truncate", "directory", "header"])
def test_corrupt_page_is_refetched(server: RangeServer, cache_dir: str, damage: str,
                                   caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    url = f"{server.url}/big.bin"
    data = server.data("/big.bin")
    fs = http_fs(cache_dir, check_interval=None)
    assert fs.cat_file(url) == data
    assert fs.flush(30)
    pages = stored_pages(cache_dir)
    damaged = errors = 2
    for index in (3, 4):
        segment, header, offset = pages[index]
        if damage == "flip":
            with open(segment, "r+b") as f:
                f.seek(offset + 100)
                byte = f.read(1)[0]
                f.seek(offset + 100)
                f.write(bytes([byte ^ 0x01]))
        elif damage == "header":
            with open(segment, "r+b") as f:
                f.seek(header + 24)  # the page index in the header
                f.write(b"\xff")
    if damage == "truncate":  # the last two pages, cut short and cut off
        last = max(pages)
        segment, _, offset = pages[last - 1]
        os.truncate(segment, offset + 100)
    elif damage == "directory":  # every page of the segment
        segment = pages[0][0]
        damaged = len([i for i in pages if pages[i][0] == segment])
        errors = 1  # then removed: its other pages are simply missing
        os.unlink(segment)
        os.mkdir(segment)
    fs = _reopen(cache_dir)
    server.reset_counts()
    with caplog.at_level(logging.WARNING, logger="netcache"):
        assert fs.cat_file(url) == data
    st = fs.stats()
    assert st.disk.rerr == errors and st.retrievals.remote == damaged
    assert server.bytes_sent <= damaged * BS
    assert len([r for r in caplog.records if "disk-tier page" in r.getMessage()]) == 1
    assert fs.flush(30)
    # the damaged pages were replaced by good ones
    fs = _reopen(cache_dir)
    server.reset_counts()
    assert fs.cat_file(url) == data and server.gets == 0


def test_leftover_temporaries_are_removed(cache_dir: str, server: RangeServer) -> None:
    fs = http_fs(cache_dir)
    fs.cat_file(f"{server.url}/small.bin")
    assert fs.flush(10)
    folder = os.path.dirname(segment_files(cache_dir)[0])
    dead = os.path.join(folder, ".tmp.999999999.abcdef")
    mine = os.path.join(folder, f".tmp.{os.getpid()}.abcdef")
    for path in (dead, mine):
        with open(path, "wb") as f:
            f.write(b"half a page")
    _reopen(cache_dir)
    assert not os.path.exists(dead)
    assert os.path.exists(mine)  # a live writer's temporary is left alone


def test_permissions_are_owner_only(cache_dir: str, server: RangeServer) -> None:
    fs = http_fs(cache_dir)
    fs.cat_file(f"{server.url}/small.bin")
    assert fs.flush(10)
    for folder, _, names in os.walk(cache_dir):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        for n in names:
            assert stat.S_IMODE(os.stat(os.path.join(folder, n)).st_mode) == 0o600


def test_secrets_never_reach_the_disk(cache_dir: str) -> None:
    data = payload(2 * BS, 8)
    with RangeServer({"private/data.bin": data}) as srv:
        host = srv.url.removeprefix("http://")
        url = f"http://alice:PASSWORD123@{host}/private/data.bin?token=SECRET456&sig=SIG789"
        fs = http_fs(cache_dir)
        assert fs.cat_file(url) == data
        assert fs.flush(10)
        for folder, _, names in os.walk(cache_dir):
            for n in names:
                assert not any(s in n for s in ("private", "SECRET", "PASSWORD"))
                with open(os.path.join(folder, n), "rb") as f:
                    blob = f.read()
                for secret in (b"PASSWORD123", b"SECRET456", b"SIG789", b"alice"):
                    assert secret not in blob
        assert "SECRET" not in str(fs.stats()) and "SECRET" not in repr(fs)


def test_unusable_cache_dir_runs_memory_only(caplog: pytest.LogCaptureFixture,
                                            server: RangeServer) -> None:  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="netcache"):
        fs = http_fs("/proc/netcache-cannot-exist/cache")
    assert fs.context.backend is None
    assert fs.cat_file(f"{server.url}/small.bin") == server.data("/small.bin")
    assert fs.stats().disk.werr == 1
    assert len(caplog.records) == 1 and "disk tier" in caplog.records[0].getMessage()


def test_zict_file_backend(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mem = fsspec.filesystem("memory")
    data = payload(5 * BS + 7, 11)
    mem.pipe_file("/z/f.bin", data)

    def backend() -> MappingBackend:
        return MappingBackend(zict.File(str(tmp_path / "zict")), BS, 64 * MiB)

    fs = netcache.NetCacheFileSystem(fs=mem, cache_dir=backend(), block_size=BS)
    assert fs.cat_file("/z/f.bin") == data
    assert fs.flush(10)
    netcache.close_all()
    fs = netcache.NetCacheFileSystem(fs=mem, cache_dir=backend(), block_size=BS,
                                     skip_instance_cache=True)  # fmt: skip
    assert fs.cat_file("/z/f.bin") == data
    st = fs.stats()
    assert st.retrievals.disk == 6 and st.retrievals.remote == 0
    # a damaged value is a miss, not wrong bytes
    z = zict.File(str(tmp_path / "zict"))
    name = next(k for k in z if k.endswith(".3.page"))
    raw = bytearray(z[name])
    raw[-1] ^= 0xFF
    z[name] = bytes(raw)
    netcache.close_all()
    fs = netcache.NetCacheFileSystem(fs=mem, cache_dir=backend(), block_size=BS,
                                     skip_instance_cache=True)  # fmt: skip
    assert fs.cat_file("/z/f.bin") == data
    assert fs.stats().disk.rerr == 1 and fs.stats().retrievals.remote == 1


def test_mapping_backend_culls_within_limit() -> None:
    store: dict[str, bytes] = {}
    backend = MappingBackend(store, BS, 3 * (BS + 100))
    mem = fsspec.filesystem("memory")
    mem.pipe_file("/m/f.bin", payload(10 * BS, 3))
    fs = netcache.NetCacheFileSystem(fs=mem, cache_dir=backend, block_size=BS)
    fs.cat_file("/m/f.bin")
    assert fs.flush(10)
    assert len([k for k in store if k.endswith(".page")]) == 3
    assert backend.usage().culls == 7


def test_block_size_must_match_backend() -> None:
    with pytest.raises(ValueError, match=r"block_size=.* differs from the backend"):
        netcache.NetCacheFileSystem(target_protocol="memory", block_size=2 * BS,
                                    cache_dir=MappingBackend({}, BS, MiB))  # fmt: skip


def test_pending_stores_are_drained_at_exit(server: RangeServer, cache_dir: str) -> None:
    import subprocess
    import sys

    url = f"{server.url}/big.bin"
    data = server.data("/big.bin")
    code = f"""
import netcache
fs = netcache.NetCacheFileSystem(target_protocol="http", cache_dir={cache_dir!r}, block_size={BS})
assert len(fs.cat_file({url!r})) == {len(data)}
"""  # exits at once, without flush: the atexit hook stores what is pending
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert list(stored_pages(cache_dir)) == list(range(len(range(0, len(data), BS))))
    server.reset_counts()
    fs = http_fs(cache_dir, check_interval=None)
    assert fs.cat_file(url) == data and server.gets == 0


def test_hostile_files_are_at_worst_a_miss(server: RangeServer, cache_dir: str) -> None:
    url = f"{server.url}/big.bin"
    data = server.data("/big.bin")
    fs = http_fs(cache_dir, check_interval=None)
    assert fs.cat_file(url) == data
    assert fs.flush(30)
    for folder, _, names in os.walk(os.path.join(cache_dir, LAYOUT)):
        for name in names:
            path = os.path.join(folder, name)
            if name == "meta.json":  # not JSON, then JSON of the wrong shape
                with open(path, "wb") as f:
                    f.write(b"\x80\x04\x95 pickle? __import__('os').system('false')")
    for segment, _, offset in stored_pages(cache_dir).values():
        with open(segment, "r+b") as f:
            f.seek(offset)
            f.write(b"\x00" * 64)  # valid header, other bytes
    netcache.close_all()
    netcache.NetCacheFileSystem.clear_instance_cache()
    fs = http_fs(cache_dir, check_interval=None)
    assert fs.cat_file(url) == data
    st = fs.stats()
    pages = len(range(0, len(data), BS))
    # the metadata was refused (never unpickled or evaluated) and counted, so the file
    # was opened with a first look, whose pages came with it; every other page failed its
    # checksum and was fetched again
    looked = FIRST_LOOK_BYTES // BS
    assert st.retrievals.disk == 0 and st.retrievals.remote == pages
    assert st.disk.rerr == pages - looked + 1


def test_urls_never_become_paths(cache_dir: str) -> None:
    mem = fsspec.filesystem("memory")
    mem.pipe_file("/a/../../etc/passwd", b"not really")
    fs = netcache.NetCacheFileSystem(fs=mem, cache_dir=cache_dir, block_size=BS)
    assert fs.cat_file("/a/../../etc/passwd") == b"not really"
    assert fs.flush(10)
    root = os.path.realpath(cache_dir)
    for folder, dirs, names in os.walk(cache_dir):
        for name in dirs + names:
            path = os.path.realpath(os.path.join(folder, name))
            assert path.startswith(root) and "passwd" not in name and ".." not in name


def test_metadata_written_once_per_version_not_per_check(server: RangeServer,
                                                         cache_dir: str) -> None:  # fmt: skip
    url = f"{server.url}/small.bin"
    fs = http_fs(cache_dir, check_interval=0)  # a version check on every read
    fs.cat_file(url)
    assert fs.flush(30)  # metadata is written in the background
    metas = [os.path.join(f, n) for f, _, ns in os.walk(cache_dir) for n in ns if n == "meta.json"]
    assert len(metas) == 1
    inode = os.stat(metas[0]).st_ino  # each write is a new file renamed into place
    for _ in range(5):
        fs.cat_file(url)
    assert fs.flush(30) and os.stat(metas[0]).st_ino == inode
    server.put("small.bin", payload(1000, 77))  # a new version is written down
    assert fs.cat_file(url) == payload(1000, 77)
    assert fs.flush(30) and os.stat(metas[0]).st_ino != inode


class MetaGatedBackend(MappingBackend):
    """A disk tier whose metadata writes wait for ``gate`` (bounded)."""

    def __init__(self) -> None:
        super().__init__({}, BS, 64 * MiB)
        self.gate = threading.Event()
        self.writing = threading.Event()

    def store_meta(self, file_id: str, meta: dict[str, object]) -> None:
        self.writing.set()
        if not self.gate.wait(timeout=30):
            raise TimeoutError("test gate never opened")
        super().store_meta(file_id, meta)


def test_opening_a_file_does_not_wait_for_its_metadata_write(server: RangeServer) -> None:
    backend = MetaGatedBackend()
    fs = netcache.NetCacheFileSystem(target_protocol="http", cache_dir=backend, block_size=BS)
    url = f"{server.url}/small.bin"
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fs.cat_file(url)))
    try:
        reader.start()
        reader.join(10)
        # read while its metadata write is held (started by then, or about to be: the
        # worker may be slower than a one-request read): the write runs on the worker
        assert got == [server.data("/small.bin")] and backend.writing.wait(10)
        fid = fs.context.cookies.file_id(url)
        assert backend.load_meta(fid) is None
    finally:
        backend.gate.set()
    assert fs.flush(10)
    meta = backend.load_meta(fid)
    assert (
        meta is not None and meta["version"] == fs.context.cookies.cookie(fs.fs, url, None).version
    )


def test_an_invalidation_has_the_last_word_over_metadata_writes(server: RangeServer) -> None:
    backend = MetaGatedBackend()
    fs = netcache.NetCacheFileSystem(target_protocol="http", cache_dir=backend, block_size=BS)
    first, second = f"{server.url}/small.bin", f"{server.url}/big.bin"
    invalidated = threading.Event()
    other = threading.Thread(target=lambda: (fs.invalidate(first), invalidated.set()))
    try:
        fs.cat_file(first)
        assert backend.writing.wait(10)  # its metadata write is under way, held
        fs.cat_file(second, 0, 10)  # its metadata is queued behind
        other.start()
        # the invalidation waits for the write under way (or that write, landing after
        # it, would name a version the invalidation dropped)
        assert not invalidated.wait(0.3)
        fs.invalidate(second)  # queued, not started: dropped, no waiting
    finally:
        backend.gate.set()
    assert invalidated.wait(10) and fs.flush(10)
    cookies = fs.context.cookies
    assert backend.load_meta(cookies.file_id(first)) is None
    assert backend.load_meta(cookies.file_id(second)) is None


def _all_on_disk(
    server: RangeServer, cache_dir: str
) -> tuple[netcache.NetCacheFileSystem, str, bytes]:
    """A filesystem that has read big.bin whole and stored every page of it."""
    url = f"{server.url}/big.bin"
    data = server.data("/big.bin")
    fs = http_fs(cache_dir, check_interval=None)
    assert fs.cat_file(url) == data and fs.flush(30)
    return fs, url, data


_DAMAGE = """
import os, sys
path, at, length, how = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
fd = os.open(path, os.O_WRONLY)
if how == "flip":
    os.pwrite(fd, bytes(b ^ 0xFF for b in os.pread(os.open(path, os.O_RDONLY), length, at)), at)
elif how == "zero":
    os.pwrite(fd, bytes(length), at)
else:
    os.ftruncate(fd, 0)
"""


@pytest.mark.parametrize("damage", ["flip", "zero", "truncate"])
def test_a_page_read_from_disk_never_changes_under_its_holder(
    server: RangeServer, cache_dir: str, damage: str
) -> None:
    fs, url, data = _all_on_disk(server, cache_dir)
    fs = _reopen(cache_dir)
    assert fs.cat_file(url, 0, 3 * BS) == data[: 3 * BS]
    assert fs.stats().retrievals.disk == 3
    cookie = fs.reader.pin_version(url)
    # another process damages the bytes, zeroes them or truncates the segment (which
    # killed a reader holding a mapping of it with SIGBUS)
    path, _, at = stored_pages(cache_dir)[1]
    subprocess.run([sys.executable, "-c", _DAMAGE, path, str(at), str(BS), damage], check=True)
    server.reset_counts()
    assert fs.cat_file(url, 0, 3 * BS) == data[: 3 * BS]  # served from memory, as checked
    assert server.gets == 0
    pages = fs.context.page_cache.lookup_resident(cookie.file_id, cookie.version, 0, 2)
    assert all(type(page.data) is mmap.mmap for page in pages)  # memory of its own


def _first_half_on_disk(
    server: RangeServer, cache_dir: str
) -> tuple[netcache.NetCacheFileSystem, str, bytes, int]:
    """A new process's filesystem, with the first half of big.bin on disk, none in memory."""
    url = f"{server.url}/big.bin"
    data = server.data("/big.bin")
    half = (len(data) // BS // 2) * BS
    fs = http_fs(cache_dir, check_interval=None)
    assert fs.cat_file(url, 0, half) == data[:half] and fs.flush(30)
    return _reopen(cache_dir), url, data, half


def test_readahead_fetches_only_what_the_disk_tier_lacks(
    server: RangeServer, cache_dir: str
) -> None:
    fs, url, data, half = _first_half_on_disk(server, cache_dir)
    backend = fs.context.backend
    loaders: list[str] = []
    load = backend.load_pages

    def recording(keys: list[netcache.page.PageKey]) -> dict[netcache.page.PageKey, object]:
        pages = load(keys)
        loaders.extend(threading.current_thread().name for _ in pages)
        return pages

    backend.load_pages = recording  # type: ignore[method-assign]
    server.reset_counts()
    with fs.open(url) as f:
        got = b"".join(iter(lambda: f.read(100_000), b""))
    assert got == data
    st = fs.stats()
    assert st.retrievals.disk == half // BS  # on disk: read when needed, not re-fetched
    assert server.bytes_sent == len(data) - half  # read-ahead fetched only the rest
    # pages on disk were read by the reader itself: a thread hop costs more than the read
    assert len(loaders) == half // BS and not [n for n in loaders if "readahead" in n]


def _gated(workers: int = 2) -> tuple[netcache.NetCacheFileSystem, GatedBackend, bytes]:
    backend = GatedBackend(BS, limit=64 * MiB)
    fs = netcache.NetCacheFileSystem(target_protocol="memory", cache_dir=backend,
                                     block_size=BS, memory_limit=64 * BS, readahead=False,
                                     writeback_workers=workers, check_interval=None)  # fmt: skip
    blob = payload(40 * BS, 11)
    fs.fs.pipe_file("/deferred/f", blob)
    return fs, backend, blob


def test_a_reader_that_outruns_the_disk_stores_runs_itself_and_loses_nothing() -> None:
    fs, backend, blob = _gated()
    assert fs.cat_file("/deferred/f") == blob  # 40 pages at once; the queue's share is 16
    assert backend.storing.wait(10)  # the workers are stuck
    st = fs.stats()
    # every page was queued; the reader stored the oldest runs itself until the queue was
    # back within its share (a page a run here), as a writer is throttled to dirty limits
    assert st.stores.ok == 40 and st.stores.own == 40 - 16 and st.stores.pend == 16 * BS
    assert len(backend.stored) == 40 - 16 and st.unstored == type(st.unstored)()
    backend.gate.set()
    assert fs.flush(30)
    assert sorted(k.index for k in backend.stored) == list(range(40))
    st = fs.stats()
    assert st.stores.pgs == 40 and st.stores.ok == 40 and st.stores.pend == 0


def test_a_second_worker_starts_only_when_the_disk_falls_behind() -> None:
    fs, backend, blob = _gated(workers=2)
    queue = fs.context.writeback
    assert queue is not None
    assert fs.cat_file("/deferred/f", 0, 8 * BS) == blob[: 8 * BS]  # room for all 8
    assert backend.storing.wait(10)
    assert len(queue._threads) == 1 and fs.stats().stores.nbf == 0
    assert fs.cat_file("/deferred/f") == blob  # 32 more pages; the queue holds 16
    assert fs.stats().stores.nbf > 0 and len(queue._threads) == 2
    backend.gate.set()
    assert fs.flush(30)
    assert sorted(k.index for k in backend.stored) == list(range(40))
    assert len(queue._threads) == 2  # never more than asked for


def test_queued_stores_of_an_invalidated_file_are_dropped_and_counted() -> None:
    fs, backend, blob = _gated()
    assert fs.cat_file("/deferred/f") == blob
    assert backend.storing.wait(10)
    cookie = fs.reader.pin_version("/deferred/f")
    # a reader still holds the pages
    held = fs.context.page_cache.lookup_resident(cookie.file_id, cookie.version, 0, 39)
    assert held is not None
    by_reader = len(backend.stored)
    fs.invalidate("/deferred/f")
    backend.gate.set()
    assert fs.flush(30)
    # only the stores already running went through, and were undone
    assert len(backend.stored) - by_reader <= 2 and fs.disk_usage().pages == 0
    assert fs.stats().unstored.invalidated == 16  # every queued page, counted


def test_readahead_tells_the_disk_which_pages_come_next(
    server: RangeServer, cache_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, url, data, half = _first_half_on_disk(server, cache_dir)
    advised: list[tuple[str, int, int]] = []
    read_through = segmentio.read_through
    hinters: set[str] = set()

    def recording(fd: int, offset: int, length: int) -> None:
        advised.append((os.readlink(f"/proc/self/fd/{fd}"), offset, length))
        hinters.add(threading.current_thread().name)
        read_through(fd, offset, length)

    monkeypatch.setattr(segmentio, "read_through", recording)
    with fs.open(url) as f:
        got = b"".join(iter(lambda: f.read(100_000), b""))
    assert got == data
    fs.context.readahead.shutdown()  # the last hints may still be on their way
    # hints are given on read-ahead threads: the reader does not wait for their reads
    assert hinters and all(name.startswith("netcache-readahead") for name in hinters)
    where = {(path, offset): index for index, (path, _, offset) in stored_pages(cache_dir).items()}
    hinted = set()
    for path, offset, length in advised:  # each hint spans stored pages of one segment
        first, last = where[(path, offset)], where[(path, offset + length - BS)]
        hinted.update(range(first, last + 1))
    # pages on disk ahead of the reader were hinted, up to the last; not those it was
    # already reading when the window reached them
    assert hinted <= set(range(1, half // BS)) and max(hinted) == half // BS - 1
    assert len(hinted) >= half // BS * 3 // 4
    assert fs.stats().retrievals.disk == half // BS and fs.stats().disk.rerr == 0


def test_a_warm_sequential_read_asks_the_disk_tier_nothing(
    server: RangeServer, cache_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, url, data = _all_on_disk(server, cache_dir)
    backend = fs.context.backend
    asked: list[str] = []
    for name in ("holds", "will_need", "load_pages"):
        method = getattr(backend, name)
        monkeypatch.setattr(
            backend, name, lambda *a, _m=method, _n=name: (asked.append(_n), _m(*a))[1]
        )
    with fs.open(url) as f:  # every page resident: read-ahead has nothing to do
        got = b"".join(iter(lambda: f.read(100_000), b""))
    assert got == data and asked == []
    assert fs.stats().retrievals.mem >= len(data) // BS


def test_adjacent_pages_load_in_one_read_and_damage_spoils_only_its_page(
    cache_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from netcache.backends import DirectoryBackend

    backend = DirectoryBackend(cache_dir, BS, 64 * MiB)
    keys = [netcache.page.PageKey("ab" * 16, "cd" * 16, i) for i in range(10)]
    for key in keys[:4] + keys[5:8]:  # slots 0-3 and 5-7: two runs
        backend.store_page(key, payload(BS, key.index))
    reads: list[int] = []
    preadv = os.preadv

    def recording(fd: int, buffers: list[memoryview], offset: int) -> int:
        reads.append(sum(len(b) for b in buffers))
        return preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", recording)
    reader = DirectoryBackend(cache_dir, BS, 64 * MiB)  # another process: no index yet
    loaded = reader.load_pages(keys)
    assert sorted(k.index for k in loaded) == [0, 1, 2, 3, 5, 6, 7]
    assert all(bytes(loaded[k]) == payload(BS, k.index) for k in loaded)  # type: ignore[arg-type]
    assert reads == [4 * BS, 3 * BS]  # one read per run, each page into its own buffer
    assert all(type(buf) is mmap.mmap for buf in loaded.values())

    path, _, data_at = stored_pages(cache_dir)[6]
    with open(path, "r+b") as f:  # one flipped byte in the middle of a run
        f.seek(data_at + 100)
        byte = f.read(1)
        f.seek(data_at + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    loaded = reader.load_pages(keys[5:8])
    assert isinstance(loaded[keys[6]], netcache.errors.CorruptPageError)
    assert bytes(loaded[keys[5]]) == payload(BS, 5) and bytes(loaded[keys[7]]) == payload(BS, 7)  # type: ignore[arg-type]
    assert 6 not in stored_pages(cache_dir)  # its header cleared: stored again on next fetch
    reader.store_page(keys[6], payload(BS, 6))
    assert bytes(reader.load_page(keys[6])) == payload(BS, 6)  # type: ignore[arg-type]


def _takes_o_direct(folder: str) -> bool:
    try:
        os.close(os.open(os.path.join(folder, "probe"), os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
    except OSError:
        return False
    return True


def test_a_run_of_pages_is_stored_in_two_writes_and_taken_slots_are_kept(
    cache_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    from netcache.backends import DirectoryBackend
    from netcache.buffers import page_buffer

    backend = DirectoryBackend(cache_dir, BS, 64 * BS)  # 4 pages a segment
    per, table = backend.segment_pages, table_size(backend.segment_pages)
    keys = [netcache.page.PageKey("ab" * 16, "cd" * 16, i) for i in range(per + 3)]
    data = {key: payload(BS, key.index) for key in keys[:-1]}
    data[keys[-1]] = payload(BS // 2, keys[-1].index)  # the file's last page is short
    DirectoryBackend(cache_dir, BS, 64 * BS).store_page(keys[1], payload(BS, 99))  # another's
    writes: list[tuple[int, list[int], bool]] = []
    pwritev = os.pwritev

    def recording(fd: int, buffers: list[memoryview], offset: int) -> int:
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        writes.append((offset, [len(b) for b in buffers], direct))
        return pwritev(fd, buffers, offset)

    opened: list[str] = []
    real_open = os.open

    def counting(path: str, flags: int, *args: int, **kwargs: int) -> int:
        if path.endswith(".seg"):
            opened.append(path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "pwritev", recording)
    monkeypatch.setattr(os, "open", counting)
    backend.store_pages([(key, page_buffer(data[key])) for key in keys])
    monkeypatch.setattr(os, "open", real_open)
    assert len(opened) == 2  # a segment opened once for its bytes and its headers
    d = _takes_o_direct(cache_dir)  # whole pages' bytes bypass the OS page cache
    assert writes == [
        (table, [BS], d), (0, [HEADER], False),  # slot 1 is taken: left as it is
        (table + 2 * BS, [BS, BS], d), (2 * HEADER, [2 * HEADER], False),
        # the next segment: one run, its short last page through the OS page cache
        (table, [BS, BS], d), (table + 2 * BS, [BS // 2], False), (0, [3 * HEADER], False),
    ]  # fmt: skip
    reader = DirectoryBackend(cache_dir, BS, 64 * BS)  # another process
    loaded = reader.load_pages(keys)
    assert bytes(loaded.pop(keys[1])) == payload(BS, 99)  # type: ignore[arg-type]
    assert {k: bytes(v) for k, v in loaded.items()} == {k: data[k] for k in loaded}  # type: ignore[arg-type]
    assert len(loaded) == len(keys) - 1


@pytest.mark.parametrize("refused_at", ["switch", "write"])
def test_a_filesystem_refusing_o_direct_gets_buffered_writes(
    cache_dir: str, monkeypatch: pytest.MonkeyPatch, refused_at: str
) -> None:
    import errno
    import fcntl

    from netcache.backends import DirectoryBackend
    from netcache.buffers import page_buffer

    tried: list[object] = []
    real_fcntl, real_pwritev = fcntl.fcntl, os.pwritev

    def no_direct_switch(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:  # as tmpfs and some FUSE answer
            tried.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(fd, cmd, arg)

    def no_direct_write(fd: int, buffers: list[memoryview], offset: int) -> int:
        if real_fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            tried.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwritev(fd, buffers, offset)

    if refused_at == "switch":
        monkeypatch.setattr(fcntl, "fcntl", no_direct_switch)
    else:
        monkeypatch.setattr(os, "pwritev", no_direct_write)
    backend = DirectoryBackend(cache_dir, BS, 64 * MiB)
    keys = [netcache.page.PageKey("ab" * 16, "cd" * 16, i) for i in range(4)]
    backend.store_pages([(key, page_buffer(payload(BS, key.index))) for key in keys[:2]])
    backend.store_pages([(key, page_buffer(payload(BS, key.index))) for key in keys[2:]])
    assert len(tried) == 1  # refused once, not asked again
    loaded = DirectoryBackend(cache_dir, BS, 64 * MiB).load_pages(keys)
    assert {k.index: bytes(v) for k, v in loaded.items()} == {  # type: ignore[arg-type]
        k.index: payload(BS, k.index) for k in keys
    }


def test_short_writes_are_completed(cache_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from netcache.backends import DirectoryBackend

    pwritev = os.pwritev
    # a kernel may write less than asked: 1000 bytes at most here
    monkeypatch.setattr(os, "pwritev", lambda fd, buffers, offset: pwritev(
        fd, [memoryview(buffers[0])[:1000]], offset))  # fmt: skip
    backend = DirectoryBackend(cache_dir, BS, 64 * MiB)
    keys = [netcache.page.PageKey("ab" * 16, "cd" * 16, i) for i in range(3)]
    backend.store_pages([(key, payload(BS, key.index)) for key in keys])
    loaded = DirectoryBackend(cache_dir, BS, 64 * MiB).load_pages(keys)
    assert {k.index: bytes(v) for k, v in loaded.items()} == {  # type: ignore[arg-type]
        k.index: payload(BS, k.index) for k in keys
    }


def test_spans_end_after_a_short_page() -> None:
    from netcache.backends.segments import spans as _spans

    whole = [True, False, True, True, True, True]
    assert list(_spans([0, 1, 2, 4, 5], whole)) == [(0, 2), (2, 3), (4, 6)]
    assert list(_spans([], whole)) == []


def test_a_hint_from_a_segment_s_first_page_covers_its_header_table(
    cache_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from netcache.backends import DirectoryBackend

    backend = DirectoryBackend(cache_dir, BS, 64 * BS)  # 4 pages a segment
    per, table = backend.segment_pages, table_size(backend.segment_pages)
    keys = [netcache.page.PageKey("ab" * 16, "cd" * 16, i) for i in range(2 * per)]
    for key in keys:
        backend.store_page(key, payload(BS, key.index))
    advised: list[tuple[str, int, int]] = []
    monkeypatch.setattr(
        segmentio, "read_through", lambda fd, offset, length: advised.append(
            (os.path.basename(os.readlink(f"/proc/self/fd/{fd}")), offset, length))
    )  # fmt: skip
    backend.will_need(keys[2 : per + 2])  # the end of one segment, the start of the next
    names = sorted({name for name, _, _ in advised})
    # a reader entering the second segment reads its table first: the hint starts there
    assert sorted(advised) == [(names[0], table + 2 * BS, (per - 2) * BS),
                               (names[1], 0, table + 2 * BS)]  # fmt: skip


_PREADV = os.preadv


def _cached(fd: int, length: int) -> int:
    """Bytes from the start of ``fd`` readable without touching the disk."""
    try:
        return _PREADV(fd, [bytearray(length)], 0, os.RWF_NOWAIT)
    except BlockingIOError:
        return 0


@pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="needs preadv2's RWF_NOWAIT")
def test_a_hint_reads_its_span_into_the_page_cache_with_sendfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "segment"
    path.write_bytes(os.urandom(3 * MiB + 5))
    sent: list[tuple[int, int, int]] = []
    sendfile = os.sendfile

    def recording(out: int, fd: int, offset: int, count: int) -> int:
        n = sendfile(out, fd, offset, count)
        sent.append((offset, count, n))
        return n

    monkeypatch.setattr(os, "sendfile", recording)
    monkeypatch.setattr(os, "preadv", None)  # no copying out
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if _cached(fd, 3 * MiB) == 3 * MiB:
            pytest.skip("this filesystem keeps files in memory (tmpfs?)")
        segmentio.read_through(fd, 0, 3 * MiB)
        assert sent and sent[0][:2] == (0, 3 * MiB)
        assert _cached(fd, 3 * MiB) == 3 * MiB
        sent.clear()
        segmentio.read_through(fd, 3 * MiB, 4 * MiB)  # past the end: stops there
        assert [(offset, got) for offset, _, got in sent] == [(3 * MiB, 5), (3 * MiB + 5, 0)]
    finally:
        os.close(fd)


def test_a_hint_copies_where_sendfile_is_refused_and_stops_asking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "segment"
    path.write_bytes(bytes(3 * MiB))
    refused: list[int] = []

    def no_sendfile(out: int, fd: int, offset: int, count: int) -> int:
        refused.append(offset)
        raise OSError(errno.ENOTSOCK, "not a socket")

    copied: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "sendfile", no_sendfile)
    monkeypatch.setattr(segmentio, "copy_through", lambda fd, start, n: copied.append((start, n)))
    monkeypatch.setattr(segmentio, "_sendfile_hints", True)
    fd = os.open(path, os.O_RDONLY)
    try:
        segmentio.read_through(fd, 4096, MiB)
        segmentio.read_through(fd, 2 * MiB, MiB)
    finally:
        os.close(fd)
    assert refused == [4096]  # asked once, then never again
    assert copied == [(4096, MiB), (2 * MiB, MiB)]


def test_a_copying_hint_reads_its_span_through_the_page_cache_and_stops_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "segment"
    path.write_bytes(bytes(3 * MiB + 5))
    reads: list[tuple[int, int, int]] = []
    addresses: list[int] = []
    preadv = os.preadv

    def recording(fd: int, buffers: list[memoryview], offset: int) -> int:
        n = preadv(fd, buffers, offset)
        reads.append((offset, sum(len(b) for b in buffers), n))
        addresses.extend(ctypes.addressof(ctypes.c_char.from_buffer(b)) for b in buffers)
        return n

    monkeypatch.setattr(os, "preadv", recording)
    fd = os.open(path, os.O_RDONLY)
    try:
        segmentio.copy_through(fd, 4096, 2 * MiB + 100)
        spans = [(offset, asked) for offset, asked, _ in reads]
        # the whole span, in order, a buffer at a time (never more than asked for)
        assert spans == [(4096, MiB), (4096 + MiB, MiB), (4096 + 2 * MiB, 100)]
        reads.clear()
        segmentio.copy_through(fd, 3 * MiB, 4 * MiB)  # past the end: stops there
        assert [(offset, got) for offset, _, got in reads] == [(3 * MiB, 5), (3 * MiB + 5, 0)]
        # into page-aligned memory: the kernel copies into a bytearray's (16 bytes into a
        # page) several times slower
        assert addresses and all(a % mmap.PAGESIZE == 0 for a in addresses)
    finally:
        os.close(fd)


def test_will_need_of_absent_pages_is_harmless(cache_dir: str) -> None:
    from netcache.backends import DirectoryBackend

    backend = DirectoryBackend(cache_dir, BS, 64 * MiB)
    keys = [netcache.page.PageKey("ab" * 16, "cd" * 16, i) for i in range(3)]
    backend.will_need(keys)  # nothing stored: no file to open, nothing raised
    backend.store_page(keys[1], payload(BS, 5))
    backend.will_need(keys)
    assert [backend.load_page(k) is not None for k in keys] == [False, True, False]


def test_disk_hits_share_recency_through_mtimes_at_a_grain(cache_dir: str) -> None:
    from netcache.backends import DirectoryBackend
    from netcache.backends.directory import RECENCY_GRAIN as _RECENCY_GRAIN

    backend = DirectoryBackend(cache_dir, BS, 64 * MiB)
    # pages in two segments
    stale, fresh = (netcache.page.PageKey("ab" * 16, "cd" * 16, i * backend.segment_pages)
                    for i in range(2))  # fmt: skip
    for key in (stale, fresh):
        backend.store_page(key, payload(BS, key.index))
    files = segment_files(cache_dir)
    long_ago = os.stat(files[0]).st_mtime - 3600
    recently = os.stat(files[1]).st_mtime - _RECENCY_GRAIN / 2
    os.utime(files[0], (long_ago, long_ago))
    os.utime(files[1], (recently, recently))
    assert backend.load_page(stale) is not None and backend.load_page(fresh) is not None
    assert os.stat(files[0]).st_mtime > long_ago + 3000  # touched: other processes see it
    assert os.stat(files[1]).st_mtime == recently  # within the grain: left alone


def test_a_page_folder_removed_under_a_writer_is_made_again(cache_dir: str) -> None:
    import shutil

    from netcache.backends import DirectoryBackend

    backend = DirectoryBackend(cache_dir, BS, 64 * MiB)
    keys = [netcache.page.PageKey("ab" * 16, "cd" * 16, i) for i in range(2)]
    backend.store_page(keys[0], payload(BS, 1))
    shutil.rmtree(os.path.dirname(segment_files(cache_dir)[0]))  # e.g. `netcache clear`
    backend.store_page(keys[1], payload(BS, 2))
    assert backend.load_page(keys[0]) is None
    assert bytes(backend.load_page(keys[1])) == payload(BS, 2)  # type: ignore[arg-type]


def test_temporaries_of_a_forked_child_carry_its_pid(cache_dir: str) -> None:

    names = segmentio.TempNames()  # as a backend's folders hold them
    mine = names.next()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child inherits the names as they are, as a forked worker would
        try:
            os.write(write_end, names.next().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    child_name = os.read(read_end, 200).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert mine.startswith(f".tmp.{os.getpid()}.")
    assert child_name.startswith(f".tmp.{pid}.")
    assert child_name.rsplit("-", 1)[0] != mine.rsplit("-", 1)[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness")
def test_writeback_workers_yield_the_cpu_to_readers(server: RangeServer, cache_dir: str) -> None:
    from netcache.writeback import WORKER_NICENESS

    reader = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    fs = http_fs(cache_dir)
    assert fs.cat_file(f"{server.url}/big.bin") == server.data("/big.bin")
    workers = [t for t in threading.enumerate() if t.name.startswith("netcache-writeback")]
    assert workers
    for worker in workers:
        assert worker.native_id is not None
        assert os.getpriority(os.PRIO_PROCESS, worker.native_id) == WORKER_NICENESS
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == reader < WORKER_NICENESS
    assert fs.flush(30) and fs.disk_usage().pages == len(range(0, 3 * MiB + 12345, BS))


def record_disk_looks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The page indices looked for in segment files from now on (the file-I/O module's
    reads of slots)."""
    looked: list[int] = []
    read_slots = segmentio.read_slots

    def recording(fd: int, wanted: list[tuple[int, netcache.page.PageKey]], *args: Any) -> Any:
        looked.extend(key.index for _, key in wanted)
        return read_slots(fd, wanted, *args)

    monkeypatch.setattr(segmentio, "read_slots", recording)
    return looked


def test_a_cold_read_of_a_new_file_does_not_look_for_its_pages_on_disk(
    server: RangeServer, cache_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{server.url}/big.bin"
    data = server.data("/big.bin")
    pages = len(range(0, len(data), BS))
    fs = http_fs(cache_dir, check_interval=None, readahead=False)
    opened = record_disk_looks(monkeypatch)
    assert fs.cat_file(url) == data and fs.flush(30)
    assert opened == []  # its folder is new: no page file can be there but ours
    assert fs.reclaim(len(data)) >= len(data)  # every page stored: all released
    assert fs.cat_file(url) == data  # dropped from memory: stored pages are read back
    assert len(opened) == pages and fs.stats().retrievals.disk == pages
    fs = _reopen(cache_dir)  # another process looks everywhere
    assert fs.cat_file(url) == data and fs.stats().retrievals.disk == pages


def test_pages_another_process_stores_in_a_folder_this_one_made_are_found(
    cache_dir: str,
) -> None:
    from netcache.backends import DirectoryBackend

    mine = DirectoryBackend(cache_dir, BS, 64 * MiB)
    theirs = DirectoryBackend(cache_dir, BS, 64 * MiB)  # as another process would
    keys = [netcache.page.PageKey("ab" * 16, "cd" * 16, i) for i in range(2)]
    mine.store_meta(keys[0].file_id, {"v": 1})  # first sight: this process makes the folder
    mine.store_page(keys[0], payload(BS, 1))
    theirs.store_page(keys[1], payload(BS, 2))
    assert bytes(theirs.load_page(keys[0])) == payload(BS, 1)  # type: ignore[arg-type]
    assert mine.load_page(keys[1]) is None  # not looked for until the index is rebuilt
    mine._rescan()
    assert bytes(mine.load_page(keys[1])) == payload(BS, 2)  # type: ignore[arg-type]


def test_a_folder_is_known_as_ours_before_another_worker_fills_it(
    cache_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from netcache.backends import DirectoryBackend

    backend = DirectoryBackend(cache_dir, BS, 64 * MiB)
    keys = [netcache.page.PageKey("ab" * 16, "cd" * 16, i) for i in range(3)]
    made = backend.folder.open_folder
    in_mkdir = threading.Event()

    def slow_makedirs(folder: str, create: bool = False) -> tuple[int, bool]:
        fd, created = made(folder, create)
        if created and folder.endswith(keys[0].file_id):
            in_mkdir.set()
            time.sleep(0.3)  # the worker that made it is held up (a GIL switch, a page fault)
        return fd, created

    monkeypatch.setattr(backend.folder, "open_folder", slow_makedirs)
    meta = threading.Thread(target=backend.store_meta, args=(keys[0].file_id, {"v": 1}))
    meta.start()
    assert in_mkdir.wait(10)
    backend.store_pages([(keys[0], payload(BS, 1))])  # a second worker, pages of that file
    looked = record_disk_looks(monkeypatch)
    # pages this process never stored in a folder it made are a miss without a look
    assert backend.load_pages(keys[1:]) == {} and looked == []
    meta.join(10)
    assert bytes(backend.load_page(keys[0])) == payload(BS, 1)  # type: ignore[arg-type]


def test_a_slot_is_written_once(cache_dir: str) -> None:
    from netcache.backends import DirectoryBackend

    backend = DirectoryBackend(cache_dir, BS, 64 * MiB)
    key = netcache.page.PageKey("ab" * 16, "cd" * 16, 3)
    backend.store_page(key, payload(BS, 1))
    mapped = backend.load_page(key)
    assert mapped is not None and bytes(mapped) == payload(BS, 1)
    # another writer with other bytes for the same page (a remote whose version tag did
    # not change with its content): what is on disk, and mapped, stays as it was
    DirectoryBackend(cache_dir, BS, 64 * MiB).store_page(key, payload(BS, 2))
    assert bytes(mapped) == payload(BS, 1)
    assert bytes(backend.load_page(key)) == payload(BS, 1)  # type: ignore[arg-type]
    backend.discard_page(key)  # a cleared slot takes a page again
    backend.store_page(key, payload(BS, 2))
    assert bytes(backend.load_page(key)) == payload(BS, 2)  # type: ignore[arg-type]


def test_segments_count_the_pages_they_hold(cache_dir: str) -> None:
    from netcache.backends import DirectoryBackend

    limit = 64 * MiB
    reader = DirectoryBackend(cache_dir, BS, limit)  # another process, started first
    writer = DirectoryBackend(cache_dir, BS, limit)
    per = writer.segment_pages
    assert per == 64 and table_size(per) % 4096 == 0
    far = netcache.page.PageKey("ab" * 16, "cd" * 16, per - 1)  # the last slot only
    writer.store_page(far, payload(BS, 1))
    (segment,) = segment_files(cache_dir)
    assert os.path.getsize(segment) == table_size(per) + per * BS  # sparse
    assert writer.usage().used == table_size(per) + BS and writer.usage().pages == 1
    for i in range(3):
        writer.store_page(far._replace(index=i), payload(BS, i))
    assert writer.usage().pages == 4 and writer.usage().used == table_size(per) + 4 * BS
    # a process reading one page of a segment it did not know counts all it holds
    assert reader.usage().pages == 0
    assert bytes(reader.load_page(far._replace(index=1))) == payload(BS, 1)  # type: ignore[arg-type]
    assert reader.usage().pages == 4 and reader.usage().used == table_size(per) + 4 * BS
    assert DirectoryBackend(cache_dir, BS, limit).usage().pages == 4  # and so does a rescan


def test_folders_are_made_with_their_missing_parents_owner_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import stat

    from netcache.backends.folder import CacheFolder

    deep = tmp_path / "a" / "b" / "c"
    root = CacheFolder(str(tmp_path / "a"), "b/c")  # made, with its two missing parents
    for folder in (tmp_path / "a", tmp_path / "a" / "b", deep):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    fd, made = root.open_folder("d", create=True)
    os.close(fd)
    assert made and stat.S_IMODE((deep / "d").stat().st_mode) == 0o700
    fd, made = root.open_folder("d", create=True)
    os.close(fd)
    assert not made  # there already
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        CacheFolder(str(tmp_path / "f"))
    with pytest.raises(NotADirectoryError):
        CacheFolder(str(tmp_path / "f" / "g"))


def test_a_fresh_folder_is_rebuilt_after_a_64th_of_the_limit_not_every_few_pages(
    cache_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from netcache.backends import DirectoryBackend

    rebuilds = 0
    rescan = DirectoryBackend._rescan

    def counting(self: DirectoryBackend) -> None:
        nonlocal rebuilds
        rebuilds += 1
        rescan(self)

    monkeypatch.setattr(DirectoryBackend, "_rescan", counting)
    backend = DirectoryBackend(cache_dir, BS, 1024 * MiB)  # a 64th: 256 pages
    assert rebuilds == 1  # at start
    keys = [netcache.page.PageKey("ab" * 16, "cd" * 16, i) for i in range(300)]
    for i in range(0, 250, 10):  # 4 segments: pages/8 alone would rebuild every 32 pages
        backend.store_pages([(key, payload(BS, key.index)) for key in keys[i : i + 10]])
    assert rebuilds == 1
    backend.store_pages([(key, payload(BS, key.index)) for key in keys[250:]])
    assert rebuilds == 2  # past 256 pages since the last
    assert backend.usage().pages == 300


def test_a_mapping_backend_takes_sizes_as_everything_else_does(tmp_path) -> None:  # type: ignore[no-untyped-def]
    backend = MappingBackend(zict.File(str(tmp_path / "z")), block_size="64KiB", limit="10GiB")
    assert (backend.block_size, backend.limit) == (64 << 10, 10 << 30)
    with pytest.raises(ValueError, match="limit="):
        MappingBackend({}, block_size=BS, limit="lots")
