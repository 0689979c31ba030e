from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator

import fsspec
import pytest

import netcache
from netcache import process
from netcache.backends.mapping import MappingBackend
from netcache.page import PageKey
from netcache.pressure import MemoryPressureMonitor, MemoryReading
from netcache.testing import RangeServer

KiB = 1 << 10
MiB = 1 << 20
BS = 64 * KiB  # small pages keep the tests fast and multi-page


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def calm_memory() -> MemoryReading:
    """A memory reading that is never under pressure, whatever the machine has free."""
    return MemoryReading(rss=0, available=1 << 50)


@pytest.fixture(autouse=True)
def _fresh_caches(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts with no shared cache contexts, no cached fsspec instances, and
    a process-wide memory monitor of its own that reads no real memory: exact counts
    must not depend on how much memory the machine has free. A test about the monitor
    itself gives its caches one, or is marked ``machine_memory`` to get the real one."""
    if request.node.get_closest_marker("machine_memory") is None:
        process.use_default_monitor(
            MemoryPressureMonitor(limit="1TiB", probe=calm_memory, autostart=False)
        )
    yield
    process.reset(drain_timeout=5)
    fsspec.AbstractFileSystem.clear_instance_cache()
    netcache.NetCacheFileSystem.clear_instance_cache()


@pytest.fixture
def server() -> Iterator[RangeServer]:
    files = {"big.bin": payload(3 * MiB + 12345, 1), "small.bin": payload(1000, 2)}
    with RangeServer(files) as srv:
        yield srv


def http_fs(cache_dir: object, **kwargs: object) -> netcache.NetCacheFileSystem:
    kwargs.setdefault("block_size", BS)
    return netcache.NetCacheFileSystem(target_protocol="http", cache_dir=cache_dir, **kwargs)


class GatedBackend(MappingBackend):
    """A disk tier whose stores by the write-back workers wait for ``gate`` (bounded), so
    tests can hold pages in PENDING and STORING deterministically. A reader storing a
    run itself (the write-back's throttle) is not held: it stands for the disk that the
    workers are too slow, or too starved of CPU, to keep up with."""

    def __init__(self, block_size: int = BS, limit: int = 64 * MiB) -> None:
        super().__init__({}, block_size, limit)
        self.gate = threading.Event()
        self.storing = threading.Event()
        self.stored: list[PageKey] = []

    def store_page(self, key: PageKey, data: bytes | bytearray) -> None:
        if threading.current_thread().name.startswith("netcache-writeback"):
            self.storing.set()
            if not self.gate.wait(timeout=30):
                raise TimeoutError("test gate never opened")
        super().store_page(key, data)
        self.stored.append(key)


def wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until true or ``timeout``; tests assert on the result."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


@pytest.fixture
def cache_dir(tmp_path: object) -> str:
    return os.fspath(tmp_path / "cache")  # type: ignore[operator]
