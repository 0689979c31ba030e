"""MemoryPressureMonitor: psutil readings turned into pressure levels and reclaim."""

from __future__ import annotations

import heapq
import logging
import resource
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psutil

from netcache.buffers import drop_recycled, trim_heap
from netcache.policies.release import PressureLevel, Reason
from netcache.reclaim import reclaim_pages
from netcache.sizes import parse_size

if TYPE_CHECKING:
    from netcache.pagecache import PageCache

logger = logging.getLogger("netcache")

#: Defaults, as fractions of the limit: reclaim starts at ``moderate`` and goes on until
#: the process is back under ``target``; ``high`` cancels pending stores at once;
#: ``critical`` also stops admitting pages and read-ahead.
DEFAULT_MODERATE = 0.80
DEFAULT_HIGH = 0.90
DEFAULT_CRITICAL = 0.95
DEFAULT_TARGET = 0.70
#: A level is left only this far (fraction of the limit) below its threshold.
DEFAULT_HYSTERESIS = 0.03
DEFAULT_INTERVAL = 0.1


@dataclass(frozen=True)
class MemoryReading:
    """One look at memory: this process's resident bytes and the system's available."""

    rss: int
    available: int


def psutil_probe() -> MemoryReading:
    return MemoryReading(psutil.Process().memory_info().rss, psutil.virtual_memory().available)


def default_limit() -> int:
    """The smallest of total RAM, the cgroup (v2 or v1) memory limit and ``RLIMIT_RSS``."""
    candidates = [psutil.virtual_memory().total]
    candidates += [v for v in (_cgroup_limit(), _rlimit_rss()) if v]
    return min(candidates)


def _cgroup_limit() -> int | None:
    """This process's cgroup memory limit (v2 ``memory.max``, or v1's
    ``memory.limit_in_bytes`` of its own memory cgroup, else the mount's root), or
    None where there is none."""
    paths = ["/sys/fs/cgroup/memory/memory.limit_in_bytes"]  # v1, seen from a namespace
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers == "":  # v2
                    paths.insert(0, f"/sys/fs/cgroup{path}/memory.max")
                elif "memory" in controllers.split(","):  # v1: this process's own group
                    paths.insert(0, f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
    except (OSError, ValueError):  # no cgroups here: no limit from them
        pass
    for path in paths:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 says "no limit" with a huge number
            return int(text)
    return None


def _rlimit_rss() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_RSS)
    return soft if soft not in (resource.RLIM_INFINITY, -1) and soft > 0 else None


def _fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name}={value!r} must be a fraction of the limit in (0, 1]")
    return float(value)


