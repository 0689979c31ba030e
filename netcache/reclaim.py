"""The reclaim walk shared by ``fs.reclaim`` and the memory-pressure monitor."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from netcache.page import Page
from netcache.policies.release import Outcome, PressureLevel, Reason


class ReleasesPages(Protocol):
    """What reclaim asks of a cache holding a victim (``PageCache`` is one): run the
    release policy on one page and drop it if released."""

    def release(self, page: Page, reason: Reason, level: PressureLevel, attempt: int,
                may_block: bool, started: float | None) -> Outcome | None: ...  # fmt: skip


def reclaim_pages(
    victims: Sequence[tuple[ReleasesPages, Page]],
    nbytes: int,
    reason: Reason,
    level: PressureLevel,
    may_block: bool = True,
) -> tuple[int, int]:
    """Walk ``victims`` (coldest first) until ``nbytes`` are freed; return bytes and
    pages freed.

    Each victim still resident goes through its cache's release policy once per walk. A
    second walk is made only when the first freed too little and the policy kept some
    pages (``kep``) that it may release when asked again (``attempt=2``), or found some
    being stored (``bsy``): the write-back stores the oldest pages first, in the order
    this walk looks at them, so those stores may have ended by then. Every answer is
    counted on the VmScan line, so a page busy in both walks counts ``bsy`` twice.

    Every policy of the walk shares one start time (``ReleaseRequest.started``): a
    policy that may wait bounds the whole call, not each page.
    """
    started = time.monotonic()
    freed_bytes = freed_pages = 0
    for attempt in (1, 2):
        again = False
        for cache, page in victims:
            if freed_bytes >= nbytes:
                return freed_bytes, freed_pages
            outcome = cache.release(page, reason, level, attempt, may_block, started)
            if outcome is None:
                continue
            if outcome.released:
                freed_bytes += page.nbytes
                freed_pages += 1
            elif outcome in (Outcome.KEP, Outcome.BSY):
                again = True
        if not again:
            break
    return freed_bytes, freed_pages
