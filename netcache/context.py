"""CacheContext: the one page cache, write-back queue and set of stats that every
``NetCacheFileSystem`` instance in a process shares for a given cache folder and target.

fsspec makes a separate filesystem instance per thread, so nothing that must exist once
per process can live on the instance; instances look their context up here.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

import psutil

from netcache.backends.base import Backend
from netcache.backends.directory import DirectoryBackend, table_size
from netcache.backends.folder import group_id
from netcache.coherency import CookieJar
from netcache.errors import UntrustedFolderError
from netcache.fetch import PageFetcher
from netcache.identity import describe_error, redact_url
from netcache.pagecache import PageCache
from netcache.policies.eviction import EvictionPolicy, make_eviction_policy
from netcache.policies.release import ReleasePolicy, make_release_policy
from netcache.pressure import MemoryPressureMonitor, default_monitor, provide_default_settings
from netcache.retry import Retries
from netcache.sizes import parse_size
from netcache.stats import Counters, StatsSnapshot
from netcache.warnonce import WarnOnce
from netcache.writeback import WritebackQueue

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

#: Page size. 128 KiB keeps random 64 KiB reads under 3x wire amplification on average
#: while adjacent misses still go out as one request (see benchmarks/).
DEFAULT_BLOCK_SIZE = 128 * KiB
#: Memory budget: 512 MiB, or an eighth of the machine's memory if that is less.
DEFAULT_MEMORY_LIMIT = min(512 * MiB, psutil.virtual_memory().total // 8)
DEFAULT_DISK_LIMIT = 10 * GiB
DEFAULT_WRITEBACK_WORKERS = 2
#: Times a request is made again after a transient error (as the AWS SDKs: 3).
DEFAULT_RETRIES = 3
#: Seconds between checks that a remote file is unchanged.
DEFAULT_CHECK_INTERVAL = 60.0
#: At interpreter exit, pending write-backs get this long to finish; the rest is dropped.
EXIT_DRAIN_SECONDS = 5.0
#: Share of ``memory_limit`` that pages waiting for write-back may hold.
PENDING_SHARE = 4
#: Files that one read of several (``cat``, ``cat_ranges``) works on at once, a thread
#: each: their version checks and fetches overlap, as plain fsspec's requests do.
FILE_WORKERS = 8


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/netcache``, else ``~/.cache/netcache``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "netcache")


@dataclass(frozen=True)
class CacheConfig:
    """Validated settings of one cache; ``cache_dir`` None means memory only."""

    cache_dir: str | Backend | None
    block_size: int
    memory_limit: int
    disk_limit: int
    eviction: str | EvictionPolicy
    release_policy: ReleasePolicy | None
    writeback_workers: int
    check_interval: float | None
    memory_monitor: MemoryPressureMonitor | None
    trusted_gid: int | None = None
    retries: int = DEFAULT_RETRIES

    @classmethod
    def build(
        cls,
        cache_dir: Any,
        block_size: Any,
        memory_limit: Any,
        disk_limit: Any,
        eviction: Any,
        release_policy: Any,
        writeback_workers: Any,
        check_interval: Any,
        memory_monitor: Any = None,
        trusted_group: Any = None,
        retries: Any = DEFAULT_RETRIES,
    ) -> CacheConfig:
        if cache_dir is None:
            cache_dir = default_cache_dir()
        bs = parse_size(block_size, "block_size", minimum=4096)
        resolved: str | Backend | None
        if cache_dir is False:
            resolved = None
        elif isinstance(cache_dir, Backend):
            if cache_dir.block_size != bs:
                raise ValueError(
                    f"block_size={block_size!r} differs from the backend's block_size "
                    f"{cache_dir.block_size}; give both the same page size"
                )
            resolved = cache_dir
        elif isinstance(cache_dir, (str, os.PathLike)) and os.fspath(cache_dir):
            resolved = os.path.abspath(os.path.expanduser(os.fspath(cache_dir)))
            if os.path.exists(resolved) and not os.path.isdir(resolved):
                raise NotADirectoryError(
                    f"cache_dir={os.fspath(cache_dir)!r} exists and is not a directory"
                )
        else:
            raise TypeError(
                f"cache_dir={cache_dir!r} must be a folder path, a Backend, None (default "
                f"folder {default_cache_dir()!r}) or False (memory only)"
            )
        mem = parse_size(memory_limit, "memory_limit")
        if mem < bs:
            raise ValueError(
                f"memory_limit={memory_limit!r} must hold at least one page (block_size={bs})"
            )
        disk = parse_size(disk_limit, "disk_limit")
        two_pages = 2 * (bs + table_size(1))  # a page and its header table, on disk
        if isinstance(resolved, str) and disk < two_pages:
            raise ValueError(
                f"disk_limit={disk_limit!r} must hold at least two pages: {two_pages} bytes "
                f"(block_size={bs}, and {table_size(1)} of page headers a segment file); use "
                "cache_dir=False for no disk tier"
            )
        make_eviction_policy(eviction)
        make_release_policy(release_policy)
        if (
            isinstance(writeback_workers, bool)
            or not isinstance(writeback_workers, int)
            or not 1 <= writeback_workers <= 64
        ):
            raise ValueError(f"writeback_workers={writeback_workers!r} must be an int from 1 to 64")
        if check_interval is not None and (
            isinstance(check_interval, bool)
            or not isinstance(check_interval, (int, float))
            or not check_interval >= 0
        ):
            raise ValueError(
                f"check_interval={check_interval!r} must be None (files never change) or a "
                "number of seconds >= 0 (0: check on every open)"
            )
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
            raise ValueError(f"retries={retries!r} must be an int from 0 to 10")
        if memory_monitor is None:
            monitor: MemoryPressureMonitor | None = default_monitor()
        elif memory_monitor is False:
            monitor = None
        elif isinstance(memory_monitor, MemoryPressureMonitor):
            monitor = memory_monitor
        else:
            raise TypeError(
                f"memory_monitor={memory_monitor!r} must be None (the process-wide "
                "monitor), False (none) or a MemoryPressureMonitor"
            )
        return cls(
            resolved,
            bs,
            mem,
            disk,
            eviction,
            release_policy,
            writeback_workers,
            None if check_interval is None else float(check_interval),
            monitor,
            group_id(trusted_group),
            retries,
        )

    def conflicts(self, other: CacheConfig) -> list[str]:
        """Settings on which two instances sharing one context disagree
        (``check_interval`` is each instance's own)."""
        out = []
        for f in fields(self):
            if f.name == "check_interval":
                continue
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.name in ("eviction", "release_policy"):
                mine, theirs = _policy_name(mine), _policy_name(theirs)
            if mine != theirs:
                out.append(f"{f.name}={theirs!r} (already in use) and {f.name}={mine!r}")
        return out


def _policy_name(policy: Any) -> str:
    """Policies compare by class and settings (an eviction policy's state is not a
    setting, so it compares by class alone)."""
    if isinstance(policy, str) or policy is None:
        return str(policy)
    if isinstance(policy, EvictionPolicy):
        return type(policy).__qualname__
    settings = ", ".join(f"{k}={v!r}" for k, v in sorted(vars(policy).items()))
    return f"{type(policy).__qualname__}({settings})"


class CacheContext:
    """The shared state of one cache: page cache, fetcher, write-back, versions, stats,
    and ``file_workers``, the threads that read several files at once.

    Thread-safe: each part has its own lock (see their docstrings); this class only
    wires them together and takes no lock itself.
    """

    def __init__(self, config: CacheConfig, target_id: str) -> None:
        self.config = config
        self.target_id = target_id
        self.counters = Counters()
        self.warn = WarnOnce()
        #: how transient remote errors are retried, on every path
        self.retries = Retries(config.retries, self._retried)
        self.backend: Backend | None = self._open_backend()
        self.writeback = (
            WritebackQueue(
                self.backend,
                config.writeback_workers,
                max(config.memory_limit // PENDING_SHARE, config.block_size),
                self.counters,
                self.warn,
            )
            if self.backend is not None
            else None
        )
        self.page_cache = PageCache(
            config.memory_limit,
            make_eviction_policy(config.eviction),
            make_release_policy(config.release_policy),
            self.counters,
            stores=self.writeback,
        )
        self.fetcher = PageFetcher(
            self.page_cache,
            config.block_size,
            self.counters,
            self.warn,
            self.retries,
            self.backend,
            self.writeback,
        )
        self.cookies = CookieJar(
            target_id,
            self.backend,
            self.writeback,
            on_change=self.invalidate_file,
            on_stale=self._stale,
            on_damaged=self._damaged_meta,
            retries=self.retries,
        )
        # no thread until the first read of several files; workers wait only for pages
        # claimed by fetches under way, never for another worker's queued job
        self.file_workers = ThreadPoolExecutor(FILE_WORKERS, "netcache-files")

    def watch_memory(self) -> None:
        """Register the page cache with the memory monitor, which may start its thread:
        done by the registry once this context is the one in use, outside its lock."""
        if self.config.memory_monitor is not None:
            self.config.memory_monitor.register(self.page_cache)

    def _open_backend(self) -> Backend | None:
        if self.config.cache_dir is None or isinstance(self.config.cache_dir, Backend):
            return self.config.cache_dir
        try:
            return DirectoryBackend(
                self.config.cache_dir,
                self.config.block_size,
                self.config.disk_limit,
                self.config.trusted_gid,
            )
        except (UntrustedFolderError, NotADirectoryError):
            raise  # the user's folder is wrong: say so, never run on quietly
        except OSError as exc:
            self._disk_error("open", exc)
            return None

    def _disk_error(self, kind: str, exc: OSError) -> None:
        self.counters.add("disk.werr")
        self.warn(
            f"disk-{kind}",
            "netcache: the disk tier at %s failed (%r); continuing from memory and the remote",
            self.config.cache_dir,
            exc,
        )

    def _retried(self, exc: BaseException) -> None:
        self.counters.add("retrievals.retry")

    def _damaged_meta(self, exc: Exception) -> None:
        self.counters.add("disk.rerr")
        self.warn("disk-meta", "netcache: a file's metadata in the disk tier could not be "
                  "used (%s); asking the remote", exc)  # fmt: skip

    def _stale(self, path: str, exc: Exception) -> None:
        self.counters.add("retrievals.stale")
        self.warn(
            "stale",
            "netcache: the remote could not be reached to check %s (%s); serving the version "
            "cached last",
            redact_url(path),
            describe_error(exc),
        )

    def invalidate_file(self, file_id: str | None, keep_version: str | None = None) -> int:
        """Drop pages of one file (or of every file), in memory, queued and on disk."""
        dropped = self.page_cache.invalidate(file_id, keep_version)
        if self.writeback is not None:
            self.writeback.cancel_file(file_id, keep_version)
        if self.backend is not None:
            try:
                if file_id is None:
                    self.backend.clear()
                else:
                    dropped += self.backend.invalidate(file_id, keep_version)
            except OSError as exc:
                self._disk_error("invalidate", exc)
        if file_id is None:
            self.cookies.forget()
        if keep_version is None:  # its metadata went too: written again when next learnt
            self.cookies.unlearn(file_id)
        self.counters.add_many({"invalidations.n": 1, "invalidations.pages": dropped})
        return dropped

    def stats(self) -> StatsSnapshot:
        gauges = self.page_cache.gauges()
        gauges["stores.pend"] = self.writeback.pending_bytes if self.writeback else 0
        if self.config.memory_monitor is not None:
            gauges.update(self.config.memory_monitor.gauges())
        if self.backend is not None:
            usage = self.backend.usage()
            gauges.update(
                {
                    "disk.used": usage.used,
                    "disk.limit": usage.limit,
                    "disk.pages": usage.pages,
                    "disk.culls": usage.culls,
                    "disk.cbytes": usage.cbytes,
                }
            )
        return self.counters.snapshot(gauges)

    def flush(self, timeout: float | None) -> bool:
        return self.writeback.flush(timeout) if self.writeback is not None else True

    def close(self, drain_timeout: float) -> bool:
        return self.writeback.close(drain_timeout) if self.writeback is not None else True


class _Registry:
    """Process-wide map from (cache folder, target) to its context.

    One lock guards the map, held for lookups and insertions only: contexts are built,
    and registered with the memory monitor, outside it. A forked child starts with an
    empty map and a new lock: contexts made in the parent (their locks, threads and
    queued stores) are the parent's, and instances in the child make fresh ones.
    ``forks`` counts the forks this process descends from, so an instance sees that it
    crossed one with an integer comparison on every read (``os.getpid`` is a system
    call).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.contexts: dict[tuple[object, str], CacheContext] = {}
        self.forks = 0

    def acquire(self, config: CacheConfig, target_id: str) -> CacheContext:
        """The context of ``config``'s folder and ``target_id``, made if there is none.
        A new one is built outside the lock (it reads the disk tier's folder), then put
        in unless another thread put one in first (the one built here is then dropped:
        nothing of it has started), then registered with the memory monitor."""
        key = (config.cache_dir, target_id)
        with self.lock:
            context = self.contexts.get(key)
        if context is None:
            built = CacheContext(config, target_id)
            with self.lock:
                context = self.contexts.setdefault(key, built)
            if context is built:
                built.watch_memory()
                return built
        problems = config.conflicts(context.config)
        if problems:
            raise ValueError(
                "this cache folder and target are already in use in this process with other "
                "settings: " + "; ".join(problems)
            )
        return context

    def reset_after_fork(self) -> None:
        self.lock = threading.Lock()
        self.contexts = {}
        self.forks += 1

    def close_all(self, drain_timeout: float) -> bool:
        """Drain and close every context (sharing ``drain_timeout``), and forget them;
        instances made afterwards start new ones. Returns whether all stores finished."""
        with self.lock:
            contexts, self.contexts = list(self.contexts.values()), {}
        deadline = time.monotonic() + drain_timeout
        drained = True
        for context in contexts:
            drained &= context.close(max(0.0, deadline - time.monotonic()))
        return drained


registry = _Registry()


def _environment_settings() -> dict[str, Any]:
    """The default memory monitor's settings: inside a Dask worker, its memory limit and
    thresholds below its spill threshold; elsewhere netcache's defaults."""
    if "distributed" not in sys.modules:
        return {}
    from netcache.daskenv import current_worker, monitor_settings

    worker = current_worker()
    return monitor_settings(worker) if worker is not None else {}


provide_default_settings(_environment_settings)


def close_all(drain_timeout: float = EXIT_DRAIN_SECONDS) -> bool:
    """Store what is pending (for at most ``drain_timeout`` seconds), then close every
    cache of this process. Runs by itself at interpreter exit."""
    return registry.close_all(drain_timeout)


atexit.register(close_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=registry.reset_after_fork)