class MemoryPressureMonitor:
    """Watches memory and makes the registered caches give it back.

    Every ``interval`` seconds (on a daemon thread started when the first cache
    registers, unless ``autostart=False``; or on demand with ``check()``) it
    takes a reading from ``probe`` (default: psutil) and grades it against ``limit``
    (default :func:`default_limit`): RSS at ``moderate``, ``high`` or ``critical`` of the
    limit, or system available memory under ``available_floor`` (``HIGH``; under half
    of it, ``CRITICAL``). While the level is above NONE it reclaims, coldest pages first
    across all registered caches, until RSS is back under ``target`` of the limit, and
    holds each cache at the size reclaim left it (new pages evict old ones) until the
    pressure is over; a level is left only ``hysteresis`` below its threshold, so it
    does not flap.

    Caches are held weakly. Reclaim runs on the monitor's thread (or the caller of
    ``check``), never on a write-back worker, and never waits for a store unless the
    caches' release policy does. Thread-safe: one lock serialises checks (the probe and
    reclaim run under it, so only one check runs at a time); another, never held across
    a call out, guards the level, the caches and the counters.
    """

    def __init__(
        self,
        limit: int | str | None = None,
        *,
        moderate: float = DEFAULT_MODERATE,
        high: float = DEFAULT_HIGH,
        critical: float = DEFAULT_CRITICAL,
        target: float = DEFAULT_TARGET,
        hysteresis: float = DEFAULT_HYSTERESIS,
        available_floor: int | str | None = None,
        interval: float = DEFAULT_INTERVAL,
        probe: Callable[[], MemoryReading] | None = None,
        autostart: bool = True,
    ) -> None:
        self.limit = default_limit() if limit is None else parse_size(limit, "limit", minimum=1)
        self.moderate = _fraction("moderate", moderate)
        self.high = _fraction("high", high)
        self.critical = _fraction("critical", critical)
        self.target = _fraction("target", target)
        if not self.target < self.moderate <= self.high <= self.critical:
            raise ValueError(
                f"thresholds must satisfy target < moderate <= high <= critical, got "
                f"target={target}, moderate={moderate}, high={high}, critical={critical}"
            )
        if (
            isinstance(hysteresis, bool)
            or not isinstance(hysteresis, (int, float))
            or not (0 <= hysteresis < self.moderate - self.target + 1e-9)
        ):
            raise ValueError(f"hysteresis={hysteresis!r} must be >= 0 and below moderate - target")
        self.hysteresis = float(hysteresis)
        total = psutil.virtual_memory().total
        self.available_floor = (
            min(total // 20, 1 << 30)
            if available_floor is None
            else parse_size(available_floor, "available_floor")
        )
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
            raise ValueError(f"interval={interval!r} must be a number of seconds > 0")
        self.interval = float(interval)
        self.probe = probe if probe is not None else psutil_probe
        if not callable(self.probe):
            raise TypeError(f"probe={probe!r} must be a callable returning a MemoryReading")
        self._caches: weakref.WeakSet[PageCache] = weakref.WeakSet()
        self._check_lock = threading.Lock()
        self._lock = threading.Lock()
        self._level = PressureLevel.NONE
        self._entered_at = 0.0
        self._episode_bytes = 0
        self._counts = {
            "readings": 0, "mod": 0, "high": 0, "crit": 0, "rbytes": 0, "rpages": 0,
            "last_us": 0, "max_us": 0,
        }  # fmt: skip
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.autostart = autostart
        #: What a pickle of this monitor calls to find its counterpart where it lands, if
        #: not a monitor with its settings (the process-wide default monitor is the
        #: receiving process's own; :mod:`netcache.process` sets it).
        self.pickled_as: Callable[[], MemoryPressureMonitor] | None = None
        # Pickles (for Dask) travel as this token and the settings: one monitor per token
        # per process, so unpickling in the process that made it gives back this one.
        self._token = uuid.uuid4().hex
        with _by_token_lock:
            _by_token[self._token] = self

    def settings(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this monitor elsewhere."""
        return {
            "limit": self.limit, "moderate": self.moderate, "high": self.high,
            "critical": self.critical, "target": self.target, "hysteresis": self.hysteresis,
            "available_floor": self.available_floor, "interval": self.interval,
            "probe": self.probe, "autostart": self.autostart,
        }  # fmt: skip

    def __reduce__(self) -> tuple[Any, ...]:
        if self.pickled_as is not None:  # the receiving process's own (a Dask worker's)
            return (self.pickled_as, ())
        # a custom probe travels too, so it must be picklable (a module-level function)
        return (_monitor_for, (self._token, self.settings()))

    # -- registration and the thread ---------------------------------------------------------

    def register(self, cache: PageCache) -> None:
        """Watch over ``cache`` (held weakly) and start the thread if it is not running."""
        with self._lock:
            self._caches.add(cache)
            cache.pressure = self._level
        if self.autostart:
            self.start()

    def unregister(self, cache: PageCache) -> None:
        with self._lock:
            self._caches.discard(cache)

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="netcache-pressure",
                                            daemon=True)  # fmt: skip
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # a failing probe must not kill the watch
                logger.exception("netcache: memory pressure check failed")

    # -- one check ----------------------------------------------------------------------

    @property
    def level(self) -> PressureLevel:
        return self._level

    def grade(self, reading: MemoryReading) -> PressureLevel:
        """The level for ``reading``, given the current level (hysteresis)."""
        share = reading.rss / self.limit
        level = PressureLevel.NONE
        for threshold, candidate in ((self.moderate, PressureLevel.MODERATE),
                                     (self.high, PressureLevel.HIGH),
                                     (self.critical, PressureLevel.CRITICAL)):  # fmt: skip
            staying = self._level >= candidate
            if share >= threshold - (self.hysteresis if staying else 0.0):
                level = candidate
        if self._level > PressureLevel.NONE and share >= self.target:
            level = max(level, PressureLevel.MODERATE)  # reclaim goes on down to target
        if reading.available < self.available_floor // 2:
            level = PressureLevel.CRITICAL
        elif reading.available < self.available_floor:
            level = max(level, PressureLevel.HIGH)
        return level

    def check(self) -> PressureLevel:
        """Take one reading, set the level on every cache, and reclaim if needed."""
        with self._check_lock:
            reading = self.probe()
            log = None
            with self._lock:
                self._counts["readings"] += 1
                level = self.grade(reading)
                if level != self._level:
                    log = self._change_level(level, reading)
                caches = list(self._caches)
                for cache in caches:
                    cache.pressure = level
            if log is not None:  # outside the lock: handlers are other people's code
                logger.info(*log)
            if level > PressureLevel.NONE:
                # back *under* target (and the floor), so at least one byte
                need = max(reading.rss - int(self.target * self.limit) + 1,
                           self.available_floor - reading.available + 1, 0)  # fmt: skip
                self._reclaim(caches, need, level)
            return level

    def _reclaim(self, caches: list[PageCache], nbytes: int, level: PressureLevel) -> None:
        if nbytes <= 0:
            return
        started = time.perf_counter()
        victims = list(heapq.merge(*(c.victim_pages() for c in caches),
                                   key=lambda victim: victim[1].atime))  # fmt: skip
        freed, pages = reclaim_pages(victims, nbytes, Reason.PRESSURE, level)
        for cache in caches:
            cache.hold_size()
        elapsed = int((time.perf_counter() - started) * 1e6)
        with self._lock:
            self._counts["rbytes"] += freed
            self._counts["rpages"] += pages
            self._counts["last_us"] = elapsed
            self._counts["max_us"] = max(self._counts["max_us"], elapsed)
            self._episode_bytes += freed
        # The memory comes back with the last references to the pages, here, after the
        # counts: whoever sees it come back sees the reclaim in the stats too.
        del victims
        if freed:
            drop_recycled()  # the buffers kept for reuse are outside every budget
            trim_heap()  # what transient network buffers left on the heap

    def _change_level(self, level: PressureLevel, reading: MemoryReading) -> tuple[Any, ...]:
        """Enter ``level`` (caller holds the lock); return the INFO line to log."""
        old, self._level = self._level, level
        mib = 1 << 20
        figures = (f"rss={reading.rss // mib} MiB limit={self.limit // mib} MiB "
                   f"available={reading.available // mib} MiB")  # fmt: skip
        if level > old:
            self._counts[{1: "mod", 2: "high", 3: "crit"}[int(level)]] += 1
        if old == PressureLevel.NONE:
            self._entered_at = time.monotonic()
            self._episode_bytes = 0
            return ("netcache: memory pressure %s (%s)", level.name, figures)
        if level == PressureLevel.NONE:
            return ("netcache: memory pressure over after %.0f ms, %d MiB reclaimed (%s)",
                    (time.monotonic() - self._entered_at) * 1000,
                    self._episode_bytes // mib, figures)  # fmt: skip
        return ("netcache: memory pressure %s -> %s (%s)", old.name, level.name, figures)

    def gauges(self) -> dict[str, int]:
        """The Pressure stats line."""
        with self._lock:
            out = {f"pressure.{k}": v for k, v in self._counts.items()}
            out["pressure.level"] = int(self._level)
            return out

    def reset_after_fork(self) -> None:
        self._check_lock = threading.Lock()
        self._lock = threading.Lock()
        self._thread = None
        self._stop = threading.Event()
        self._caches = weakref.WeakSet()


_by_token: weakref.WeakValueDictionary[str, MemoryPressureMonitor] = weakref.WeakValueDictionary()
_by_token_lock = threading.Lock()


def _monitor_for(token: str, settings: dict[str, Any]) -> MemoryPressureMonitor:
    """Unpickling: the monitor of ``token`` in this process, made from ``settings`` once."""
    with _by_token_lock:
        monitor = _by_token.get(token)
    if monitor is None:
        monitor = MemoryPressureMonitor(**settings)
        with _by_token_lock:
            monitor = _by_token.setdefault(token, monitor)
            monitor._token = token
    return monitor


def reset_tokens_after_fork() -> None:
    """In a forked child: a new lock for the map of pickled monitors (the parent's may
    have been held by another thread at the fork). Called by :mod:`netcache.process`."""
    global _by_token_lock
    _by_token_lock = threading.Lock()
