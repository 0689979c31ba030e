"""netcache: a block page cache for any fsspec filesystem.

``import netcache`` loads nothing else: each name below loads its module on first use
(PEP 562), so importing the package starts no thread, reads no memory figure and
registers no exit or fork hook until a cache is made.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_WHERE = {
    "AsyncNetCacheFileSystem": "netcache.aio",
    "Backend": "netcache.backends.base",
    "DirectoryBackend": "netcache.backends.directory",
    "DiskUsage": "netcache.backends.base",
    "MappingBackend": "netcache.backends.mapping",
    "close_all": "netcache.process",
    "default_monitor": "netcache.process",
    "CorruptPageError": "netcache.errors",
    "FileChangedError": "netcache.errors",
    "ShortReadError": "netcache.errors",
    "NetCacheFile": "netcache.files",
    "NetCacheFileSystem": "netcache.filesystem",
    "LRU": "netcache.policies",
    "CancelPending": "netcache.policies",
    "EvictionPolicy": "netcache.policies",
    "Outcome": "netcache.policies",
    "PressureGraded": "netcache.policies",
    "PressureLevel": "netcache.policies",
    "ReleasePolicy": "netcache.policies",
    "WaitForStore": "netcache.policies",
    "MemoryPressureMonitor": "netcache.pressure",
    "MemoryReading": "netcache.pressure",
    "StatsSnapshot": "netcache.stats",
}

__all__ = [
    "LRU",
    "AsyncNetCacheFileSystem",
    "Backend",
    "CancelPending",
    "CorruptPageError",
    "DirectoryBackend",
    "DiskUsage",
    "EvictionPolicy",
    "FileChangedError",
    "MappingBackend",
    "MemoryPressureMonitor",
    "MemoryReading",
    "NetCacheFile",
    "NetCacheFileSystem",
    "Outcome",
    "PressureGraded",
    "PressureLevel",
    "ReleasePolicy",
    "ShortReadError",
    "StatsSnapshot",
    "WaitForStore",
    "close_all",
    "default_monitor",
]


def __getattr__(name: str) -> Any:
    """Load the module that defines ``name`` (PEP 562: only names not found otherwise)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'netcache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


if TYPE_CHECKING:
    from netcache.aio import AsyncNetCacheFileSystem
    from netcache.backends.base import Backend, DiskUsage
    from netcache.backends.directory import DirectoryBackend
    from netcache.backends.mapping import MappingBackend
    from netcache.errors import CorruptPageError, FileChangedError, ShortReadError
    from netcache.files import NetCacheFile
    from netcache.filesystem import NetCacheFileSystem
    from netcache.policies import (
        LRU,
        CancelPending,
        EvictionPolicy,
        Outcome,
        PressureGraded,
        PressureLevel,
        ReleasePolicy,
        WaitForStore,
    )
    from netcache.pressure import MemoryPressureMonitor, MemoryReading
    from netcache.process import close_all, default_monitor
    from netcache.stats import StatsSnapshot
