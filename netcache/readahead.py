"""Readahead: per open file, detects sequential reading and says which pages to fetch
ahead, in a window that doubles while the reading stays sequential."""

from __future__ import annotations

#: The first window, in pages, once a read continues where the last one ended.
INITIAL_PAGES = 4


class Readahead:
    """The read-ahead window of one open file.

    A read that starts where the previous one ended (or at offset 0 on the first read)
    is sequential: the window doubles, up to ``max_bytes``; any other read resets it, so
    random access fetches nothing ahead. ``advise`` returns the pages not yet asked for,
    once there are ``batch_bytes`` of them (or the rest of the file).
    Not thread-safe: it belongs to one file object, which has one position.
    """

    __slots__ = ("_ahead", "_next", "_window", "batch_pages", "block_size", "last_page",
                 "max_pages")  # fmt: skip

    def __init__(self, block_size: int, max_bytes: int, size: int, batch_bytes: int = 0) -> None:
        self.block_size = block_size
        self.max_pages = max_bytes // block_size
        # Pages are asked for in batches of at least this many (short of EOF): a reader
        # moving 1 MiB at a time must not turn into a stream of 1 MiB requests.
        self.batch_pages = min(max(1, batch_bytes // block_size), max(1, self.max_pages // 2))
        self.last_page = (size - 1) // block_size
        self._next: int | None = None
        self._window = 0
        self._ahead = -1  # last page already asked for

    def advise(self, start: int, end: int) -> range | None:
        """Record a read of ``[start, end)``; return pages to fetch ahead, if any."""
        sequential = start == (0 if self._next is None else self._next)
        self._next = end
        if not sequential or self.max_pages == 0:
            self._window = 0
            self._ahead = -1
            return None
        self._window = min(max(2 * self._window, INITIAL_PAGES), self.max_pages)
        first = max((end - 1) // self.block_size + 1, self._ahead + 1)
        last = min((end - 1) // self.block_size + self._window, self.last_page)
        batch = min(self.batch_pages, self._window)
        if last < first or (last - first + 1 < batch and last < self.last_page):
            return None
        self._ahead = last
        return range(first, last + 1)
