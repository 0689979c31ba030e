"""Configuration: the defaults, the default folder, ``CacheConfig`` (the validated
settings of one cache) and the target filesystem an instance reads through.

Nothing here is process state: a config is a frozen value, and building one does no
I/O but a look at whether ``cache_dir`` is a folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

import fsspec
import psutil
from fsspec import AbstractFileSystem

from netcache.backends.base import Backend
from netcache.backends.folder import group_id
from netcache.backends.segments import table_size
from netcache.policies.eviction import EvictionPolicy, make_eviction_policy
from netcache.policies.release import ReleasePolicy, make_release_policy
from netcache.pressure import MemoryPressureMonitor
from netcache.sizes import parse_size

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

#: Page size. 128 KiB keeps random 64 KiB reads under 3x wire amplification on average
#: while adjacent misses still go out as one request (benchmarks/results/).
DEFAULT_BLOCK_SIZE = 128 * KiB
DEFAULT_DISK_LIMIT = 10 * GiB
DEFAULT_WRITEBACK_WORKERS = 2
#: Times a request is made again after a transient error (as the AWS SDKs: 3).
DEFAULT_RETRIES = 3
#: Seconds between checks that a remote file is unchanged.
DEFAULT_CHECK_INTERVAL = 60.0
#: Largest read-ahead window of a sequentially read file.
DEFAULT_READAHEAD = 32 * MiB


#: Files read at random are fetched whole below this size (and half the memory budget):
#: docs/measurements.md says why.
DEFAULT_RANDOM_WHOLE_BELOW = 256 * MiB


def parse_readahead(readahead: Any, block_size: int) -> tuple[int, bool]:
    """``readahead`` in bytes (0: off), and whether the window grows with the pipe
    (None or True: from ``DEFAULT_READAHEAD`` up)."""
    grows = readahead is None or readahead is True
    if grows:
        readahead = DEFAULT_READAHEAD
    nbytes = 0 if readahead is False else parse_size(readahead, "readahead")
    if 0 < nbytes < block_size:
        raise ValueError(f"readahead={readahead!r} must be False, 0, or at least one page "
                         f"(block_size={block_size})")  # fmt: skip
    return nbytes, grows


def parse_random_whole_below(value: Any, memory_limit: int, readahead: int) -> int:
    """``random_whole_below`` in bytes (0: never), at most half the memory budget (a file
    fetched whole must fit in it with room for others). None is the default, and 0 where
    ``readahead`` is off: then nothing is fetched that is not read."""
    if value is None:
        return min(DEFAULT_RANDOM_WHOLE_BELOW, memory_limit // 2) if readahead else 0
    if value is True:
        raise TypeError("random_whole_below=True: give a size, None (the default), "
                        "or False/0 (never)")  # fmt: skip
    return 0 if value is False else min(parse_size(value, "random_whole_below"), memory_limit // 2)


def default_memory_limit() -> int:
    """Memory budget: 512 MiB, or an eighth of the machine's memory if that is less.
    Read when a cache is built (not at import: importing netcache reads nothing)."""
    return min(512 * MiB, psutil.virtual_memory().total // 8)


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/netcache``, else ``~/.cache/netcache``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "netcache")


@dataclass(frozen=True, kw_only=True)
class CacheConfig:
    """Validated settings of one cache (keyword-only); ``cache_dir`` None means memory
    only. Make one with :meth:`build`, which checks every argument. Immutable, so
    thread-safe."""

    cache_dir: str | Backend | None
    block_size: int
    memory_limit: int
    disk_limit: int
    eviction: str | EvictionPolicy = "lru"
    release_policy: ReleasePolicy | None = None
    writeback_workers: int = DEFAULT_WRITEBACK_WORKERS
    check_interval: float | None = DEFAULT_CHECK_INTERVAL
    memory_monitor: MemoryPressureMonitor | None = None
    trusted_gid: int | None = None
    retries: int = DEFAULT_RETRIES

    @classmethod
    def build(
        cls,
        *,
        cache_dir: Any = None,
        block_size: Any = DEFAULT_BLOCK_SIZE,
        memory_limit: Any = None,
        disk_limit: Any = DEFAULT_DISK_LIMIT,
        eviction: Any = "lru",
        release_policy: Any = None,
        writeback_workers: Any = DEFAULT_WRITEBACK_WORKERS,
        check_interval: Any = DEFAULT_CHECK_INTERVAL,
        memory_monitor: Any = None,
        default_monitor: Any = None,
        trusted_group: Any = None,
        retries: Any = DEFAULT_RETRIES,
    ) -> CacheConfig:
        """Check every argument (raising with its name and the values allowed) and
        resolve the defaults. ``memory_monitor`` None takes ``default_monitor()``, the
        process-wide monitor the caller provides (it is made on first use)."""
        bs = parse_size(block_size, "block_size", minimum=4096)
        resolved = _cache_dir(cache_dir, block_size, bs)
        if memory_limit is None:
            memory_limit = default_memory_limit()
        mem = parse_size(memory_limit, "memory_limit")
        if mem < bs:
            raise ValueError(
                f"memory_limit={memory_limit!r} must hold at least one page (block_size={bs})"
            )
        disk = _disk_limit(disk_limit, bs, isinstance(resolved, str))
        make_eviction_policy(eviction)
        make_release_policy(release_policy)
        _check_int("writeback_workers", writeback_workers, 1, 64)
        _check_int("retries", retries, 0, 10)
        return cls(
            cache_dir=resolved,
            block_size=bs,
            memory_limit=mem,
            disk_limit=disk,
            eviction=eviction,
            release_policy=release_policy,
            writeback_workers=writeback_workers,
            check_interval=_check_interval(check_interval),
            memory_monitor=_monitor(memory_monitor, default_monitor),
            trusted_gid=group_id(trusted_group),
            retries=retries,
        )

    def differences(self, other: CacheConfig) -> dict[str, str]:
        """Settings on which ``self`` and ``other`` (the one in use) differ, by name, each
        said as the user gives it: ``"block_size=65536 (in use) and block_size=131072"``
        (``check_interval`` is each instance's own)."""
        out = {}
        for f in fields(self):
            if f.name == "check_interval":
                continue
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.name in ("eviction", "release_policy"):
                mine, theirs = _policy_name(mine), _policy_name(theirs)
            if mine != theirs:
                name = "trusted_group" if f.name == "trusted_gid" else f.name
                out[f.name] = (f"{name}={_as_given(f.name, theirs)} (already in use) and "
                               f"{name}={_as_given(f.name, mine)}")  # fmt: skip
        return out

    def registry_key(self, target_id: str) -> tuple[object, ...]:
        """Which shared cache this config uses: one per folder (or backend) and target;
        a memory-only cache is shared only by instances with all the same settings, so
        it never conflicts with another."""
        if self.cache_dir is not None:
            return (self.cache_dir, target_id)
        settings = [
            _policy_name(getattr(self, f.name))
            if f.name in ("eviction", "release_policy")
            else getattr(self, f.name)
            for f in fields(self)
            if f.name != "check_interval"
        ]
        return (None, target_id, *settings)


#: Settings a cache in use takes from a later instance at once (the others need a new
#: cache: see ``netcache.process.Registry.acquire``).
LIVE_SETTINGS = frozenset({"memory_limit", "disk_limit", "release_policy", "memory_monitor"})


def _as_given(name: str, value: Any) -> str:
    """A resolved setting as the user would have written it."""
    if name == "memory_monitor":
        if value is None:
            return "False"
        if getattr(value, "pickled_as", None) is not None:
            return "None (the process-wide monitor)"
        return f"MemoryPressureMonitor(limit={value.limit}, ...)"
    if name == "cache_dir" and value is None:
        return "False"
    return repr(value) if not isinstance(value, str) or name == "cache_dir" else value


def _cache_dir(cache_dir: Any, block_size: Any, bs: int) -> str | Backend | None:
    if cache_dir is None:
        cache_dir = default_cache_dir()
    if cache_dir is False:
        return None
    if isinstance(cache_dir, Backend):
        if cache_dir.block_size != bs:
            raise ValueError(
                f"block_size={block_size!r} differs from the backend's block_size "
                f"{cache_dir.block_size}; give both the same page size"
            )
        return cache_dir
    if isinstance(cache_dir, (str, os.PathLike)) and os.fspath(cache_dir):
        resolved = os.path.abspath(os.path.expanduser(os.fspath(cache_dir)))
        if os.path.exists(resolved) and not os.path.isdir(resolved):
            raise NotADirectoryError(
                f"cache_dir={os.fspath(cache_dir)!r} exists and is not a directory"
            )
        return resolved
    raise TypeError(
        f"cache_dir={cache_dir!r} must be a folder path, a Backend, None (default "
        f"folder {default_cache_dir()!r}) or False (memory only)"
    )


def _disk_limit(disk_limit: Any, bs: int, on_disk: bool) -> int:
    disk = parse_size(disk_limit, "disk_limit")
    two_pages = 2 * (bs + table_size(1))  # a page and its header table, on disk
    if on_disk and disk < two_pages:
        raise ValueError(
            f"disk_limit={disk_limit!r} must hold at least two pages: {two_pages} bytes "
            f"(block_size={bs}, and {table_size(1)} of page headers a segment file); use "
            "cache_dir=False for no disk tier"
        )
    return disk


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name}={value!r} must be an int from {lo} to {hi}")


