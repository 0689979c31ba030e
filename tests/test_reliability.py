"""No wrong byte and no lost data: kill -9, several processes on one folder, a full or
read-only disk, fork."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import fsspec
import pytest
from conftest import BS, payload

import netcache
from netcache.backends import DirectoryBackend
from netcache.backends.base import HEADER_SIZE
from netcache.backends.segmentio import stored_slots
from netcache.backends.segments import LAYOUT, parse_segment_name, table_size

CRASH_CYCLES = int(os.environ.get("NETCACHE_CRASH_CYCLES", "30"))
PAGE_FILE = HEADER_SIZE + BS


def make_sources(root: str, n: int, npages: int) -> dict[str, bytes]:
    files = {}
    for i in range(n):
        data = payload(npages * BS - 7 * i, 300 + i)
        path = os.path.join(root, f"f{i}.bin")
        with open(path, "wb") as f:
            f.write(data)
        files[path] = data
    return files


def folder_state(cache_dir: str) -> tuple[int, int, list[str]]:
    """Bytes of segment files (as the disk tier counts them), pages stored in them, and
    leftover temporaries, in the cache folder."""
    size = count = 0
    temps = []
    for folder, _, names in os.walk(os.path.join(cache_dir, LAYOUT)):
        for n in names:
            parsed = parse_segment_name(n)
            if parsed is not None:  # sparse: its table and the pages it holds
                fd = os.open(os.path.join(folder, n), os.O_RDONLY)
                try:
                    pages = stored_slots(fd, parsed[2]).bit_count()
                finally:
                    os.close(fd)
                size += table_size(parsed[2]) + pages * BS
                count += pages
            elif n.startswith(".tmp."):
                temps.append(n)
    return size, count, temps


READER = textwrap.dedent(
    """
    import os, random, sys, fsspec, netcache
    root, cache, seed, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    fs = netcache.NetCacheFileSystem(fs=fsspec.filesystem("file"), cache_dir=cache,
                                     block_size={bs}, disk_limit={limit},
                                     memory_limit={memory}, check_interval=None)
    names = sorted(n for n in os.listdir(root) if n.endswith(".bin"))
    sources = {{n: open(os.path.join(root, n), "rb").read() for n in names}}
    rng = random.Random(seed)
    print("ready", flush=True)
    for i in range(rounds):
        name = rng.choice(names)
        data = sources[name]
        a = rng.randrange(len(data))
        b = a + rng.randrange(1, 4 * {bs})
        got = fs.cat_file(os.path.join(root, name), a, b)
        if got != data[a:b]:
            raise SystemExit(f"wrong bytes: {{name}} {{a}}-{{b}}")
    fs.flush(30)
    print("ok", fs.stats().retrievals.disk, flush=True)
    """
)


def reader_script(limit_pages: int, memory_pages: int = 64) -> str:
    return READER.format(bs=BS, limit=limit_pages * PAGE_FILE, memory=memory_pages * BS)


@pytest.mark.parametrize("limit_pages", [40, 4096])
def test_kill_9_at_random_moments(tmp_path, limit_pages: int) -> None:  # type: ignore[no-untyped-def]
    # 40: the files hold 64 pages, culling runs all the time, segments of 2 pages;
    # 4096: nothing is culled, every file's pages share one segment
    root = str(tmp_path / "src")
    os.mkdir(root)
    files = make_sources(root, 4, 16)
    cache = str(tmp_path / "cache")
    script = reader_script(limit_pages)
    rng = random.Random(9)
    killed = 0
    for cycle in range(CRASH_CYCLES):
        proc = subprocess.Popen([sys.executable, "-c", script, root, cache, str(cycle),
                                 "1000000"], stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.02, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        killed += proc.returncode == -signal.SIGKILL
    assert killed == CRASH_CYCLES
    # the next start cleans up what the dead writers left, and its accounting is the truth
    backend = DirectoryBackend(cache, BS, limit_pages * PAGE_FILE)
    size, count, temps = folder_state(cache)
    assert temps == []
    usage = backend.usage()
    assert (usage.used, usage.pages) == (size, count) and size <= limit_pages * PAGE_FILE
    # and every byte read through what survived is the remote's
    fs = netcache.NetCacheFileSystem(fs=fsspec.filesystem("file"), cache_dir=cache,
                                     block_size=BS, disk_limit=limit_pages * PAGE_FILE,
                                     check_interval=None)  # fmt: skip
    for path, data in files.items():
        assert fs.cat_file(path) == data
    assert fs.stats().retrievals.disk > 0 and fs.stats().disk.rerr == 0


@pytest.mark.parametrize("limit_pages", [24, 4096])
def test_four_processes_one_folder(tmp_path, limit_pages: int) -> None:  # type: ignore[no-untyped-def]
    # 24: the files hold 96 pages, one page a segment, culled all the time; 4096: the four
    # processes store into the same 16-page segments at once
    root = str(tmp_path / "src")
    os.mkdir(root)
    make_sources(root, 6, 16)
    cache = str(tmp_path / "cache")
    script = reader_script(limit_pages, memory_pages=16)
    procs = [subprocess.Popen([sys.executable, "-c", script, root, cache, str(seed), "400"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in range(4)]  # fmt: skip
    disk_hits = 0
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        lines = out.split("\n")
        assert lines[0] == "ready" and lines[1].startswith("ok")
        disk_hits += int(lines[1].split()[1])
    assert disk_hits > 0  # they did share
    size, count, temps = folder_state(cache)
    slack = 3 * max(8, limit_pages // 8) * PAGE_FILE  # documented in DirectoryBackend
    assert size <= limit_pages * PAGE_FILE + slack
    assert temps == []
    # a new process's index is the folder as it leaves it (culled to the limit)
    usage = DirectoryBackend(cache, BS, limit_pages * PAGE_FILE).usage()
    assert (usage.used, usage.pages) == folder_state(cache)[:2] and usage.pages <= count


@contextlib.contextmanager
def small_filesystem(path: str, size: str) -> Iterator[bool]:
    """A real tmpfs of ``size`` at ``path`` where the machine allows mounting one."""
    os.makedirs(path, exist_ok=True)
    # owner-only, as netcache asks of a cache folder (a tmpfs is made 1777 by default)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                              path], capture_output=True).returncode == 0  # fmt: skip
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", path], capture_output=True)


class FlakyDisk(DirectoryBackend):
    """Where no filesystem can be mounted: stores fail with ``errno`` while ``broken``."""

    broken: int | None = None

    def store_pages(self, pages):  # type: ignore[no-untyped-def]
        if self.broken is not None:
            raise OSError(self.broken, os.strerror(self.broken))
        super().store_pages(pages)


@pytest.mark.parametrize("trouble", ["full", "read-only"])
def test_disk_trouble_never_fails_a_read(tmp_path, trouble: str,
                                         caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    import errno

    mem = fsspec.filesystem("memory")
    files = {f"/trouble/{trouble}/{i}": payload(8 * BS, i) for i in range(6)}
    for path, data in files.items():
        mem.pipe_file(path, data)
    where = str(tmp_path / "small")
    with small_filesystem(where, "2m") as real:
        if real:
            cache_dir: object = where
        else:
            cache_dir = FlakyDisk(where, BS, 1 << 30)
        fs = netcache.NetCacheFileSystem(fs=mem, cache_dir=cache_dir, block_size=BS,
                                         disk_limit="64MiB", check_interval=None)  # fmt: skip
        backend = fs.context.backend
        assert backend is not None

        def break_disk() -> None:
            if not real:
                backend.broken = errno.ENOSPC if trouble == "full" else errno.EROFS  # type: ignore[attr-defined]
            elif trouble == "read-only":
                subprocess.run(["mount", "-o", "remount,ro", where], check=True)
            else:  # full of something else: culling the cache's own pages frees nothing
                fd = os.open(os.path.join(where, "ballast"), os.O_WRONLY | os.O_CREAT)
                with contextlib.suppress(OSError):  # written until the disk is full
                    while os.write(fd, b"\1" * 4096):
                        pass
                os.close(fd)

        def mend_disk() -> None:
            if not real:
                backend.broken = None  # type: ignore[attr-defined]
            elif trouble == "read-only":
                subprocess.run(["mount", "-o", "remount,rw", where], check=True)
            else:
                os.unlink(os.path.join(where, "ballast"))

        break_disk()
        with caplog.at_level(logging.WARNING, logger="netcache"):
            for path, data in files.items():
                assert fs.cat_file(path) == data  # reads never fail
            assert fs.flush(30)
        st = fs.stats()
        assert st.stores.err > 0 and st.disk.werr > 0
        why = st.unstored.full if trouble == "full" else st.unstored.error
        assert why == st.stores.err  # every store given up, counted by why
        assert len([r for r in caplog.records if "storing a page" in r.getMessage()]) == 1
        mend_disk()
        stored = fs.stats().stores.pgs
        fs.invalidate("/trouble/" + trouble + "/0")
        assert fs.cat_file("/trouble/" + trouble + "/0") == files["/trouble/" + trouble + "/0"]
        assert fs.flush(30)
        assert fs.stats().stores.pgs == stored + 8  # caching resumed
        netcache.close_all()


def _child_reads(fs: netcache.NetCacheFileSystem, queue) -> None:  # type: ignore[no-untyped-def]
    try:
        fs.config.cache_dir.gate.set()  # type: ignore[union-attr]  # the child's copy
        data = fs.cat_file("/fork/child")
        ok = data == payload(4 * BS, 71) and fs.flush(10)
        backend = fs.context.backend
        queue.put((ok, sorted({k.file_id for k in backend.stored})))  # type: ignore[union-attr]
    except BaseException as exc:
        queue.put((False, repr(exc)))


def test_fork_while_busy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from conftest import GatedBackend

    mem = fsspec.filesystem("memory")
    mem.pipe_file("/fork/parent", payload(4 * BS, 70))
    mem.pipe_file("/fork/child", payload(4 * BS, 71))
    backend = GatedBackend()
    fs = netcache.NetCacheFileSystem(fs=mem, cache_dir=backend, block_size=BS,
                                     writeback_workers=1)  # fmt: skip
    fs.cat_file("/fork/parent")  # stores queued and one running, held at the gate
    assert backend.storing.wait(10)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_reads, args=(fs, queue))
    child.start()  # forked with 3 stores queued and 1 running
    ok, stored_files = queue.get(timeout=60)
    child.join(30)
    backend.gate.set()
    assert ok is True, stored_files
    child_id = fs.context.cookies.file_id("/fork/child")
    assert stored_files == [child_id]  # the parent's pending stores were not redone there
    assert fs.flush(10)
    assert len(backend.stored) == 4  # the parent stored its own pages, once


@pytest.mark.parametrize("trouble", [503, "reset", "stall", "short"])
def test_remote_trouble_raises_caches_nothing_then_recovers(tmp_path, trouble: object) -> None:  # type: ignore[no-untyped-def]
    import aiohttp

    from netcache.testing.httpserver import RangeServer

    data = payload(6 * BS, 77)
    with RangeServer({"t.bin": data}) as srv:
        srv.stall_seconds = 3.0
        url = f"{srv.url}/t.bin"
        fs = netcache.NetCacheFileSystem(
            target_protocol="http", cache_dir=str(tmp_path / "c"), block_size=BS,
            readahead=False,
            target_options={"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=1)}},
        )  # fmt: skip
        assert fs.info(url)["size"] == len(data)  # version known (no first look: no pages)
        assert fs.cat_file(url, 0, 10) == data[:10]  # page 0 cached
        if trouble == "short":
            srv.short_by = 100
        else:
            srv.fail_next(1, trouble)  # type: ignore[arg-type]
        if trouble == "short":  # not what was asked: raised, never retried
            with pytest.raises(netcache.errors.ShortReadError):
                fs.cat_file(url, 2 * BS, 3 * BS)
            st = fs.stats()
            assert st.pages.n == 1 and st.retrievals.err >= 1  # nothing was cached
        else:  # transient: asked again (a reset may be by aiohttp itself, on a new connection)
            assert fs.cat_file(url, 2 * BS, 3 * BS) == data[2 * BS : 3 * BS]
            assert fs.stats().retrievals.retry == 1 or trouble == "reset"
        srv.short_by = 0
        assert fs.cat_file(url, 2 * BS, 3 * BS) == data[2 * BS : 3 * BS]
        assert fs.cat_file(url) == data


def test_offline_mode_serves_what_is_cached(tmp_path, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    from netcache.testing.httpserver import RangeServer

    data = payload(6 * BS, 78)
    cache = str(tmp_path / "c")
    srv = RangeServer({"gone.bin": data, "other.bin": data}).start()
    url, other = f"{srv.url}/gone.bin", f"{srv.url}/other.bin"
    fs = netcache.NetCacheFileSystem(target_protocol="http", cache_dir=cache, block_size=BS,
                                     check_interval=0, offline=True, readahead=False)  # fmt: skip
    strict = netcache.NetCacheFileSystem(target_protocol="http", cache_dir=cache,
                                         block_size=BS, check_interval=0,
                                         readahead=False)  # fmt: skip
    assert fs.cat_file(url, 0, 3 * BS) == data[: 3 * BS]
    with pytest.raises(FileNotFoundError):  # a missing file is missing, offline or not
        fs.cat_file(f"{srv.url}/missing.bin")
    srv.stop()  # the remote goes away
    with caplog.at_level(logging.WARNING, logger="netcache"):
        assert fs.cat_file(url, 0, 3 * BS) == data[: 3 * BS]  # cached: served
        assert fs.cat_file(url, BS, 2 * BS) == data[BS : 2 * BS]
        with pytest.raises(Exception) as info:
            fs.cat_file(url, 4 * BS, 5 * BS)  # not cached: the remote's error
        assert not isinstance(info.value, AssertionError)
        with pytest.raises(Exception):  # noqa: B017 - never seen: nothing to fall back to
            fs.cat_file(other)
    assert fs.stats().retrievals.stale >= 2
    assert len([r for r in caplog.records if "could not be reached" in r.getMessage()]) == 1
    with pytest.raises(Exception):  # noqa: B017 - without offline=True a check must succeed
        strict.cat_file(url, 0, 10)
