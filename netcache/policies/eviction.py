"""Eviction policies: the order in which resident pages leave the memory tier.

A policy only orders keys; the :class:`~netcache.pagecache.PageCache` decides what may
leave (never a page whose store is pending during routine eviction) and does the
removing. To write one, subclass :class:`EvictionPolicy` and implement its five methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from itertools import islice


class EvictionPolicy(ABC):
    """Keeps resident page keys in eviction order.

    Not thread-safe: the page cache calls every method under its own lock, so a policy
    needs no locking of its own and must not block.
    """

    @abstractmethod
    def admit(self, key: Hashable) -> None:
        """A page became resident."""

    @abstractmethod
    def touch(self, key: Hashable) -> None:
        """A resident page was read."""

    @abstractmethod
    def remove(self, key: Hashable) -> None:
        """A page left memory (evicted, released, invalidated)."""

    @abstractmethod
    def victims(self) -> Iterator[Hashable]:
        """Resident keys, coldest first.

        The caller may remove the key it was last given before asking for the next one,
        and removes nothing else while iterating.
        """

    @abstractmethod
    def __len__(self) -> int: ...


class LRU(EvictionPolicy):
    """Least recently used first."""

    _BATCH = 32

    def __init__(self) -> None:
        self._order: OrderedDict[Hashable, None] = OrderedDict()

    def admit(self, key: Hashable) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def touch(self, key: Hashable) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def remove(self, key: Hashable) -> None:
        self._order.pop(key, None)

    def victims(self) -> Iterator[Hashable]:
        # Walk in small batches rather than copying the whole order: eviction usually
        # needs one victim, and keys the caller keeps are skipped by position.
        kept = 0
        while True:
            batch = list(islice(self._order, kept, kept + self._BATCH))
            if not batch:
                return
            for key in batch:
                yield key
                if key in self._order:
                    kept += 1

    def __len__(self) -> int:
        return len(self._order)


EVICTION_POLICIES: dict[str, type[EvictionPolicy]] = {"lru": LRU}


def make_eviction_policy(spec: str | EvictionPolicy) -> EvictionPolicy:
    """An eviction policy from its name or an instance; raises naming ``eviction``."""
    if isinstance(spec, EvictionPolicy):
        return spec
    if isinstance(spec, str) and spec in EVICTION_POLICIES:
        return EVICTION_POLICIES[spec]()
    raise ValueError(
        f"eviction={spec!r} is not an eviction policy; use one of "
        f"{sorted(EVICTION_POLICIES)} or an EvictionPolicy instance"
    )
