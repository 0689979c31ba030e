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
from typing import Any, ClassVar

from netcache.policies.release import PressureLevel
from netcache.prometheus import prometheus_text as render_prometheus
from netcache.sizes import format_size as size


class _Line:
    """A stats line: FS-Cache's short field names, plus plain names for them
    (``ALIASES``). A name that is neither raises ``AttributeError`` listing both."""

    label: ClassVar[str] = ""
    ALIASES: ClassVar[dict[str, str]] = {}

    def __getattr__(self, name: str) -> Any:
        # only reached for names that are not fields: plain ones, or mistakes
        field = type(self).ALIASES.get(name)
        if field is not None:
            return getattr(self, field)
        if name.startswith("__"):
            raise AttributeError(name)
        fields = [f.name for f in dataclasses.fields(self)]  # type: ignore[arg-type]
        plain = ", ".join(f"{k} ({v})" for k, v in type(self).ALIASES.items())
        raise AttributeError(
            f"{type(self).__name__} has no {name!r}: its fields are {', '.join(fields)}"
            + (f"; also by plain name: {plain}" if plain else "")
        )


@dataclass(frozen=True)
class PagesStats(_Line):
    """Memory tier now: resident pages, their bytes, and the byte budget."""

    label: ClassVar[str] = "Pages"
    ALIASES: ClassVar[dict[str, str]] = {"pages": "n", "count": "n"}
    n: int = 0
    bytes: int = 0
    limit: int = 0


@dataclass(frozen=True)
class RetrievalStats(_Line):
    """Page reads by where they were served from.

    ``mem``/``disk``/``remote``: pages served from each tier; ``rbytes``: bytes fetched
    from the remote; ``req``: remote data requests; ``joined``: pages a reader waited for
    because another reader was already fetching them (single flight); ``err``: failed
    remote fetches; ``retry``: requests made again after a transient error (a 5xx, a
    reset, a timeout); ``stale``: versions served without a check because the remote could
    not be reached (``offline=True`` only); ``mbytes``/``dbytes``: bytes served from
    memory and from the disk tier; ``nolook``: first looks (the version learnt
    from a cold read's own ranged requests) that could not be used, so ``info()`` was
    asked instead.
    """

    label: ClassVar[str] = "Retrvls"
    ALIASES: ClassVar[dict[str, str]] = {
        "memory": "mem",
        "from_memory": "mem",
        "from_disk": "disk",
        "from_remote": "remote",
        "remote_bytes": "rbytes",
        "memory_bytes": "mbytes",
        "disk_bytes": "dbytes",
        "requests": "req",
        "errors": "err",
        "retries": "retry",
    }
    mem: int = 0
    disk: int = 0
    remote: int = 0
    rbytes: int = 0
    req: int = 0
    joined: int = 0
    err: int = 0
    retry: int = 0
    stale: int = 0
    nolook: int = 0
    mbytes: int = 0
    dbytes: int = 0


@dataclass(frozen=True)
class StoreStats(_Line):
    """Write-back to the disk tier, with the kernel's names.

    ``n``: store requests; ``ok``: queued; ``agn``: already queued or stored;
    ``nbf``: times a reader found the queue over its share of memory (it then stored the
    oldest run itself: ``own``); ``oom``: failed for lack of memory; ``run``: pages
    whose store ran; ``pgs``: pages stored; ``err``: pages the disk tier failed to store;
    ``pend``: bytes queued or being stored now.
    """

    label: ClassVar[str] = "Stores"
    ALIASES: ClassVar[dict[str, str]] = {
        "requests": "n",
        "queued": "ok",
        "stored": "pgs",
        "errors": "err",
        "pending_bytes": "pend",
        "stored_by_readers": "own",
    }
    n: int = 0
    ok: int = 0
    agn: int = 0
    nbf: int = 0
    own: int = 0
    oom: int = 0
    run: int = 0
    pgs: int = 0
    err: int = 0
    pend: int = 0


