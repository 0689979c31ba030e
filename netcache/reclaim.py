"""The reclaim walk shared by ``fs.reclaim`` and the memory-pressure monitor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from netcache.page import Page
from netcache.policies.release import Outcome, PressureLevel, Reason

if TYPE_CHECKING:
    from netcache.pagecache import PageCache


def reclaim_pages(
    victims: Sequence[tuple[PageCache, Page]],
    nbytes: int,
    reason: Reason,
    level: PressureLevel,
    may_block: bool = True,
) -> tuple[int, int]:
    """Walk ``victims`` (coldest first) until ``nbytes`` are freed; return bytes and
    pages freed.

    Each victim still resident goes through its cache's release policy once per walk. A
    second walk is made only when the first freed too little and the policy kept some
    pages (``kep``) that it may release when asked again (``attempt=2``).
    """
    freed_bytes = freed_pages = 0
    for attempt in (1, 2):
        kept = False
        for cache, page in victims:
            if freed_bytes >= nbytes:
                return freed_bytes, freed_pages
            outcome = cache.release(page, reason, level, attempt, may_block)
            if outcome is None:
                continue
            if outcome.released:
                freed_bytes += page.nbytes
                freed_pages += 1
            elif outcome is Outcome.KEP:
                kept = True
        if not kept:
            break
    return freed_bytes, freed_pages
