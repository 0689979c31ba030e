"""Counters in the manner of ``/proc/fs/fscache/stats``.

:class:`Counters` is the live, thread-safe set one cache context increments; a
:class:`StatsSnapshot` is an immutable copy, with one frozen dataclass per stats line
(``snapshot.vmscan.can``), a text rendering (``str(snapshot)``) and a flat
``as_dict()`` for JSON and metrics exporters.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from netcache.policies.release import PressureLevel
from netcache.prometheus import prometheus_text as render_prometheus
from netcache.sizes import format_size as size
from netcache.statlines import (
    DiskStats,
    EvictStats,
    InvalidationStats,
    PagesStats,
    PeersStats,
    PressureStats,
    RetrievalStats,
    StoreStats,
    UnstoredStats,
    VmScanStats,
)


@dataclass(frozen=True)
class StatsSnapshot:
    """An immutable copy of every counter of one cache, taken at one moment."""

    pages: PagesStats
    retrievals: RetrievalStats
    stores: StoreStats
    unstored: UnstoredStats
    vmscan: VmScanStats
    evict: EvictStats
    invalidations: InvalidationStats
    disk: DiskStats
    pressure: PressureStats
    peers: PeersStats

    def groups(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def as_dict(self) -> dict[str, Any]:
        """Every counter flat, as ``{"vmscan.can": 3, ...}``, then the plain names
        (``hit_ratio``, ``bytes_from_memory``, ...; ``pressure_level`` by name)."""
        out: dict[str, Any] = {
            f"{name}.{key}": value
            for name, group in self.groups().items()
            for key, value in dataclasses.asdict(group).items()
        }
        out.update(self.plain())
        return out

    def to_prometheus(self, labels: Mapping[str, str] | None = None) -> str:
        """The counters in the Prometheus text format (see :func:`prometheus_text`)."""
        return prometheus_text([(labels or {}, self.as_dict())])

    # -- plain names ---------------------------------------------------------------------

    @property
    def hit_ratio(self) -> float:
        """Pages served from memory or disk, of all pages served (0.0 with none)."""
        r = self.retrievals
        served = r.mem + r.disk + r.remote
        return (r.mem + r.disk) / served if served else 0.0

    @property
    def bytes_from_memory(self) -> int:
        return self.retrievals.mbytes

    @property
    def bytes_from_disk(self) -> int:
        return self.retrievals.dbytes

    @property
    def bytes_from_remote(self) -> int:
        return self.retrievals.rbytes

    @property
    def bytes_saved(self) -> int:
        """Bytes the remote did not have to send: served from memory or disk."""
        return self.retrievals.mbytes + self.retrievals.dbytes

    @property
    def stores_given_up(self) -> int:
        return sum(dataclasses.asdict(self.unstored).values())

    @property
    def pressure_level(self) -> str:
        """The memory-pressure level by name: NONE, MODERATE, HIGH or CRITICAL."""
        return level_name(self.pressure.level)

    def plain(self) -> dict[str, float | int | str]:
        """The summary's figures by plain name (also in ``as_dict()``)."""
        return {name: getattr(self, name) for name in PLAIN_NAMES}

    def summary(self) -> str:
        """The figures a person asks first, in words."""
        r, u = self.retrievals, self.unstored
        served = r.mem + r.disk + r.remote
        why = ", ".join(f"{v} {k}" for k, v in dataclasses.asdict(u).items() if v)
        return "\n".join([
            f"hit ratio {self.hit_ratio:.1%} of {served} pages read: {r.mem} from memory, "
            f"{r.disk} from disk, {r.remote} from the remote",
            f"bytes served: {size(r.mbytes)} from memory, {size(r.dbytes)} from disk, "
            f"{size(r.rbytes)} fetched; the remote was spared {size(self.bytes_saved)}",
            f"stores to disk: {self.stores.pgs} made, {size(self.stores.pend)} pending, "
            f"{self.stores_given_up} given up" + (f" ({why})" if why else ""),
            f"memory pressure: {self.pressure_level}",
        ])  # fmt: skip

    def __str__(self) -> str:
        """The summary in words, then FS-Cache's lines as the kernel names them."""
        lines = [self.summary(), ""]
        for group in self.groups().values():
            values = dataclasses.asdict(group)
            if group is self.pressure:
                values["level"] = self.pressure_level
            fields = " ".join(f"{k}={v}" for k, v in values.items())
            lines.append(f"{group.label:<7}: {fields}")
        return "\n".join(lines)


#: The plain names of ``StatsSnapshot`` (attributes, and keys of ``as_dict()``).
PLAIN_NAMES = ("hit_ratio", "bytes_from_memory", "bytes_from_disk", "bytes_from_remote",
               "bytes_saved", "stores_given_up", "pressure_level")  # fmt: skip


def level_name(level: int) -> str:
    """A pressure level's name (``PressureLevel``), or the number if it is none."""
    try:
        return PressureLevel(level).name
    except ValueError:
        return str(level)


_GROUP_TYPES: dict[str, type] = {
    f.name: f.type if isinstance(f.type, type) else globals()[f.type]
    for f in dataclasses.fields(StatsSnapshot)
}
COUNTER_NAMES: tuple[str, ...] = tuple(
    f"{name}.{f.name}" for name, cls in _GROUP_TYPES.items() for f in dataclasses.fields(cls)
)


# Levels and sizes now; every other name only ever grows.
GAUGES = frozenset(
    {
        "pages.n", "pages.bytes", "pages.limit", "stores.pend", "disk.used", "disk.limit",
        "disk.pages", "pressure.level", "pressure.last_us", "pressure.max_us",
    }
)  # fmt: skip


def prometheus_text(
    series: Iterable[tuple[Mapping[str, str], Mapping[str, Any]]], prefix: str = "netcache"
) -> str:
    """Render flat counters (``StatsSnapshot.as_dict()``, or one worker's entry of
    ``netcache.dask.cluster_stats``) in the Prometheus text exposition format, one sample
    per ``(labels, counters)`` pair, e.g. ``[({"cache": "s3"}, snap.as_dict())]``: see
    :mod:`netcache.prometheus` for the names."""
    return render_prometheus(series, GAUGES, prefix)


class Counters:
    """The live counters of one cache.

    Thread-safe: one lock guards every increment, so counts are exact. Gauges (bytes in
    memory, bytes pending, disk usage) are not kept here; they are read from their
    owners when a snapshot is taken.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTER_NAMES, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def add_many(self, changes: dict[str, int]) -> None:
        with self._lock:
            for name, n in changes.items():
                self._values[name] += n

    def snapshot(self, gauges: dict[str, int]) -> StatsSnapshot:
        with self._lock:
            values = {**self._values, **gauges}
        groups = {
            name: cls(**{f.name: values[f"{name}.{f.name}"] for f in dataclasses.fields(cls)})
            for name, cls in _GROUP_TYPES.items()
        }
        return StatsSnapshot(**groups)
