"""Process state, in one home: the registry of shared caches, the process-wide memory
monitor, and the resets of the buffer pool and the map of pickled monitors. One fork
hook makes a forked child start afresh; :func:`reset` does the same in a running
process (tests use it between tests); :func:`close_all` runs at interpreter exit.

fsspec makes a separate filesystem instance per thread, so nothing that must exist once
per process can live on an instance: instances look their context up here.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from typing import Any

from netcache import buffers, peers, pressure
from netcache.config import LIVE_SETTINGS, CacheConfig
from netcache.context import CacheContext
from netcache.livestats import LiveStats
from netcache.pressure import MemoryPressureMonitor

#: At interpreter exit, pending write-backs get this long to finish; the rest is dropped.
EXIT_DRAIN_SECONDS = 5.0


class Registry:
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
        self.contexts: dict[tuple[object, ...], CacheContext] = {}
        self.forks = 0
        #: bumped when a context is replaced: instances on it look their context up again
        self.generation = 0

    def acquire(self, config: CacheConfig, target_id: str, protocol: str = "") -> CacheContext:
        """The context of ``config``'s folder and ``target_id``, made if there is none.
        A new one is built outside the lock (it reads the disk tier's folder), then put
        in unless another thread put one in first (the one built here is then dropped:
        nothing of it has started), then registered with the memory monitor.

        Settings follow the latest instance: one in use takes ``LIVE_SETTINGS`` at once;
        for any other setting (the page size, the eviction policy, ...) it is replaced by
        a new context once none of its files is open (its pending stores are drained
        first), and ``ValueError`` says what to close while some are."""
        key = config.registry_key(target_id)
        with self.lock:
            context = self.contexts.get(key)
        if context is None:
            return self._put_new(key, config, target_id, None, protocol)
        differences = config.differences(context.config)
        if not differences:
            return context
        if set(differences) <= LIVE_SETTINGS:
            context.apply(config)
            return context
        fixed = "; ".join(v for k, v in differences.items() if k not in LIVE_SETTINGS)
        files = context.open_files()
        if files:
            raise ValueError(
                f"this cache folder and target are in use in this process with other "
                f"settings: {fixed}. These cannot change while its {files} open file(s) "
                "read through it: close them (or call netcache.close_all()), then make "
                "the filesystem again"
            )
        return self._put_new(key, config, target_id, context, protocol)

    def _put_new(self, key: tuple[object, ...], config: CacheConfig, target_id: str,
                 replacing: CacheContext | None, protocol: str) -> CacheContext:  # fmt: skip
        built = CacheContext(config, target_id)
        built.cookies.protocol = protocol
        with self.lock:
            current = self.contexts.get(key)
            if current is not replacing and current is not None:
                context = current  # another thread was first: use its context
            else:
                context = self.contexts[key] = built
                if replacing is not None:
                    self.generation += 1  # instances on the old context look again
        if context is not built:
            built.close(0.0)
            return self.acquire(config, target_id, protocol)
        if replacing is not None:
            if replacing.config.memory_monitor is not None:
                replacing.config.memory_monitor.unregister(replacing.page_cache)
            replacing.close(EXIT_DRAIN_SECONDS)
        built.watch_memory()
        live_stats.watch(built)
        return built

    def in_use(self) -> list[CacheContext]:
        """The contexts in use now."""
        with self.lock:
            return list(self.contexts.values())

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


registry = Registry()
live_stats = LiveStats()
_default: MemoryPressureMonitor | None = None
_default_lock = threading.Lock()


def default_monitor() -> MemoryPressureMonitor:
    """The process-wide monitor every cache registers with unless told otherwise. Made
    on first use: inside a Dask worker with the worker's memory limit and thresholds
    below its spill threshold (:mod:`netcache.daskenv`), elsewhere with the defaults. A
    pickle of it is the receiving process's own."""
    global _default
    with _default_lock:
        monitor = _default
    if monitor is None:
        made = MemoryPressureMonitor(**_environment_settings())  # outside the lock
        made.pickled_as = default_monitor
        with _default_lock:
            if _default is None:
                _default = made
            monitor = _default
    return monitor


def use_default_monitor(monitor: MemoryPressureMonitor | None) -> None:
    """Make ``monitor`` the process-wide monitor for caches made from now on (None: a
    new one is made on next use). For tests and embedders that grade memory their own
    way; caches already made keep theirs."""
    global _default
    if monitor is not None:
        monitor.pickled_as = default_monitor
    with _default_lock:
        old, _default = _default, monitor
    if old is not None and old is not monitor:
        old.pickled_as = None
        old.stop()


def _environment_settings() -> dict[str, Any]:
    """The default memory monitor's settings: inside a Dask worker, its memory limit and
    thresholds below its spill threshold; elsewhere netcache's defaults."""
    if "distributed" not in sys.modules:
        return {}
    from netcache.daskenv import current_worker, monitor_settings

    worker = current_worker()
    return monitor_settings(worker) if worker is not None else {}


def close_all(drain_timeout: float = EXIT_DRAIN_SECONDS) -> bool:
    """Store what is pending (for at most ``drain_timeout`` seconds), then close every
    cache of this process. Runs by itself at interpreter exit."""
    live_stats.stop()
    return registry.close_all(drain_timeout)


def reset(drain_timeout: float = EXIT_DRAIN_SECONDS) -> bool:
    """Start afresh in this process: close every cache (draining its stores for at most
    ``drain_timeout`` seconds), stop and forget the default monitor, empty the buffer
    pool, and forget the peer source. Returns whether every store finished."""
    drained = close_all(drain_timeout)
    use_default_monitor(None)
    buffers.drop_recycled()
    peers.uninstall()
    return drained


def _after_fork_in_child() -> None:
    global _default_lock
    _default_lock = threading.Lock()
    registry.reset_after_fork()
    peers.uninstall()  # it sends on the parent's event loop, which the child has not
    live_stats.reset_after_fork()
    buffers.reset_after_fork()
    pressure.reset_tokens_after_fork()
    if _default is not None:
        _default.reset_after_fork()


atexit.register(close_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
