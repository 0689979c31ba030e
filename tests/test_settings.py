"""Settings follow the user: a notebook cell re-run with other settings works. Live
settings apply to the shared cache at once; the page size and the like take over once
no file reads through the old cache; memory-only caches never conflict."""

from __future__ import annotations

from typing import Any

import fsspec
import pytest

import netcache

MiB = 1 << 20
BS = 64 << 10


def make(cache_dir: Any, **kwargs: Any) -> netcache.NetCacheFileSystem:
    kwargs.setdefault("block_size", BS)
    return netcache.NetCacheFileSystem(target_protocol="memory", cache_dir=cache_dir,
                                       **kwargs)  # fmt: skip


@pytest.fixture
def memory() -> Any:
    m = fsspec.filesystem("memory")
    m.pipe_file("/nb/data.bin", bytes(range(256)) * (8 * MiB // 256))
    yield m
    m.rm("/nb", recursive=True)


def test_the_notebook_sequence(memory: Any, cache_dir: str) -> None:
    """1GB, then 1GiB, then cache_dir=False twice with other settings: each cell works."""
    first = make(cache_dir, memory_limit="1GB")
    assert first.cat_file("/nb/data.bin", 0, 10) == memory.cat_file("/nb/data.bin", 0, 10)
    second = make(cache_dir, memory_limit="1GiB")  # re-run with another setting
    assert second.context is first.context  # the same cache, its limit changed live
    assert first.context.page_cache.limit == 1 << 30
    assert second.cat_file("/nb/data.bin", 10, 20) == memory.cat_file("/nb/data.bin", 10, 20)
    quick = make(False, memory_limit="64MiB")
    other = make(False, memory_limit="32MiB", eviction="2q")  # no conflict: its own
    assert quick.context is not other.context
    assert other.cat_file("/nb/data.bin", 0, 5) == quick.cat_file("/nb/data.bin", 0, 5)
    assert make(False, memory_limit="64MiB").context is quick.context  # same settings: shared


def test_shrinking_limits_on_disk_evicts_and_culls_at_once(memory: Any, cache_dir: str) -> None:
    fs = make(cache_dir, memory_limit="8MiB", disk_limit="16MiB", memory_monitor=False)
    fs.cat_file("/nb/data.bin", 0, 6 * MiB)
    assert fs.flush(30)
    assert fs.stats().pages.bytes >= 6 * MiB and fs.disk_usage().used >= 6 * MiB  # type: ignore[union-attr]
    smaller = make(cache_dir, memory_limit="1MiB", disk_limit="2MiB", memory_monitor=False)
    assert smaller.context is fs.context
    assert fs.stats().pages.bytes <= MiB  # evicted now, not at the next read
    usage = fs.disk_usage()
    assert usage is not None and usage.used <= 2 * MiB and usage.culls >= 1
    assert fs.cat_file("/nb/data.bin", 0, 100) == memory.cat_file("/nb/data.bin", 0, 100)


def test_a_new_monitor_and_policy_apply_live(memory: Any, cache_dir: str) -> None:
    mine = netcache.MemoryPressureMonitor(autostart=False)
    fs = make(cache_dir, memory_monitor=False)
    later = make(cache_dir, memory_monitor=mine, release_policy=netcache.WaitForStore(timeout=1))
    assert later.context is fs.context and fs.context.config.memory_monitor is mine
    assert fs.context.page_cache in mine._caches
    assert isinstance(fs.context.page_cache.release_policy, netcache.WaitForStore)


def test_the_page_size_waits_for_open_files(memory: Any, cache_dir: str) -> None:
    fs = make(cache_dir)
    f = fs.open("/nb/data.bin")
    f.read(100)
    with pytest.raises(ValueError) as raised:
        make(cache_dir, block_size="128KiB")
    said = str(raised.value)
    assert "block_size=65536 (already in use) and block_size=131072" in said
    assert "1 open file" in said and "netcache.close_all()" in said
    assert f.read(100) == memory.cat_file("/nb/data.bin", 100, 200)  # still reading
    f.close()
    old = fs.context
    bigger = make(cache_dir, block_size="128KiB")
    assert bigger.context is not old and bigger.config.block_size == 128 << 10
    assert not old.is_current
    # the first instance goes on, on a cache of its own settings again
    assert fs.cat_file("/nb/data.bin", 0, 10) == memory.cat_file("/nb/data.bin", 0, 10)
    assert fs.context.config.block_size == BS


def test_a_backend_of_your_own_keeps_its_limit(memory: Any) -> None:
    """disk_limit is not a Backend instance's limit: changing it changes nothing there."""
    from netcache.backends import MappingBackend

    backend = MappingBackend({}, BS, "4MiB")
    fs = make(backend, disk_limit="1GiB")
    again = make(backend, disk_limit="2GiB")
    assert again.context is fs.context and backend.limit == 4 << 20
