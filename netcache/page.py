"""Pages: fixed-size blocks of one version of one remote file, and their store state."""

from __future__ import annotations

import enum
import mmap
from collections.abc import Callable
from typing import NamedTuple

from netcache.buffers import PageBuffer, recycle


class PageKey(NamedTuple):
    """Names a page: the file (``FileCookie.file_id``), its version, and the block index."""

    file_id: str
    version: str
    index: int


class StoreState(enum.Enum):
    """Where a page stands in write-back; a page is in exactly one state at a time.

    ``NONE``: never queued (read from disk, memory-only cache), or given up (cancelled
    under pressure, failed, invalidated); ``PENDING``: queued and cancellable;
    ``STORING``: being written (by a worker, or a throttled reader); ``STORED``: on disk.
    """

    NONE = "none"
    PENDING = "pending"
    STORING = "storing"
    STORED = "stored"


class Page:
    """One resident block of bytes.

    ``data`` never changes after construction; it is normally a
    :func:`~netcache.buffers.page_buffer`, so dropping the page gives its memory back,
    or, when nothing else holds that buffer any more, lends it to a later page. Code that
    keeps a page's bytes beyond a call must keep the page or a copy: a view of ``data``
    is enough to stop the reuse, as it holds a reference to the buffer.
    ``state`` is written by the :class:`~netcache.writeback.WritebackQueue` under its
    lock, and once by the fetcher before a page read from the disk tier is published
    (``STORED``: it is on disk already); anyone may read it without a lock to take a
    first look, as ``fscache_maybe_release_page`` does.
    """

    __slots__ = ("__weakref__", "atime", "data", "key", "state")

    def __init__(self, key: PageKey, data: PageBuffer) -> None:
        self.key = key
        self.data = data
        self.state = StoreState.NONE
        #: Last use (``time.monotonic``), kept by the page cache so that reclaim can
        #: take the coldest pages first across several caches.
        self.atime = 0.0

    def __del__(self, recycle: Callable[[object], None] = recycle) -> None:
        # bound as a default: __del__ may run during interpreter shutdown, when module
        # globals are already gone
        recycle(self)

    @property
    def nbytes(self) -> int:
        return len(self.data)

    @property
    def store_pending(self) -> bool:
        """Whether a store is queued or running: such a page cannot simply be dropped."""
        return self.state is StoreState.PENDING or self.state is StoreState.STORING

    def __repr__(self) -> str:
        return f"Page({self.key.index}, {self.nbytes} bytes, {self.state.value})"


def join_pages(pages: list[Page], lo: int, hi: int) -> bytes:
    """Bytes ``[lo, hi)`` of the concatenation of ``pages`` (full pages but the last),
    with one copy."""
    first = pages[0].data
    if len(pages) == 1:
        # an mmap's (or bytes') slice is a bytes copy already: no view to make first
        if type(first) is mmap.mmap or type(first) is bytes:
            return first[lo:hi]
        return bytes(memoryview(first)[lo:hi])
    # whole pages go to join as they are: a view of each costs a fifth of the copy
    parts = [page.data for page in pages]
    if lo:
        parts[0] = memoryview(first)[lo:]
    tail = hi - len(first) * (len(pages) - 1)
    if tail != len(parts[-1]):
        parts[-1] = memoryview(parts[-1])[:tail]
    return b"".join(parts)
