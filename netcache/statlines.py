"""The lines of netcache's stats, in the manner of ``/proc/fs/fscache/stats``: one frozen
dataclass a line, with FS-Cache's short field names, plain names for them, and what
each counts. :mod:`netcache.stats` counts and snapshots them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar


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
class PeersStats(_Line):
    """Pages shared with peers (``netcache.dask.share_pages``).

    ``asked``: pages asked of peers, in ``req`` requests (one per home and file version
    of a fetch); ``got``/``gbytes``: pages and bytes peers served
    this cache; ``served``/``sbytes``: pages and bytes it served to peers; ``fallback``:
    pages asked whose peer failed, refused or answered wrong, fetched from the remote
    instead; ``err``: peers that failed (gone, slow, an error) or answered wrong.
    """

    label: ClassVar[str] = "Peers"
    ALIASES: ClassVar[dict[str, str]] = {"errors": "err", "served_by_peers": "got",
                                         "served_to_peers": "served"}  # fmt: skip
    asked: int = 0
    req: int = 0
    got: int = 0
    gbytes: int = 0
    served: int = 0
    sbytes: int = 0
    fallback: int = 0
    err: int = 0