def _check_interval(check_interval: Any) -> float | None:
    if check_interval is None:
        return None
    if (
        isinstance(check_interval, bool)
        or not isinstance(check_interval, (int, float))
        or not check_interval >= 0
    ):
        raise ValueError(
            f"check_interval={check_interval!r} must be None (files never change) or a "
            "number of seconds >= 0 (0: check on every open)"
        )
    return float(check_interval)


def _monitor(memory_monitor: Any, default_monitor: Any) -> MemoryPressureMonitor | None:
    if memory_monitor is None:
        return default_monitor() if default_monitor is not None else None
    if memory_monitor is False:
        return None
    if isinstance(memory_monitor, MemoryPressureMonitor):
        return memory_monitor
    raise TypeError(
        f"memory_monitor={memory_monitor!r} must be None (the process-wide "
        "monitor), False (none) or a MemoryPressureMonitor"
    )


def _policy_name(policy: Any) -> str:
    """Policies compare by class and settings (an eviction policy's state is not a
    setting, so it compares by class alone)."""
    if isinstance(policy, str) or policy is None:
        return str(policy)
    if isinstance(policy, EvictionPolicy):
        return type(policy).__qualname__
    settings = ", ".join(f"{k}={v!r}" for k, v in sorted(vars(policy).items()))
    return f"{type(policy).__qualname__}({settings})"


