"""PageCache: the memory tier, with single-flight claims, eviction and reclaim."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field

from netcache.page import Page, PageKey, StoreState
from netcache.policies.eviction import EvictionPolicy
from netcache.policies.release import (
    Outcome,
    PressureLevel,
    Reason,
    ReleasePolicy,
    ReleaseRequest,
    StoreControl,
)
from netcache.reclaim import reclaim_pages
from netcache.stats import Counters


@dataclass
class Claim:
    """The answer to a lookup: pages resident now, pages another reader is fetching (wait
    on the future), and pages this caller must now fetch and then ``complete`` or
    ``fail`` with the future it was given (no one else will)."""

    hits: dict[PageKey, Page] = field(default_factory=dict)
    waits: dict[PageKey, Future[Page]] = field(default_factory=dict)
    claimed: dict[PageKey, Future[Page]] = field(default_factory=dict)


class _NoStores:
    """StoreControl for a cache without a disk tier: no page ever has a store."""

    def cancel_if_pending(self, page: Page) -> StoreState:
        return page.state

    def wait_until_stored(self, page: Page, timeout: float | None) -> bool:
        return True


class PageCache:
    """Resident pages within a byte budget.

    ``lookup`` hands each missing page to exactly one caller (single flight): later
    callers get that caller's future. Every use stamps the page's ``atime``. Admission
    evicts, in the eviction policy's order, pages with no store pending until the budget
    holds again; a page whose store is queued or running is never evicted, so memory may
    exceed ``limit`` by the bytes the bounded write-back queue holds. ``reclaim`` walks
    victims through the release policy (see :func:`~netcache.reclaim.reclaim_pages`).

    Locking: one lock guards the pages, the eviction policy, the claims, the byte count
    and the count of memory hits. It is never held across I/O, a release policy's
    decision, a future's result or callbacks, or a wait.
    """

    def __init__(
        self,
        limit: int,
        eviction: EvictionPolicy,
        release: ReleasePolicy,
        counters: Counters,
        stores: StoreControl | None = None,
    ) -> None:
        self.limit = limit
        self.eviction = eviction
        self.release_policy = release
        self.stores: StoreControl = stores if stores is not None else _NoStores()
        self._counters = counters
        self._lock = threading.Lock()
        self._pages: dict[PageKey, Page] = {}
        self._by_file: dict[str, set[PageKey]] = {}
        self._inflight: dict[PageKey, Future[Page]] = {}
        self._bytes = 0
        # Memory hits are counted here, under the lock already held, not in ``counters``
        # (a second lock on the path of every warm read).
        self._mem_hits = 0
        self._mem_bytes = 0
        # What admission evicts down to: ``limit``, or less while memory pressure holds
        # the cache at the size reclaim left it (so readers cannot refill what was freed).
        self._budget = limit
        self._pressure = PressureLevel.NONE

    @property
    def pressure(self) -> PressureLevel:
        """Set by the memory-pressure monitor. At ``CRITICAL`` nothing new is admitted
        (fetched pages go to their readers only) and read-ahead stops; back at ``NONE``
        the cache may grow to ``limit`` again."""
        return self._pressure

    @pressure.setter
    def pressure(self, level: PressureLevel) -> None:
        self._pressure = level
        if level is PressureLevel.NONE:
            self._budget = self.limit

    @property
    def admitting(self) -> bool:
        return self._pressure < PressureLevel.CRITICAL

    def set_limit(self, limit: int) -> None:
        """A new byte budget, applied at once: shrinking evicts down to it now, by routine
        eviction (pages whose store is pending stay until stored)."""
        with self._lock:
            self.limit = limit
            self._budget = (
                limit if self._pressure is PressureLevel.NONE else min(self._budget, limit)
            )
            evicted = self._evict_to_fit()
        if evicted[0]:
            self._counters.add_many({"evict.n": evicted[0], "evict.bytes": evicted[1]})

    def hold_size(self) -> None:
        """Under pressure, after reclaim: admit new pages only by evicting old ones."""
        with self._lock:
            self._budget = min(self._budget, self._bytes)

    # -- reading -------------------------------------------------------------------------

    def lookup(self, keys: Iterable[PageKey]) -> Claim:
        claim = Claim()
        now = time.monotonic()
        with self._lock:
            for key in keys:
                page = self._pages.get(key)
                if page is not None:
                    self.eviction.touch(key)
                    page.atime = now
                    claim.hits[key] = page
                    continue
                inflight = self._inflight.get(key)
                if inflight is not None:
                    claim.waits[key] = inflight
                    continue
                claim.claimed[key] = self._inflight[key] = Future()
            self._mem_hits += len(claim.hits)
            self._mem_bytes += sum(page.nbytes for page in claim.hits.values())
        if claim.waits:
            self._counters.add("retrievals.joined", len(claim.waits))
        return claim

    def lookup_resident(
        self, file_id: str, version: str, first: int, last: int
    ) -> list[Page] | None:
        """Pages ``first..last`` of one file version if every one is resident (touched and
        counted as memory hits), else None with nothing touched: the hot path of a warm
        read, where every statement counts (a hit's bookkeeping costs as much as its copy)."""
        get = self._pages.get
        if last - first >= len(self._pages):  # more pages than are resident: a miss, at once
            return None
        with self._lock:
            # plain tuples find PageKeys (same hash, equal): building PageKeys costs more
            # than the lookups. One page (most small reads) skips the comprehension.
            if first == last:
                pages = [get((file_id, version, first))]
            else:
                pages = [get((file_id, version, i)) for i in range(first, last + 1)]
            if None in pages:
                return None
            now = time.monotonic()
            touch = self.eviction.touch
            nbytes = 0
            for page in pages:
                touch(page.key)  # type: ignore[union-attr]
                page.atime = now  # type: ignore[union-attr]
                nbytes += len(page.data)  # type: ignore[union-attr]
            self._mem_hits += len(pages)
            self._mem_bytes += nbytes
        return pages  # type: ignore[return-value]

    def is_resident(self, file_id: str, version: str, index: int) -> bool:
        """Whether that page is in memory now (nothing touched or counted)."""
        with self._lock:
            return (file_id, version, index) in self._pages

    def absent_pages(self, file_id: str, version: str, pages: range) -> list[PageKey]:
        """The keys of ``pages`` of one file version neither resident nor being fetched;
        nothing is touched or claimed. Plain tuples look the pages up, and keys are made
        only for those absent (a warm reader's read-ahead asks about every page of its
        window, all resident)."""
        resident, inflight = self._pages, self._inflight
        new = tuple.__new__  # PageKey's own __new__ costs as much as the lookups
        with self._lock:
            return [new(PageKey, (file_id, version, i)) for i in pages
                    if (file_id, version, i) not in resident
                    and (file_id, version, i) not in inflight]  # fmt: skip

    def claim_missing(self, keys: Iterable[PageKey]) -> dict[PageKey, Future[Page]]:
        """Claim the keys neither resident nor being fetched (for read-ahead: nothing is
        touched or counted as a read)."""
        claimed: dict[PageKey, Future[Page]] = {}
        with self._lock:
            for key in keys:
                if key not in self._pages and key not in self._inflight:
                    claimed[key] = self._inflight[key] = Future()
        return claimed

    def complete(self, page: Page, future: Future[Page]) -> bool:
        """Finish the claim ``future`` with ``page``; return whether it was admitted.

        Not admitted under critical memory pressure, nor when the page's file was
        invalidated while it was being fetched (the claim's waiters still get it; readers
        that came after the invalidation made a claim of their own).
        """
        key = page.key
        with self._lock:
            current = self._inflight.get(key) is future
            if current:
                del self._inflight[key]
            admit = current and self.admitting
            if admit:
                self._insert(page)
                evicted = self._evict_to_fit()
        if admit and evicted[0]:
            self._counters.add_many({"evict.n": evicted[0], "evict.bytes": evicted[1]})
        future.set_result(page)
        return admit

    def fail(self, claims: dict[PageKey, Future[Page]], exc: BaseException) -> None:
        """Give up claims: their waiters get ``exc`` and nothing is cached."""
        with self._lock:
            for key, future in claims.items():
                if self._inflight.get(key) is future:
                    del self._inflight[key]
        for future in claims.values():
            future.set_exception(exc)

    def offer(self, page: Page) -> bool:
        """Admit a page nobody claimed (a remote sent more than was asked); False if it is
        resident or being fetched already."""
        with self._lock:
            if not self.admitting or page.key in self._pages or page.key in self._inflight:
                return False
            self._insert(page)
            evicted = self._evict_to_fit()
        if evicted[0]:
            self._counters.add_many({"evict.n": evicted[0], "evict.bytes": evicted[1]})
        return True

    # -- bookkeeping (callers hold the lock) -----------------------------------------------

    def _insert(self, page: Page) -> None:
        key = page.key
        page.atime = time.monotonic()
        old = self._pages.get(key)
        if old is not None:
            self._bytes -= old.nbytes
        self._pages[key] = page
        self._by_file.setdefault(key.file_id, set()).add(key)
        self._bytes += page.nbytes
        self.eviction.admit(key)

    def _remove(self, key: PageKey) -> Page:
        page = self._pages.pop(key)
        self._bytes -= page.nbytes
        keys = self._by_file[key.file_id]
        keys.discard(key)
        if not keys:
            del self._by_file[key.file_id]
        self.eviction.remove(key)
        return page

    def _evict_to_fit(self) -> tuple[int, int]:
        """Routine eviction: never touches a page whose store is pending."""
        count = nbytes = 0
        budget = self._budget
        if self._bytes <= budget:
            return count, nbytes
        for key in self.eviction.victims():
            page = self._pages[key]
            if page.store_pending:
                continue
            self._remove(key)
            count += 1
            nbytes += page.nbytes
            if self._bytes <= budget:
                break
        return count, nbytes

    # -- reclaim and invalidation ----------------------------------------------------------

    def victim_pages(self) -> list[tuple[PageCache, Page]]:
        """Resident pages in eviction order (coldest first), as reclaim walks them."""
        with self._lock:
            return [(self, self._pages[key]) for key in self.eviction.victims()]

    def release(
        self,
        page: Page,
        reason: Reason,
        level: PressureLevel,
        attempt: int = 1,
        may_block: bool = True,
        started: float | None = None,
    ) -> Outcome | None:
        """Ask the release policy about one resident page and drop it if released.

        Returns the outcome (counted on the VmScan line), or None if the page had left
        memory already. The policy runs without this cache's lock. ``started``: when the
        reclaim call asking began (``time.monotonic``; now if not given).
        """
        if self._pages.get(page.key) is not page:
            return None
        when = time.monotonic() if started is None else started
        request = ReleaseRequest(reason, level, attempt, self.stores, may_block, when)
        outcome = self.release_policy.maybe_release_page(page, request)
        self._counters.add(f"vmscan.{outcome.value}")
        if outcome.released:
            with self._lock:
                if self._pages.get(page.key) is page:
                    self._remove(page.key)
        return outcome

    def reclaim(
        self,
        nbytes: int,
        reason: Reason = Reason.RECLAIM,
        level: PressureLevel = PressureLevel.MODERATE,
        may_block: bool = True,
    ) -> int:
        """Release at least ``nbytes`` if possible, coldest first; return bytes freed."""
        return reclaim_pages(self.victim_pages(), nbytes, reason, level, may_block)[0]

    def invalidate(self, file_id: str | None, keep_version: str | None = None) -> int:
        """Drop a file's pages (all, or all but one version's), or every page when
        ``file_id`` is None. Fetches in flight for them are disowned: they finish for the
        readers already waiting, but are not admitted, and later readers fetch anew."""

        def doomed(key: PageKey) -> bool:
            return (file_id is None or key.file_id == file_id) and (
                keep_version is None or key.version != keep_version
            )

        with self._lock:
            if file_id is None:
                resident = list(self._pages)
            else:
                resident = [k for k in self._by_file.get(file_id, ()) if doomed(k)]
            for key in resident:
                self._remove(key)
            for key in [k for k in self._inflight if doomed(k)]:
                del self._inflight[key]
        return len(resident)

    def gauges(self) -> dict[str, int]:
        with self._lock:
            return {
                "pages.n": len(self._pages),
                "pages.bytes": self._bytes,
                "pages.limit": self.limit,
                "retrievals.mem": self._mem_hits,
                "retrievals.mbytes": self._mem_bytes,
            }
