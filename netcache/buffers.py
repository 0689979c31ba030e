"""Page buffers that give their memory back to the operating system when dropped.

A page's bytes live in their own private anonymous mmap: dropping the last reference
unmaps it, so resident memory falls at once. Page-sized ``bytes`` would land on glibc's
heap once its dynamic mmap threshold has risen past the page size, and freed heap memory
mostly stays in the process. ``trim_heap`` returns what transient buffers (network
reads) left on the heap, after a reclaim.

A few buffers of dropped pages are kept for the next pages (``recycle``): a fresh
mapping costs its page faults and zeroing (60-100 us per 128 KiB on the 2-core VM the
benchmarks run on), a reused one only the copy (~12 us). That is what a cache streaming
more than its ``memory_limit`` does all the time: each page admitted evicts one.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import mmap
import sys
import weakref
from collections.abc import Callable

# memoryview: a page read from disk, in place in a mapping of its file
PageBuffer = bytes | bytearray | mmap.mmap | memoryview

# MAP_POPULATE faults the whole page in with the mmap call, which is cheaper than one
# fault per 4 KiB on first write (about 20% faster fills here).
_FLAGS = mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0)


def empty_page_buffer(nbytes: int) -> mmap.mmap:
    """A zeroed, writable buffer of ``nbytes`` (> 0) for ``readinto``."""
    return mmap.mmap(-1, nbytes, flags=_FLAGS)


def page_buffer(data: bytes | bytearray | memoryview) -> mmap.mmap:
    """A copy of ``data`` in its own mapping: a recycled one of the same size if any."""
    recycled = _recycled.get(len(data))
    if recycled:
        try:
            buf = recycled.pop()
        except IndexError:  # another thread took the last one
            pass
        else:
            buf[:] = data
            return buf
    buf = empty_page_buffer(len(data))
    buf.write(data)
    buf.seek(0)
    return buf


#: At most this many bytes of dropped pages' buffers are kept for reuse, outside every
#: memory budget (a reclaim under memory pressure gives them back: ``drop_recycled``).
RECYCLE_BYTES = 2 << 20

#: Buffers kept, by size. A deque's ``append`` and ``pop`` are atomic, so ``recycle``
#: takes no lock: it runs in ``Page.__del__``, on whatever thread drops the last
#: reference to a page, possibly while that thread holds some lock of its own.
_recycled: dict[int, collections.deque[mmap.mmap]] = {}


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
    recycled = _recycled.get(len(buf))
    if recycled is None:
        recycled = _recycled.setdefault(len(buf), collections.deque())
    if len(recycled) * len(buf) < RECYCLE_BYTES:
        recycled.append(buf)


def recycled_bytes() -> int:
    """Bytes of dropped pages' buffers kept for reuse right now."""
    return sum(len(buf) for recycled in list(_recycled.values()) for buf in list(recycled))


def drop_recycled() -> None:
    """Give every kept buffer back to the operating system (under memory pressure)."""
    for recycled in list(_recycled.values()):
        recycled.clear()


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
