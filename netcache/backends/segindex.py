"""SegmentIndex: what the directory backend knows of its folder, least recently used
first: each segment's size and which of its slots hold a page, the file folders this
process created, and when the folder is due for a rescan."""

from __future__ import annotations

import threading

from netcache.backends.base import DiskUsage, PageIndex
from netcache.backends.segmentio import MAX_CREATED

#: A rescan comes after at least 1/RESCAN_LIMIT_SHARE of the limit stored.
RESCAN_LIMIT_SHARE = 64

Culled = list[tuple[str, int]]


class SegmentIndex:
    """Segments (paths relative to the ``files`` folder) with their sizes, in a
    cachetools LRU (:class:`PageIndex`) that decides what to cull past ``limit``, and
    their slot masks (bit ``i`` set if slot ``i`` holds a page).

    Every method returns the segments it culled, for the caller to unlink after it
    returns: no I/O happens here.

    Locking: one lock guards every field, held for dictionary and integer operations
    only; thread-safe.
    """

    def __init__(self, limit: int, block_size: int, segment_pages: int, table: int) -> None:
        self.limit = limit
        self.block_size = block_size
        self.segment_pages = segment_pages
        self.table = table
        # stores between two rescans, at least: 1/64 of the limit (a fresh folder was
        # otherwise rescanned after every few MiB stored, each time reading every table)
        self.rescan_floor = max(8, limit // (RESCAN_LIMIT_SHARE * block_size))
        self._lock = threading.Lock()
        self._index = PageIndex(limit)  # segment -> bytes
        self._slots: dict[str, int] = {}
        self._stores_since_rescan = 0
        self._rescan_asked = False
        self._unlink_errors = 0
        self._created: dict[str, None] = {}  # file folders this process made, newest last
        # segments indexed since the running rescan listed the folder: kept by its rebuild
        self._since_listing: dict[str, tuple[int, int]] = {}

    def segment_bytes(self, mask: int) -> int:
        """Disk space a segment takes: its table and the pages it holds (a segment is
        sparse: slots never written take none)."""
        return self.table + mask.bit_count() * self.block_size

    def holds(self, rel: str, slot: int) -> bool:
        with self._lock:
            return bool(self._slots.get(rel, 0) >> slot & 1)

    def look(self, rel: str) -> tuple[int, bool, bool]:
        """``rel``'s slot mask; whether it is indexed; whether its folder is one this
        process created (then a page missing from the mask is not on disk)."""
        with self._lock:
            return (self._slots.get(rel, 0), rel in self._index,
                    rel.rsplit("/", 1)[0] in self._created)  # fmt: skip

    def add_slots(self, rel: str, mask: int, stored: int = 0) -> tuple[bool, bool, Culled]:
        """``mask``'s slots of ``rel`` hold pages (``stored`` of them just written), and
        ``rel`` is the most recently used. Returns whether it fits the limit at all,
        whether a rescan is due, and what was culled."""
        with self._lock:
            mask |= self._slots.get(rel, 0)
            self._slots[rel] = mask
            size = self.segment_bytes(mask)
            fits = size <= self.limit
            if fits:
                if rel in self._index:
                    self._index[rel]  # most recently used first, so not its own victim
                self._index[rel] = size
                self._since_listing[rel] = (size, mask)
            self._stores_since_rescan += stored
            # pages held, counted as whole segments: O(1) under the lock
            due = self._rescan_asked or self._stores_since_rescan >= max(
                self.rescan_floor, len(self._index) * self.segment_pages // 8
            )
            return fits, due, self._take_culled()

    def set_limit(self, limit: int) -> Culled:
        """A new limit; what it culls now."""
        with self._lock:
            self.limit = limit
            self._index = self._index.resized(limit)
            return self._take_culled()

    def touch(self, rel: str) -> None:
        """``rel`` is the most recently used, if indexed."""
        with self._lock:
            if rel in self._index:
                self._index[rel]

    def add_whole(self, rel: str, size: int) -> tuple[bool, bool, Culled]:
        """A whole-file copy of ``size`` bytes at ``rel``, most recently used: counted in
        the limit and culled as a segment is. Returns as ``add_slots`` does."""
        with self._lock:
            fits = size <= self.limit
            if fits:
                self._index[rel] = size
                self._since_listing[rel] = (size, 0)
            return fits, False, self._take_culled()

    def clear_slot(self, rel: str, slot: int) -> None:
        with self._lock:
            if rel in self._slots:
                self._slots[rel] &= ~(1 << slot)

    def forget(self, rel: str) -> None:
        with self._lock:
            self._forget(rel)

    def forget_folder(self, folder: str) -> None:
        with self._lock:
            self._created.pop(folder, None)

    def note_created(self, folder: str) -> None:
        with self._lock:
            self._created[folder] = None
            if len(self._created) > MAX_CREATED:
                del self._created[next(iter(self._created))]

    def forget_all(self) -> None:
        with self._lock:
            self._index.forget_all()
            self._slots = {}
            self._since_listing = {}
            self._created.clear()

    def cull_for(self, keep: str, nbytes: int) -> Culled:
        """Cull least recently used segments (never ``keep``) until ``nbytes`` are freed."""
        culled: Culled = []
        with self._lock:
            freed = 0
            for rel in list(self._index):  # least recently used first
                if freed >= nbytes:
                    break
                if rel != keep:
                    size = self._index.cull(rel)
                    self._slots.pop(rel, None)
                    self._since_listing.pop(rel, None)
                    culled.append((rel, size))
                    freed += size
        return culled

    def unlink_failed(self) -> None:
        """A culled segment could not be removed: count it, and make a rescan due at the
        next store (it finds the segment again, and culls it again)."""
        with self._lock:
            self._unlink_errors += 1
            self._rescan_asked = True

    def start_listing(self) -> None:
        """A rescan is listing the folder: remember what is indexed from now on."""
        with self._lock:
            self._since_listing = {}

    def rebuild(self, found: list[tuple[float, str, int, int]]) -> Culled:
        """Index ``found`` (mtime, segment, bytes, mask), least recently used first, plus
        what was indexed since the listing began; cull to the limit."""
        found.sort()
        with self._lock:
            self._stores_since_rescan = 0
            self._rescan_asked = False
            self._index.forget_all()
            self._slots = {}
            for _, rel, size, mask in found:
                if size <= self.limit:
                    self._index[rel] = size
                    self._slots[rel] = mask
            for rel, (size, mask) in self._since_listing.items():  # newer than the listing
                self._index[rel] = size
                self._slots[rel] = self._slots.get(rel, 0) | mask
            return self._take_culled()

    def usage(self) -> DiskUsage:
        with self._lock:
            usage = self._index.usage()
            pages = sum(mask.bit_count() for mask in self._slots.values())
            return DiskUsage(usage.used, usage.limit, pages, usage.culls, usage.cbytes,
                             self._unlink_errors)  # fmt: skip

    def _forget(self, rel: str) -> None:
        self._index.pop(rel, None)
        self._slots.pop(rel, None)
        self._since_listing.pop(rel, None)

    def _take_culled(self) -> Culled:
        culled = self._index.take_culled()
        for rel, _ in culled:
            self._slots.pop(rel, None)
            self._since_listing.pop(rel, None)
        return culled
