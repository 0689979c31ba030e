"""Readahead: per open file, detects sequential reading and says which pages to fetch
ahead, in a window that grows while the reading stays sequential, as Linux's
``mm/readahead.c`` grows its own: it starts at four times the first read and grows
eightfold while small (Linux: fourfold; a remote's round trip costs more than a disk's),
then twofold."""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

from netcache.cookie import FileCookie
from netcache.errors import ReadaheadFailed
from netcache.identity import describe_error
from netcache.page import Page, PageKey
from netcache.pipe import INITIAL_REQUESTS, MAX_REQUESTS, PipeGauge
from netcache.warnonce import WarnOnce

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from netcache.backends.base import Backend
    from netcache.pagecache import PageCache

#: The first window, in pages, at least (it is four times the first read).
INITIAL_PAGES = 4
#: How much a small window grows at each sequential read: the second read confirms a
#: sequential reader, and on an object store each read that waits costs a round trip,
#: so the window reaches the pipe's size in fewer of them (docs/measurements.md).
SMALL_GROWTH = 8
#: Bytes a read-ahead request holds at least, however small the window (as the first
#: look does): smaller requests cost more than they save.
MIN_REQUEST_BYTES = 1 << 20


class Readahead:
    """The read-ahead window of one open file.

    A read that starts where the previous one ended (or at offset 0 on the first read)
    is sequential: the window starts at four times that read (at least
    ``INITIAL_PAGES``) and grows ``SMALL_GROWTH``-fold while under a sixteenth of
    ``max_bytes``, then twofold, up to ``max_bytes``; any other read resets it, so random
    access fetches nothing ahead. ``advise`` returns the pages not yet asked for, once
    there are ``batch_bytes`` of them (or the rest of the file); ``request_pages`` says
    how many to ask for in each request (why these shapes: ``docs/measurements.md``).
    Not thread-safe: it belongs to one file object, which has one position.
    """

    __slots__ = ("_ahead", "_next", "_window", "batch_pages", "block_size", "last_page",
                 "max_pages", "min_request_pages", "random_reads")  # fmt: skip

    def __init__(self, block_size: int, max_bytes: int, size: int, batch_bytes: int = 0) -> None:
        self.block_size = block_size
        self.max_pages = max_bytes // block_size
        # Pages are asked for in batches of at least this many (short of EOF): a reader
        # moving 1 MiB at a time must not turn into a stream of 1 MiB requests.
        self.batch_pages = min(max(1, batch_bytes // block_size), max(1, self.max_pages // 2))
        self.last_page = (size - 1) // block_size
        self.min_request_pages = max(1, MIN_REQUEST_BYTES // block_size)
        self._next: int | None = None
        self._window = 0
        self._ahead = -1  # last page already asked for
        #: Reads so far that did not start where the one before ended.
        self.random_reads = 0

    def is_sequential(self, start: int) -> bool:
        """Whether a read from ``start`` would be sequential (nothing is recorded)."""
        return start == (0 if self._next is None else self._next)

    def advise(self, start: int, end: int, pipe_bytes: int = 0) -> range | None:
        """Record a read of ``[start, end)``; return pages to fetch ahead, if any. The
        window grows past ``max_bytes`` up to ``pipe_bytes``, what the remote's pipe
        takes in flight (:meth:`ReadaheadScheduler.pipe_bytes`)."""
        sequential = self.is_sequential(start)
        self._next = end
        self.random_reads += not sequential
        if not sequential or self.max_pages == 0:
            self._window = 0
            self._ahead = -1
            return None
        most = max(self.max_pages, pipe_bytes // self.block_size)
        if self._window == 0:
            grown = max(
                INITIAL_PAGES, 4 * ((end - 1) // self.block_size - start // self.block_size + 1)
            )
        else:
            grown = self._window * (SMALL_GROWTH if self._window < most // 16 else 2)
        self._window = min(grown, most)
        first = max((end - 1) // self.block_size + 1, self._ahead + 1)
        last = min((end - 1) // self.block_size + self._window, self.last_page)
        batch = min(self.batch_pages, self._window)
        if last < first or (last - first + 1 < batch and last < self.last_page):
            return None
        self._ahead = last
        return range(first, last + 1)

    def not_started(self, page: int) -> None:
        """Pages from ``page`` on, though advised, were not fetched: advise them again."""
        self._ahead = min(self._ahead, page - 1)

    @property
    def request_pages(self) -> int:
        """Pages per request for what ``advise`` returns: a quarter of the window (at
        least ``MIN_REQUEST_BYTES``). While the window grows, the pages a reader needs
        next then come in a request of their own instead of at the end of one as large
        as the steady state's."""
        return max(self.min_request_pages, self._window // 4)


#: The bytes each read-ahead request carries at most: larger requests go faster
#: (docs/measurements.md).
READAHEAD_CHUNK_BYTES = 8 << 20
#: Read-ahead bytes in flight at once, per cache: this, or twice what the pipe's
#: requests carry if more, and a quarter of its memory budget at most (an eighth of a
#: budget under ``SMALL_BUDGET``).
READAHEAD_MAX_INFLIGHT = 64 << 20
SMALL_BUDGET = 256 << 20

#: What fetches claimed pages for the scheduler: ``(target, claims, cookies, verify,
#: failure)``; meets every claim or fails those not met (with ``failure``) and raises.
FetchClaimed = Callable[..., Any]


def in_flight_limit(memory_limit: int, requests: int = INITIAL_REQUESTS) -> int:
    """Bytes of read-ahead in flight at once, at most, for a cache of ``memory_limit``
    whose pipe takes ``requests`` at once: twice what they carry (so that some wait, and
    the gauge can tell whether more would pay), bounded by the memory budget."""
    wanted = max(READAHEAD_MAX_INFLIGHT, 2 * requests * READAHEAD_CHUNK_BYTES)
    # small budgets are set to keep memory down: an eighth of them, as before the pipe
    return min(wanted, memory_limit // (4 if memory_limit >= SMALL_BUDGET else 8))


class ReadaheadScheduler:
    """Fetches pages ahead of sequential readers, on a pool of threads, within a bound
    of bytes in flight; tells the disk tier which of its pages come next.

    Requests go out in the order asked, at most ``pipe.limit`` at once (a
    :class:`~netcache.pipe.PipeGauge` grows it while more pay); the others wait in a
    queue, and each request that ends starts the next. Locking: one lock guards the pool's
    creation, the queue and the counts, held for list and integer operations only; the
    pool's threads start outside it (``submit`` starts them, after the lock is let go).
    Fetches go through the page cache's claims, so a page is fetched once whoever asks;
    readers waiting for a page this scheduler failed to fetch (or never started) get
    :class:`ReadaheadFailed` and fetch it themselves.
    """

    def __init__(self, page_cache: PageCache, block_size: int, backend: Backend | None,
                 fetch_claimed: FetchClaimed, warn: WarnOnce) -> None:  # fmt: skip
        self.page_cache = page_cache
        self.block_size = block_size
        self.backend = backend
        self.pipe = PipeGauge()
        self._fetch_claimed = fetch_claimed
        self._warn = warn
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._bytes = 0
        self._queue: deque[_Request] = deque()
        self._running = 0
        self._cut = False  # the last start let out fewer pages than asked (the bound)

    def pipe_bytes(self) -> int:
        """Bytes of read-ahead the cache keeps in flight at most now: how far ahead a
        sequential reader's window may grow."""
        return in_flight_limit(self.page_cache.limit, self.pipe.limit)

    def start(self, target: AbstractFileSystem, cookie: FileCookie, pages: range,
              verify: bool, request_bytes: int | None = None) -> int:  # fmt: skip
        """Start fetching ``pages`` of ``cookie`` in the background, in chunks of at most
        ``request_bytes`` (and ``READAHEAD_CHUNK_BYTES``) fetched concurrently; returns
        at once how many of ``pages``, from the first, are resident, on disk or on their
        way. The rest are not started: under critical memory pressure none is, and no
        more than the in-flight bound allows (the caller asks for them again later)."""
        if not self.page_cache.admitting:
            return 0
        # Resident pages are left out first: a warm reader must not ask the disk tier
        # about them (a large share of a warm sequential read's time).
        keys = self.page_cache.absent_pages(cookie.file_id, cookie.version, pages)
        if not keys:
            return len(pages)
        if self.backend is not None:
            keys = self._hint_disk(keys)
        # Each request's answer sits in memory outside the budget, up to three times (the
        # client's chunks, their join, the page copies; HTTP and S3: chunks and pages), so
        # small budgets get smaller requests.
        request = min(request_bytes or READAHEAD_CHUNK_BYTES, READAHEAD_CHUNK_BYTES,
                      self.page_cache.limit // 32)  # fmt: skip
        step = max(1, request // self.block_size)
        handled = len(pages)
        bound = self.pipe_bytes()
        with self._lock:
            # In flight: network buffers and their page copies, outside the memory budget.
            # The nearest whole requests that fit go out (dropping all of them left a
            # reader whose window is larger than the bound fetching its pages itself,
            # a round trip a read).
            room = (bound - self._bytes) // self.block_size
            # readers asking for more than the bound lets out: the pipe is the limit
            self._cut = room < len(keys)
            if self._cut:
                room = max(0, room) // step * step
                handled = keys[room].index - pages.start
                keys = keys[:room]
            self._bytes += len(keys) * self.block_size
        if not keys:
            return handled
        nbytes = len(keys) * self.block_size
        items = list(self.page_cache.claim_missing(keys).items())
        self._release(nbytes - len(items) * self.block_size)
        requests = [_Request(target, cookie, dict(items[i : i + step]), verify)
                    for i in range(0, len(items), step)]  # fmt: skip
        self._send(requests)
        return handled

    def take_queued(self, keys: Iterable[PageKey]) -> dict[PageKey, Future[Page]]:
        """The claims of those of ``keys`` that requests not yet sent hold, handed to the
        caller, who must meet or fail them: a reader's own pages go before read-ahead's
        (and a whole-file fetch's), never waiting behind them."""
        taken: dict[PageKey, Future[Page]] = {}
        with self._lock:
            if not self._queue:
                return taken
            for request in self._queue:
                for key in keys:
                    future = request.claimed.pop(key, None)
                    if future is not None:
                        taken[key] = future
            if taken:
                self._queue = deque(r for r in self._queue if r.claimed)
                self._bytes -= len(taken) * self.block_size
        return taken

    def _hint_disk(self, keys: list[PageKey]) -> list[PageKey]:
        """Tell the disk tier to start reading those of ``keys`` it holds; the others."""
        assert self.backend is not None
        # Pages on disk are loaded when needed, on the reader's thread (loading them on
        # read-ahead threads slowed a new process's sequential reads); the disk is only
        # told to start reading them. The hint waits while the kernel queues its reads,
        # so a read-ahead thread gives it.
        on_disk = [key for key in keys if self.backend.holds(key)]
        if not on_disk:
            return keys
        with contextlib.suppress(RuntimeError):  # shut down: no hint is needed
            self._pool_now().submit(self.backend.will_need, on_disk)
        held = set(on_disk)
        return [key for key in keys if key not in held]

    def _send(self, requests: list[_Request]) -> None:
        """Queue ``requests``; start as many queued ones as the pipe takes now."""
        with self._lock:
            self._queue.extend(requests)
            ready = []
            while self._queue and self._running < self.pipe.limit:
                ready.append(self._queue.popleft())
                self._running += 1
        for i, request in enumerate(ready):
            try:
                self._pool_now().submit(self._fetch, request)
            except RuntimeError as exc:  # the pool is shut down (interpreter exit)
                for unsent in ready[i:]:
                    self._not_started(unsent, f"read-ahead not started: {exc}", running=True)
                return

    def _not_started(self, request: _Request, why: str, running: bool) -> None:
        self.page_cache.fail(request.claimed, ReadaheadFailed(why))
        self._release(len(request.claimed) * self.block_size, running)

    def _pool_now(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                # threads for the requests, and one for the disk's hints
                self._pool = ThreadPoolExecutor(MAX_REQUESTS + 1, "netcache-readahead")
            return self._pool

    def _fetch(self, request: _Request) -> None:
        claimed = request.claimed
        try:
            self._fetch_claimed(request.target, claimed, dict.fromkeys(claimed, request.cookie),
                                request.verify, failure=ReadaheadFailed)  # fmt: skip
        except Exception as exc:  # counted where it failed (Retrvls: err); said once here
            self._warn(
                "readahead",
                "netcache: a read-ahead fetch failed (%s); its readers fetch the pages",
                describe_error(exc),
            )
        else:
            nbytes = len(claimed) * self.block_size
            if nbytes >= READAHEAD_CHUNK_BYTES // 2:  # small requests measure the ramp-up
                self.pipe.finished(nbytes, waiting=bool(self._queue) or self._cut)
        finally:
            self._release(len(claimed) * self.block_size, running=True)
            self._send([])

    def _release(self, nbytes: int, running: bool = False) -> None:
        with self._lock:
            self._bytes -= nbytes
            self._running -= running

    def shutdown(self) -> None:
        """Fail the requests not started (their readers fetch the pages), and wait for
        every fetch and hint under way; the next ``start`` makes new threads."""
        with self._lock:
            pool, self._pool = self._pool, None
            queued, self._queue = list(self._queue), deque()
        for request in queued:
            self._not_started(request, "read-ahead not started: the cache closed", running=False)
        if pool is not None:
            pool.shutdown(wait=True)


class _Request(NamedTuple):
    """One read-ahead request: claimed pages of one pinned file."""

    target: AbstractFileSystem
    cookie: FileCookie
    claimed: dict[PageKey, Future[Page]]
    verify: bool
