"""The async path: AsyncNetCacheFileSystem answers warm reads on the loop and never blocks
the loop on the disk tier or the remote."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from conftest import BS, MiB, http_fs
from fsspec.implementations.memory import MemoryFileSystem

import netcache
from netcache.backends.mapping import MappingBackend
from netcache.page import PageKey
from netcache.testing.httpserver import RangeServer


class Gate:
    """Holds a blocking call until the event loop opens it: if the loop were blocked by
    that very call, nobody could open it, and the call reports it after ``timeout``."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.timeout = timeout
        self.held_open_by_loop: list[bool] = []

    def wait(self) -> None:
        self.entered.set()
        self.held_open_by_loop.append(self.opened.wait(self.timeout))

    async def open_from_the_loop(self) -> None:
        while not self.entered.is_set():  # polls on the loop: runs only if the loop runs
            await asyncio.sleep(0.001)
        self.opened.set()


class GatedDisk(MappingBackend):
    """A disk tier whose page reads wait for a gate (a busy or remote disk)."""

    def __init__(self) -> None:
        super().__init__({}, BS, 64 * MiB)
        self.gate: Gate | None = None

    def load_page(self, key: PageKey) -> bytes | None:
        if self.gate is not None:
            self.gate.wait()
        return super().load_page(key)


class GatedRemote(MemoryFileSystem):
    """A memory target whose data requests wait for a gate (a slow network)."""

    gate: Gate | None = None

    def cat_file(self, path, start=None, end=None, **kwargs):  # type: ignore[no-untyped-def]
        if self.gate is not None:
            self.gate.wait()
        return super().cat_file(path, start, end, **kwargs)


class NoThreads(concurrent.futures.ThreadPoolExecutor):
    """An executor that refuses work: a coroutine that needs a thread fails."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a thread was asked for")


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


def test_warm_reads_are_answered_on_the_loop(server: RangeServer, cache_dir: str) -> None:
    afs = netcache.AsyncNetCacheFileSystem(http_fs(cache_dir))
    url = f"{server.url}/big.bin"
    data = server.data("/big.bin")

    async def main() -> None:
        assert await afs._cat_file(url, 1000, 3 * BS) == data[1000 : 3 * BS]  # cold: thread
        asyncio.get_running_loop().set_default_executor(NoThreads())
        assert await afs._cat_file(url, 2000, 2 * BS + 7) == data[2000 : 2 * BS + 7]
        got = await afs._cat_ranges([url, url], [BS, 5], [BS + 10, 50])
        assert got == [data[BS : BS + 10], data[5:50]]
        with pytest.raises(AssertionError, match="thread"):
            await afs._cat_file(url, 2 * MiB, 2 * MiB + 10)  # not resident: needs a thread

    run(main)
    assert afs.sync_fs.stats().retrievals.mem >= 3


def test_disk_tier_reads_do_not_block_the_loop(server: RangeServer) -> None:
    disk = GatedDisk()
    url = f"{server.url}/big.bin"
    data = server.data("/big.bin")
    first = http_fs(disk, readahead=False)
    assert first.cat_file(url, 0, 2 * BS) == data[: 2 * BS]
    assert first.flush(timeout=10)
    netcache.close_all(drain_timeout=5)
    netcache.NetCacheFileSystem.clear_instance_cache()
    afs = netcache.AsyncNetCacheFileSystem(http_fs(disk, readahead=False))
    gets = server.gets
    disk.gate = gate = Gate()

    async def main() -> bytes:
        got, _ = await asyncio.gather(afs._cat_file(url, 10, BS + 10), gate.open_from_the_loop())
        return got

    assert run(main) == data[10 : BS + 10]
    assert gate.held_open_by_loop and all(gate.held_open_by_loop)  # the loop ran meanwhile
    assert afs.sync_fs.stats().retrievals.disk == 2 and server.gets == gets


def test_remote_fetches_do_not_block_the_loop() -> None:
    target = GatedRemote(skip_instance_cache=True)
    target.pipe_file("/slow/x.bin", b"abcdefghij" * 1000)
    afs = netcache.AsyncNetCacheFileSystem(
        netcache.NetCacheFileSystem(
            fs=target, cache_dir=False, block_size=BS, readahead=False, check_interval=None
        )
    )
    target.gate = gate = Gate()

    async def main() -> list[Any]:
        return await asyncio.gather(
            afs._cat_file("/slow/x.bin", 0, 4),
            afs._cat_ranges(["/slow/x.bin"], [3], [9]),
            gate.open_from_the_loop(),
        )

    whole, ranges, _ = run(main)
    assert whole == b"abcd" and ranges == [b"defghi"]
    assert gate.held_open_by_loop and all(gate.held_open_by_loop)


def test_writes_and_errors_on_the_async_path(server: RangeServer, cache_dir: str) -> None:
    target = netcache.NetCacheFileSystem(target_protocol="memory", cache_dir=cache_dir,
                                         block_size=BS, check_interval=None)  # fmt: skip
    afs = netcache.AsyncNetCacheFileSystem(target)
    target.fs.pipe_file("/a/x.bin", b"old" * 1000)

    async def main() -> None:
        assert await afs._cat_file("/a/x.bin", 0, 6) == b"oldold"
        await afs._pipe_file("/a/x.bin", b"new" * 1000)  # through netcache: invalidates
        assert await afs._cat_file("/a/x.bin", 0, 6) == b"newnew"
        assert await afs._exists("/a/x.bin") and await afs._isfile("/a/x.bin")
        assert not await afs._exists("/a/missing.bin")
        assert await afs._size("/a/x.bin") == 3000
        got = await afs._cat_ranges(["/a/x.bin", "/a/missing.bin"], [0, 0], [3, 3])
        assert got[0] == b"new" and isinstance(got[1], FileNotFoundError)
        with pytest.raises(FileNotFoundError):
            await afs._cat_file("/a/missing.bin")
        assert [p.rsplit("/", 1)[-1] for p in await afs._find("/a")] == ["x.bin"]
        await afs._rm_file("/a/x.bin")
        assert not await afs._exists("/a/x.bin")

    run(main)


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="fs must be a NetCacheFileSystem"):
        netcache.AsyncNetCacheFileSystem(fs=object())  # type: ignore[arg-type]
    fs = netcache.NetCacheFileSystem(target_protocol="memory", cache_dir=False)
    with pytest.raises(TypeError, match="not both"):
        netcache.AsyncNetCacheFileSystem(fs, block_size=BS)