def make_target(fs: Any, protocol: Any, options: Any) -> AbstractFileSystem:
    """The filesystem read through: ``fs`` itself, or ``protocol`` made with
    ``options`` (exactly one of ``fs`` and ``protocol``)."""
    if (fs is None) == (protocol is None):
        raise ValueError(
            "give exactly one of fs= (a filesystem) and target_protocol= "
            "(a protocol name such as 'http' or 's3')"
        )
    if fs is not None:
        if not isinstance(fs, AbstractFileSystem):
            raise TypeError(f"fs={fs!r} must be an fsspec filesystem instance")
        if options:
            raise ValueError("target_options= goes with target_protocol=, not with fs=")
        return fs
    if not isinstance(protocol, str):
        raise TypeError(f"target_protocol={protocol!r} must be a protocol name string")
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"target_options={options!r} must be a dict")
    try:
        return fsspec.filesystem(protocol, **(options or {}))
    except ValueError as exc:
        raise ValueError(f"target_protocol={protocol!r}: {exc}") from exc


def made_again(target: AbstractFileSystem) -> AbstractFileSystem:
    """``target`` made anew from its own arguments (fsspec's instance cache is emptied
    in a forked child, so this is a new instance)."""
    return type(target)(*target.storage_args, **target.storage_options)
