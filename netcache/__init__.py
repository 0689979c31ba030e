"""netcache: a block page cache for any fsspec filesystem."""

from netcache.aio import AsyncNetCacheFileSystem
from netcache.backends import Backend, DirectoryBackend, DiskUsage, MappingBackend
from netcache.context import close_all
from netcache.errors import CorruptPageError, FileChangedError, ShortReadError
from netcache.filesystem import NetCacheFile, NetCacheFileSystem
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
from netcache.pressure import MemoryPressureMonitor, MemoryReading, default_monitor
from netcache.stats import StatsSnapshot

__version__ = "0.1.0"

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
