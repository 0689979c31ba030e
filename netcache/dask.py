"""netcache on a Dask cluster: memory thresholds under the worker's, cluster-wide stats.

A :class:`~netcache.NetCacheFileSystem` pickles to workers as its settings and rebuilds
there, sharing one cache per worker process (and one disk tier per machine when the
workers name the same ``cache_dir``). Inside a worker, the process-wide memory monitor
takes the worker's memory limit and puts its thresholds under Dask's own, so netcache
gives memory back before Dask starts spilling or pausing (:func:`monitor_settings`, from
:mod:`netcache.daskenv`).
``distributed`` is imported only when this module is used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from netcache.daskenv import current_worker, monitor_settings
from netcache.process import registry
from netcache.stats import COUNTER_NAMES

__all__ = ["cluster_stats", "current_worker", "monitor_settings", "process_stats"]


def process_stats() -> dict[str, int]:
    """Every cache of this process summed (pressure counters, which caches sharing one
    monitor all report, are taken once): every counter name, zero where nothing was
    read."""
    total: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
    for context in registry.in_use():
        counters = {k: v for k, v in context.stats().as_dict().items() if "." in k}
        _merge(total, counters, lambda name: name.startswith("pressure."))
    return total


def cluster_stats(client: Any) -> dict[str, dict[str, int]]:
    """Stats of every worker of ``client``'s cluster: ``{worker address: counters}``, plus
    ``"total"`` summed over workers (``pressure.level``: the highest)."""
    per_worker: dict[str, dict[str, int]] = client.run(process_stats)
    total: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
    for counters in per_worker.values():
        _merge(total, counters, lambda name: name == "pressure.level")
    return {**per_worker, "total": total}


def _merge(total: dict[str, int], counters: dict[str, int], highest: Callable[[str], bool]) -> None:
    """Add ``counters`` into ``total``; names ``highest`` picks keep the larger value."""
    for name, value in counters.items():
        total[name] = (
            max(total.get(name, 0), value) if highest(name) else total.get(name, 0) + value
        )