@dataclass(frozen=True)
class UnstoredStats(_Line):
    """Pages that never reached the disk tier, by why: nothing is dropped uncounted.

    ``pressure``: store cancelled by reclaim under memory pressure (``VmScan: can``), or
    page not kept at critical pressure; ``error``: the disk tier failed to store it;
    ``full``: the disk was full (``ENOSPC``), even after culling; ``invalidated``: its
    file changed or was written or cleared first; ``closed``: still queued when the
    cache closed (interpreter exit after ``EXIT_DRAIN_SECONDS``).
    """

    label: ClassVar[str] = "Unstord"
    ALIASES: ClassVar[dict[str, str]] = {}
    pressure: int = 0
    error: int = 0
    full: int = 0
    invalidated: int = 0
    closed: int = 0


@dataclass(frozen=True)
class VmScanStats(_Line):
    """Outcomes of ``maybe_release_page`` during reclaim, one per call.

    ``nos``: no store pending, released; ``gon``: a store was pending at the first look
    but had finished by the time the lock was taken, released; ``bsy``: being stored,
    skipped; ``can``: store queued and not started, cancelled and released; ``kep``: a
    pending store the policy chose not to cancel yet, skipped; ``wt``: waits for a store
    (only ``WaitForStore`` waits).
    """

    label: ClassVar[str] = "VmScan"
    ALIASES: ClassVar[dict[str, str]] = {
        "no_store": "nos",
        "gone": "gon",
        "busy": "bsy",
        "cancelled": "can",
        "waited": "wt",
        "kept": "kep",
    }
    nos: int = 0
    gon: int = 0
    bsy: int = 0
    can: int = 0
    wt: int = 0
    kep: int = 0


@dataclass(frozen=True)
class EvictStats(_Line):
    """Routine eviction to stay within ``memory_limit`` (never cancels a store)."""

    label: ClassVar[str] = "Evict"
    ALIASES: ClassVar[dict[str, str]] = {"evicted": "n"}
    n: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class InvalidationStats(_Line):
    """Pages dropped because their file changed or was written (unconditional)."""

    label: ClassVar[str] = "Invals"
    ALIASES: ClassVar[dict[str, str]] = {"invalidations": "n"}
    n: int = 0
    pages: int = 0


@dataclass(frozen=True)
class DiskStats(_Line):
    """Disk tier: bytes and pages held now, the limit, culls, and trouble.

    ``culls``/``cbytes``: what culling removed to stay within ``disk_limit`` (segments
    of pages for the directory backend, pages for a mapping backend); ``rerr``: pages
    that could not be read back (missing, corrupt, unreadable) and were
    fetched from the remote instead; ``werr``: pages or metadata the disk tier failed to
    write.
    """

    label: ClassVar[str] = "Disk"
    ALIASES: ClassVar[dict[str, str]] = {
        "read_errors": "rerr",
        "write_errors": "werr",
        "culled": "culls",
        "culled_bytes": "cbytes",
        "local_copies_made": "lmade",
        "local_copies_reused": "lhit",
    }
    used: int = 0
    limit: int = 0
    pages: int = 0
    culls: int = 0
    cbytes: int = 0
    rerr: int = 0
    werr: int = 0
    cerr: int = 0
    lmade: int = 0
    lhit: int = 0


@dataclass(frozen=True)
class PressureStats(_Line):
    """The memory-pressure monitor this cache is registered with (all its caches).

    ``readings``: memory readings taken; ``mod``/``high``/``crit``: times each level was
    entered; ``rbytes``/``rpages``: bytes and pages reclaimed under pressure;
    ``last_us``/``max_us``: duration of the last and the longest reclaim walk;
    ``level``: the current level (0 none, 1 moderate, 2 high, 3 critical).
    """

    label: ClassVar[str] = "Pressure"
    ALIASES: ClassVar[dict[str, str]] = {"reclaimed_bytes": "rbytes", "reclaimed_pages": "rpages"}
    readings: int = 0
    mod: int = 0
    high: int = 0
    crit: int = 0
    rbytes: int = 0
    rpages: int = 0
    last_us: int = 0
    max_us: int = 0
    level: int = 0


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
