"""netcache on a Dask cluster: memory thresholds under the worker's, cluster-wide stats.

A :class:`~netcache.NetCacheFileSystem` pickles to workers as its settings and rebuilds
there, sharing one cache per worker process (and one disk tier per machine when the
workers name the same ``cache_dir``). Inside a worker, the process-wide memory monitor
takes the worker's memory limit and puts its thresholds under Dask's own, so netcache
gives memory back before Dask starts spilling or pausing (:func:`monitor_settings`).
``distributed`` is imported only when this module is used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from netcache.context import registry

# netcache's thresholds as fractions of the worker's first memory threshold: a cache
# reclaims from 85% of it, hard at 92%, stops admitting at 97%, down to 70%.
_MODERATE, _HIGH, _CRITICAL, _TARGET = 0.85, 0.92, 0.97, 0.70


def current_worker() -> Any | None:
    """The Dask worker this code runs in, or None. Caches are often built while task
    arguments are unpickled, off the task thread ``get_worker`` knows, so a process with
    one worker (the usual nanny layout) answers that worker."""
    try:
        from distributed import get_worker
        from distributed.worker import Worker
    except ImportError:
        return None
    try:
        return get_worker()
    except ValueError:
        workers = list(Worker._instances)
        return workers[0] if len(workers) == 1 else None


def monitor_settings(worker: Any) -> dict[str, Any]:
    """``MemoryPressureMonitor`` arguments for a cache inside ``worker``: the worker's
    memory limit, and thresholds below the first of its process-memory thresholds that is
    enabled (``distributed.worker.memory.spill``, else ``pause``, else ``terminate``).
    A worker without a memory limit gets netcache's defaults."""
    manager = worker.memory_manager
    limit = getattr(manager, "memory_limit", None)
    if not limit:
        return {}
    import dask

    anchor = next(
        f
        for f in (
            getattr(manager, "memory_spill_fraction", False),
            getattr(manager, "memory_pause_fraction", False),
            dask.config.get("distributed.worker.memory.terminate", False),
            0.95,
        )
        if f
    )
    return {
        "limit": int(limit),
        "moderate": _MODERATE * anchor,
        "high": _HIGH * anchor,
        "critical": _CRITICAL * anchor,
        "target": _TARGET * anchor,
        "hysteresis": min(0.03, 0.05 * anchor),
    }


def process_stats() -> dict[str, int]:
    """Every cache of this process summed (pressure counters, which caches sharing one
    monitor all report, are taken once)."""
    with registry.lock:
        contexts = list(registry.contexts.values())
    total: dict[str, int] = {}
    for context in contexts:
        _merge(total, context.stats().as_dict(), lambda name: name.startswith("pressure."))
    return total


def cluster_stats(client: Any) -> dict[str, dict[str, int]]:
    """Stats of every worker of ``client``'s cluster: ``{worker address: counters}``, plus
    ``"total"`` summed over workers (``pressure.level``: the highest)."""
    per_worker: dict[str, dict[str, int]] = client.run(process_stats)
    total: dict[str, int] = {}
    for counters in per_worker.values():
        _merge(total, counters, lambda name: name == "pressure.level")
    return {**per_worker, "total": total}


def _merge(total: dict[str, int], counters: dict[str, int], highest: Callable[[str], bool]) -> None:
    """Add ``counters`` into ``total``; names ``highest`` picks keep the larger value."""
    for name, value in counters.items():
        total[name] = (
            max(total.get(name, 0), value) if highest(name) else total.get(name, 0) + value
        )
