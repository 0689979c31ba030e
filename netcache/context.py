"""CacheContext: the one page cache, write-back queue and set of stats that every
``NetCacheFileSystem`` instance in a process shares for a given cache folder and target.

fsspec makes a separate filesystem instance per thread, so nothing that must exist once
per process can live on the instance; instances look their context up in
:mod:`netcache.process`.
"""

from __future__ import annotations

import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

from netcache.backends.base import Backend
from netcache.backends.directory import DirectoryBackend
from netcache.coherency import CookieJar
from netcache.config import CacheConfig
from netcache.errors import UntrustedFolderError
from netcache.fetch import PageFetcher
from netcache.identity import describe_error, redact_url
from netcache.pagecache import PageCache
from netcache.policies.eviction import make_eviction_policy
from netcache.policies.release import make_release_policy
from netcache.readahead import ReadaheadScheduler
from netcache.retry import Retries
from netcache.stats import Counters, StatsSnapshot
from netcache.warnonce import WarnOnce
from netcache.writeback import WritebackQueue

#: Share of ``memory_limit`` that pages waiting for write-back may hold.
PENDING_SHARE = 4
#: Files that one read of several (``cat``, ``cat_ranges``) works on at once, a thread
#: each: their version checks and fetches overlap, as plain fsspec's requests do.
FILE_WORKERS = 8


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
        self.readahead = ReadaheadScheduler(self.page_cache, config.block_size, self.backend,
                                            self.fetcher.fetch_claimed, self.warn)  # fmt: skip
        self.fetcher.take_queued = self.readahead.take_queued
        self.fetcher.target_id = target_id
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
        # files reading through this cache, held weakly: a setting that cannot change
        # live (the page size) waits until none is open
        self._files: weakref.WeakSet[object] = weakref.WeakSet()
        self._files_lock = threading.Lock()
        #: False once closed or replaced: instances on it then look their cache up again
        self.is_current = True

    def file_opened(self, f: object) -> None:
        """A file reading through this cache was opened (held weakly)."""
        with self._files_lock:
            self._files.add(f)

    def open_files(self) -> int:
        """Files reading through this cache that are open now."""
        with self._files_lock:
            return sum(1 for f in self._files if not getattr(f, "closed", True))

    def apply(self, config: CacheConfig) -> None:
        """Take ``config``'s live settings (``LIVE_SETTINGS``) at once: a smaller memory
        or disk limit evicts or culls down to it now. Called by the registry, outside its
        lock; the parts lock what they guard."""
        old, self.config = self.config, config
        if config.memory_limit != old.memory_limit:
            self.page_cache.set_limit(config.memory_limit)
            if self.writeback is not None:
                self.writeback.max_pending_bytes = max(
                    config.memory_limit // PENDING_SHARE, config.block_size
                )
        if config.release_policy is not old.release_policy:
            self.page_cache.release_policy = make_release_policy(config.release_policy)
        if config.memory_monitor is not old.memory_monitor:
            if old.memory_monitor is not None:
                old.memory_monitor.unregister(self.page_cache)
            self.watch_memory()
        # a Backend given as cache_dir keeps its own limit (disk_limit is not its)
        if (config.disk_limit != old.disk_limit and self.backend is not None
                and isinstance(config.cache_dir, str)):  # fmt: skip
            self.backend.set_limit(config.disk_limit)

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

    def look_fell_back(self, path: str, exc: BaseException | None) -> None:
        """A first look could not be used: the version is asked with ``info()``."""
        self.counters.add("retrievals.nolook")
        why = "an answer that is not plain" if exc is None else describe_error(exc)
        self.warn("nolook", "netcache: a first look at %s could not be used (%s); asking "
                  "info() instead", redact_url(path), why)  # fmt: skip

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
                    "disk.cerr": usage.cerr,
                }
            )
        return self.counters.snapshot(gauges)

    def flush(self, timeout: float | None) -> bool:
        return self.writeback.flush(timeout) if self.writeback is not None else True

    def close(self, drain_timeout: float) -> bool:
        """Drain pending stores (for at most ``drain_timeout`` seconds) and stop; the
        registry no longer hands this context out."""
        self.is_current = False
        self.file_workers.shutdown(wait=False)
        return self.writeback.close(drain_timeout) if self.writeback is not None else True
