"""Page buffers that give their memory back to the operating system when dropped.

A page's bytes live in their own private anonymous mmap: dropping the last reference
unmaps it, so resident memory falls at once. Page-sized ``bytes`` would land on glibc's
heap once its dynamic mmap threshold has risen past the page size, and freed heap memory
mostly stays in the process. ``trim_heap`` returns what transient buffers (network
reads) left on the heap, after a reclaim.

A few buffers of dropped pages are kept for the next pages (``recycle``): a fresh
mapping costs its page faults and zeroing, several times what a reused one costs, the
copy alone (``docs/measurements.md``). That is what a cache streaming
more than its ``memory_limit`` does all the time: each page admitted evicts one.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import sys
import threading
import weakref
from collections.abc import Callable

from netcache.errors import ShortReadError

PageBuffer = bytes | bytearray | mmap.mmap | memoryview

# MAP_POPULATE faults the whole page in with the mmap call, which is cheaper than one
# fault per 4 KiB on first write.
_FLAGS = mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0)


def empty_page_buffer(nbytes: int) -> mmap.mmap:
    """A zeroed, writable buffer of ``nbytes`` (> 0) for ``readinto``."""
    return mmap.mmap(-1, nbytes, flags=_FLAGS)


def page_buffer(data: bytes | bytearray | memoryview) -> mmap.mmap:
    """A copy of ``data`` in its own mapping: a recycled one of the same size if any."""
    buf = blank_page_buffer(len(data))
    buf[:] = data
    return buf


def blank_page_buffer(nbytes: int) -> mmap.mmap:
    """A buffer of ``nbytes`` to overwrite whole: a recycled one if any, else a new one."""
    buf = _take_recycled(nbytes) if _kept.nbytes else None  # a stale peek costs nothing
    return buf if buf is not None else empty_page_buffer(nbytes)


class PageFiller:
    """An answer of ``nbytes`` that arrives in chunks of any size, copied as it comes into
    page buffers of ``page_size`` (the last one shorter): one copy from the network's
    chunks into pages, where joining the chunks first copies every byte twice, the first
    time into fresh memory.

    ``pages`` holds the buffers (whole once ``received``, the bytes fed so far, reaches
    ``nbytes``; the last one is partly filled before). A chunk beyond
    ``nbytes`` raises :class:`ShortReadError` (the remote sent other bytes than asked).

    Not thread-safe: one answer, fed by one thread or one coroutine.
    """

    __slots__ = ("_filled", "_page", "nbytes", "page_size", "pages", "received")

    def __init__(self, page_size: int, nbytes: int) -> None:
        self.page_size = page_size
        self.nbytes = nbytes
        self.received = 0
        self.pages: list[mmap.mmap] = []
        self._page: mmap.mmap | None = None
        self._filled = 0

    @classmethod
    def whole(cls, page_size: int, data: bytes | bytearray | memoryview) -> PageFiller:
        """``data``, all of it at once, in pages."""
        pages = cls(page_size, len(data))
        pages.feed(data)
        return pages

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        if self.received + len(chunk) > self.nbytes:
            raise ShortReadError(f"the remote sent more than the {self.nbytes} bytes asked")
        view = memoryview(chunk)
        self.received += len(view)
        while view:
            page = self._page
            if page is None:
                page = self._page = blank_page_buffer(
                    min(self.page_size, self.nbytes - len(self.pages) * self.page_size)
                )
                self.pages.append(page)
                self._filled = 0
            n = min(len(view), len(page) - self._filled)
            page[self._filled : self._filled + n] = view[:n]
            self._filled += n
            view = view[n:]
            if self._filled == len(page):
                self._page = None


#: At most this many bytes of dropped pages' buffers are kept for reuse, outside every
#: memory budget (a reclaim under memory pressure gives them back: ``drop_recycled``).
RECYCLE_BYTES = 2 << 20


class _Kept:
    """The buffers kept for reuse, by size, and their total.

    Locking: one lock, held only for a few list and integer operations. ``recycle`` runs
    in ``Page.__del__``, on whatever thread drops a page, which may be inside this very
    lock (a garbage collection can run anywhere), so it only tries the lock and lets the
    buffer go when it is taken; nothing ever waits for it but new page buffers
    (``page_buffer``, ``PageFiller``, on any thread or an event loop) and
    ``drop_recycled``, which hold it for microseconds.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_size: dict[int, list[mmap.mmap]] = {}
        self.nbytes = 0


_kept = _Kept()


def _take_recycled(nbytes: int) -> mmap.mmap | None:
    with _kept.lock:
        bufs = _kept.by_size.get(nbytes)
        if not bufs:
            return None
        buf = bufs.pop()
        if not bufs:
            del _kept.by_size[nbytes]  # sizes of files' last pages come and go
        _kept.nbytes -= nbytes
        return buf


def _refs_seen_by_recycle(owner: object) -> int:
    return sys.getrefcount(owner.data)  # type: ignore[attr-defined]


class _Owner:
    __slots__ = ("data",)

    def __init__(self, data: object) -> None:
        self.data = data


#: Reuse is only safe where ``sys.getrefcount`` counts every holder: CPython with its GIL
#: and strong references on every frame's stack (3.14 lets frames borrow references,
#: so a reader's view could go uncounted). Elsewhere buffers are simply unmapped.
_RECYCLING = (
    sys.implementation.name == "cpython"
    and sys.version_info < (3, 14)
    and getattr(sys, "_is_gil_enabled", lambda: True)()
)
#: What ``sys.getrefcount`` says, in ``recycle``'s calling shape, of a buffer that only
#: its dying page holds (the count depends on the interpreter's version).
_SOLE_REFS = _refs_seen_by_recycle(_Owner(mmap.mmap(-1, 1))) if _RECYCLING else 0


def recycle(owner: object) -> None:
    """Keep the buffer of ``owner`` (a page being destroyed) for a later page, if nothing
    else can still read it: a view of it, a backend keeping it, a reader mid-copy each
    hold a reference, and then it is left to be unmapped as usual. Nor may anything be
    able to bring ``owner`` back: ``__del__`` runs before weak references are cleared,
    so a weak reference taken now would return the page, and its bytes would be ours."""
    data = getattr(owner, "data", None)
    if not _RECYCLING or type(data) is not mmap.mmap or weakref.getweakrefcount(owner):
        return
    del data  # not counted below
    if _refs_seen_by_recycle(owner) != _SOLE_REFS:
        return
    buf = owner.data  # type: ignore[attr-defined]
    if not _kept.lock.acquire(blocking=False):
        return
    try:
        if _kept.nbytes + len(buf) <= RECYCLE_BYTES:
            _kept.by_size.setdefault(len(buf), []).append(buf)
            _kept.nbytes += len(buf)
    finally:
        _kept.lock.release()


def recycled_bytes() -> int:
    """Bytes of dropped pages' buffers kept for reuse right now."""
    return _kept.nbytes


def drop_recycled() -> None:
    """Give every kept buffer back to the operating system (under memory pressure)."""
    with _kept.lock:
        dropped, _kept.by_size, _kept.nbytes = _kept.by_size, {}, 0
    dropped.clear()  # unmapped here, outside the lock


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` from the symbols already in the process (no library search
    at import time), or None where there is none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def trim_heap() -> bool:
    """Give free heap memory back to the OS (glibc ``malloc_trim``); False elsewhere."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def reset_after_fork() -> None:
    """In a forked child: a new, empty pool (the parent's lock may have been held by
    another thread at the fork). Called by :mod:`netcache.process`."""
    global _kept
    _kept = _Kept()
