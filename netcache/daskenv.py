"""What a Dask worker's environment says to netcache: the worker a cache is built in,
and the memory thresholds that keep netcache under Dask's own.

It imports nothing of netcache's but the names of ``distributed`` it reaches
(:mod:`netcache._compat`); :mod:`netcache.process` asks it for the default memory
monitor's settings when ``distributed`` is loaded, and it imports ``distributed`` only
when called.
"""

from __future__ import annotations

from typing import Any

from netcache._compat import dask_workers_in_process

# netcache's thresholds as fractions of the worker's first memory threshold: a cache
# reclaims from 85% of it, hard at 92%, stops admitting at 97%, down to 70%.
_MODERATE, _HIGH, _CRITICAL, _TARGET = 0.85, 0.92, 0.97, 0.70


def current_worker() -> Any | None:
    """The Dask worker this code runs in, or None. Caches are often built while task
    arguments are unpickled, off the task thread ``get_worker`` knows, so a process with
    one worker (the usual nanny layout) answers that worker."""
    try:
        from distributed import get_worker
    except ImportError:
        return None
    try:
        return get_worker()
    except ValueError:
        workers = dask_workers_in_process()
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
