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

__all__ = ["cluster_stats", "current_worker", "monitor_settings", "process_stats",
           "share_pages", "stop_sharing_pages"]  # fmt: skip

#: The name ``share_pages`` registers its worker plugin under.
PLUGIN_NAME = "netcache-share-pages"


def share_pages(client: Any, timeout: float = 2.0) -> None:
    """From now on, every ``NetCacheFileSystem`` on every worker of ``client``'s cluster
    (current and future) asks the home worker of a page for it before the remote; the
    home serves it from memory or disk, or fetches it once for the whole cluster
    (:mod:`netcache.peers` says how homes are chosen, :mod:`netcache.daskpeers` how
    pages travel). A peer that fails, or takes more than ``timeout`` seconds, is
    counted (``Peers: err, fallback``) and the remote is asked at once."""
    if not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0):
        raise ValueError(f"timeout={timeout!r} must be a number of seconds above 0")
    from netcache.daskpeers import PageSharing

    client.register_plugin(PageSharing(float(timeout)), name=PLUGIN_NAME)


def stop_sharing_pages(client: Any) -> None:
    """Undo :func:`share_pages`: workers read from their own tiers and the remote again."""
    client.unregister_worker_plugin(PLUGIN_NAME)


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
