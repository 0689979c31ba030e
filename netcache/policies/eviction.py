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

    def __init__(self) -> None:
        self._order: OrderedDict[Hashable, None] = OrderedDict()

    def admit(self, key: Hashable) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def touch(self, key: Hashable) -> None:
        # on every warm hit: one lookup, not a membership test and then a move (and no
        # context manager to build, as contextlib.suppress would)
        try:  # noqa: SIM105
            self._order.move_to_end(key)
        except KeyError:
            pass

    def remove(self, key: Hashable) -> None:
        self._order.pop(key, None)

    def victims(self) -> Iterator[Hashable]:
        return _walk(self._order)

    def __len__(self) -> int:
        return len(self._order)


def _walk(order: OrderedDict[Hashable, None], kept: int = 0) -> Iterator[Hashable]:
    """Keys of ``order`` from the front, skipping the first ``kept``, in small batches
    rather than a copy of the whole order (eviction usually needs one victim). A key the
    caller keeps is skipped by position; one it removes simply leaves the order."""
    while True:
        batch = list(islice(order, kept, kept + 32))
        if not batch:
            return
        for key in batch:
            yield key
            if key in order:
                kept += 1


class TwoQ(EvictionPolicy):
    """2Q (Johnson and Shasha, 1994): scan-resistant.

    A new page enters a FIFO *probation* queue. A page read again while there, or
    admitted again soon after it left (a *ghost* list remembers recently evicted keys),
    joins the *protected* LRU queue. Victims come from probation while it holds more than
    ``probation`` of the resident pages, then from protected, then the rest of probation,
    so one long sequential scan cycles through probation and leaves a working set that
    is read again in protected.
    """

    def __init__(self, probation: float = 0.25, ghosts: float = 1.0) -> None:
        if not 0 < probation < 1:
            raise ValueError(f"probation={probation!r} must be a fraction in (0, 1)")
        if ghosts < 0:
            raise ValueError(f"ghosts={ghosts!r} must be >= 0 (ghost keys per resident page)")
        self.probation = probation
        self.ghosts = ghosts
        self._probation: OrderedDict[Hashable, None] = OrderedDict()
        self._protected: OrderedDict[Hashable, None] = OrderedDict()
        self._ghost: OrderedDict[Hashable, None] = OrderedDict()

    def admit(self, key: Hashable) -> None:
        if key in self._probation or key in self._protected:
            self.touch(key)
        elif self._ghost.pop(key, 0) is None:  # back soon after it left: it is in use
            self._protected[key] = None
        else:
            self._probation[key] = None

    def touch(self, key: Hashable) -> None:
        if key in self._protected:
            self._protected.move_to_end(key)
        elif key in self._probation:
            del self._probation[key]
            self._protected[key] = None

    def remove(self, key: Hashable) -> None:
        if self._probation.pop(key, 0) is None:
            self._ghost[key] = None
            while len(self._ghost) > self.ghosts * len(self) + 1:
                self._ghost.popitem(last=False)
        else:
            self._protected.pop(key, None)

    def victims(self) -> Iterator[Hashable]:
        kept = 0
        while len(self._probation) > self.probation * len(self):
            key = next(islice(self._probation, kept, None), None)
            if key is None:
                break
            yield key
            if key in self._probation:
                kept += 1
        yield from _walk(self._protected)
        yield from _walk(self._probation, kept)

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)


EVICTION_POLICIES: dict[str, type[EvictionPolicy]] = {"lru": LRU, "2q": TwoQ}


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
