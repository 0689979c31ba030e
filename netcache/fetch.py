"""PageFetcher: byte ranges of pinned files, assembled from pages, fetching what is
missing from the disk tier or the remote."""

from __future__ import annotations

import contextlib
import mmap
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from fsspec import AbstractFileSystem

from netcache.answers import Pin
from netcache.backends.base import Backend
from netcache.buffers import PageFiller, page_buffer
from netcache.cookie import FileCookie, strong_etag, version_token
from netcache.errors import CorruptPageError, FileChangedError, ReadaheadFailed, ShortReadError
from netcache.firstlook import FIRST_LOOK_BYTES
from netcache.http import get_ranges as get_http_ranges
from netcache.http import if_match_headers, is_http, streams_pages
from netcache.identity import describe_error, redact_url
from netcache.page import Page, PageKey, StoreState, page_keys
from netcache.pagecache import PageCache
from netcache.retry import Retries
from netcache.s3 import get_ranges as get_s3_ranges
from netcache.s3 import is_s3
from netcache.stats import Counters
from netcache.warnonce import WarnOnce
from netcache.writeback import WritebackQueue

Range = tuple[FileCookie, int, int]

#: Threads that fetch ahead of sequential readers, and the bytes each request carries.
#: Larger requests go faster (over HTTP on loopback, 4 MiB requests reach about twice
#: the rate of 1 MiB ones at 20 ms latency), and fewer threads contend less for 2 cores:
#: 4 threads of 8 MiB streamed a cold file at 0 ms 20% faster than 8 of 4 MiB, and as
#: fast at 20 ms (the 32 MiB default window is in flight either way).
READAHEAD_WORKERS = 4
READAHEAD_CHUNK_BYTES = 8 << 20
#: Pages one read gathers at once at most (512 MiB of 128 KiB pages); a larger read is
#: gathered and assembled in parts.
GATHER_PAGES = 4096
#: Read-ahead bytes in flight at once, per cache, at most (and an eighth of its memory
#: budget at most).
READAHEAD_MAX_INFLIGHT = 64 << 20


class PageFetcher:
    """Serves ``[start, end)`` of a :class:`FileCookie` from pages.

    Order of search: memory; a fetch already under way (waited for, never repeated);
    the disk tier; the remote, where adjacent missing pages of one request go out as one
    ranged request. Pages from the remote are admitted and handed to write-back; pages
    from disk are admitted only. A remote error reaches the caller unchanged and caches
    nothing; a disk error is a miss, counted and logged once.

    The remote read is pinned to the cookie's version: fsspec's HTTP filesystem sends
    ``If-Match`` with the ETag, s3fs ``IfMatch`` (a changed file answers 412, raised as
    :class:`FileChangedError`); others have their version checked again after the
    fetch, unless the caller says files never change (``verify=False``). HTTP and S3
    answers are copied into pages as they arrive (:mod:`netcache.http`,
    :mod:`netcache.s3`); other targets' answers come whole, and are then cut into pages.

    Thread-safe with no lock of its own: the page cache's claims make each page's fetch
    single-flight, and a caller first does its own fetches, then waits for others', so no
    caller ever waits on work queued behind it.
    """

    def __init__(
        self,
        page_cache: PageCache,
        block_size: int,
        counters: Counters,
        warn: WarnOnce,
        retries: Retries,
        backend: Backend | None = None,
        writeback: WritebackQueue | None = None,
    ) -> None:
        self.page_cache = page_cache
        self.retries = retries
        self.block_size = block_size
        self.backend = backend
        self.writeback = writeback
        self._counters = counters
        self._warn = warn
        self._pool: ThreadPoolExecutor | None = None
        self._ra_lock = threading.Lock()  # guards the pool's creation and the byte count
        self._ra_bytes = 0

    # -- public ----------------------------------------------------------------------------

    def read_resident(self, cookie: FileCookie, start: int, end: int) -> bytes | None:
        """The bytes if every page is resident, else None: no I/O and no waiting, so an
        event loop may call it."""
        assert cookie.size is not None, "size must be known before reading pages"
        start, end = max(0, start), min(end, cookie.size)
        if start >= end:
            return b""
        bs = self.block_size
        first = start // bs
        pages = self.page_cache.lookup_resident(cookie.file_id, cookie.version, first,
                                                (end - 1) // bs)  # fmt: skip
        if pages is None:
            return None
        return _join(pages, start - first * bs, end - first * bs)

    def read_ranges(
        self, target: AbstractFileSystem, ranges: Sequence[Range], verify: bool
    ) -> list[bytes]:
        """The bytes of each range, clipped to the file's size. Pages are gathered at most
        ``GATHER_PAGES`` at a time: work in proportion to what a remote says a file's
        size is (a lie of 10**15 bytes, say) is never done ahead of its answers."""
        bs = self.block_size
        results: list[list[bytes]] = [[] for _ in ranges]
        batch: list[tuple[int, FileCookie, int, int]] = []
        count = 0
        for i, (cookie, start, end) in enumerate(ranges):
            assert cookie.size is not None, "size must be known before reading pages"
            lo, end = max(0, start), min(end, cookie.size)
            while lo < end:
                hi = min(end, (lo // bs + GATHER_PAGES - count) * bs)
                batch.append((i, cookie, lo, hi))
                count += (hi - 1) // bs - lo // bs + 1
                lo = hi
                if count >= GATHER_PAGES:
                    self._read_batch(target, batch, verify, results)
                    batch, count = [], 0
        if batch:
            self._read_batch(target, batch, verify, results)
        return [parts[0] if len(parts) == 1 else b"".join(parts) for parts in results]

    def _read_batch(self, target: AbstractFileSystem, batch: list[tuple[int, FileCookie, int, int]],
                    verify: bool, results: list[list[bytes]]) -> None:  # fmt: skip
        """Read ``batch`` (pieces of ranges: their number, cookie, start and end) and add
        each piece's bytes to its range's results."""
        bs = self.block_size
        wanted: dict[PageKey, FileCookie] = {}
        for _, cookie, start, end in batch:
            for index in range(start // bs, (end - 1) // bs + 1):
                wanted[PageKey(cookie.file_id, cookie.version, index)] = cookie
        pages = None
        for _ in range(3):
            pages = self._gather(target, wanted, verify)
            if pages is not None:
                break
        if pages is None:  # read-ahead kept failing under us: fetch without waiting for anyone
            pages = self._gather(target, wanted, verify, wait=False)
            assert pages is not None
        for i, cookie, start, end in batch:
            results[i].append(self._assemble(pages, cookie, start, end))

    def _gather(self, target: AbstractFileSystem, wanted: dict[PageKey, FileCookie],
                verify: bool, wait: bool = True) -> dict[PageKey, Page] | None:  # fmt: skip
        """Every wanted page, or None if a read-ahead we waited for failed (try again)."""
        claim = self.page_cache.lookup(wanted)
        pages = claim.hits
        if not wait and claim.waits:  # take over: fetch those pages ourselves too
            own = {key: Future[Page]() for key in claim.waits}
            pages.update(self._fetch_claimed(target, own, wanted, verify))  # not admitted
            claim.waits = {}
        if claim.claimed:
            pages.update(self._fetch_claimed(target, claim.claimed, wanted, verify))
        retry = False
        for key, future in claim.waits.items():
            try:
                pages[key] = future.result()
            except ReadaheadFailed:
                retry = True
        return None if retry else pages

    def readahead(self, target: AbstractFileSystem, cookie: FileCookie, pages: range,
                  verify: bool, request_bytes: int | None = None) -> int:  # fmt: skip
        """Start fetching ``pages`` of ``cookie`` in the background, in chunks of at most
        ``request_bytes`` (and ``READAHEAD_CHUNK_BYTES``) fetched concurrently; returns
        at once how many of ``pages``, from the first, are resident, on disk or on their
        way. The rest are not started: under critical memory pressure none is, and no
        more than the in-flight bound allows (the caller asks for them again later)."""
        if not self.page_cache.admitting:
            return 0
        # Resident pages are left out first: a warm reader must not ask the disk tier
        # about them (that was half the time of a warm sequential read).
        keys = self.page_cache.absent(page_keys(cookie.file_id, cookie.version, pages))
        if not keys:
            return len(pages)
        if self.backend is not None:
            # Pages on disk are loaded when needed, on the reader's thread (loading them
            # on read-ahead threads halved a new process's sequential rate); the disk is
            # only told to start reading them. The hint waits about 1 ms per segment
            # while the kernel queues its reads, so a read-ahead thread gives it.
            on_disk = [key for key in keys if self.backend.holds(key)]
            if on_disk:
                with contextlib.suppress(RuntimeError):  # shut down: no hint is needed
                    self._readahead_pool().submit(self.backend.will_need, on_disk)
                held = set(on_disk)
                keys = [key for key in keys if key not in held]
        # Each request's answer sits in memory outside the budget, up to three times (the
        # client's chunks, their join, the page copies; HTTP and S3: chunks and pages), so
        # small budgets get smaller requests.
        request = min(request_bytes or READAHEAD_CHUNK_BYTES, READAHEAD_CHUNK_BYTES,
                      self.page_cache.limit // 32)  # fmt: skip
        step = max(1, request // self.block_size)
        handled = len(pages)
        with self._ra_lock:
            # In flight: network buffers and their page copies, outside the memory budget.
            # The nearest whole requests that fit go out (dropping all of them left a
            # reader whose window is larger than the bound fetching its pages itself,
            # a round trip a read: 5x slower at 20 ms with a 128 MiB window).
            room = (self.in_flight_limit - self._ra_bytes) // self.block_size
            if room < len(keys):
                room = max(0, room) // step * step
                handled = keys[room].index - pages.start
                keys = keys[:room]
            self._ra_bytes += len(keys) * self.block_size
        if not keys:
            return handled
        nbytes = len(keys) * self.block_size
        pool = self._readahead_pool()
        claimed = self.page_cache.claim_missing(keys)
        items = list(claimed.items())
        for i in range(0, len(items), step):
            chunk = dict(items[i : i + step])
            try:
                pool.submit(self._readahead_chunk, target, cookie, chunk, verify)
            except RuntimeError as exc:  # the pool is shut down (interpreter exit)
                self.page_cache.fail(chunk, ReadaheadFailed(f"read-ahead not started: {exc}"))
                self._release_ra(len(chunk) * self.block_size)
        self._release_ra(nbytes - len(items) * self.block_size)
        return handled

    def _readahead_pool(self) -> ThreadPoolExecutor:
        with self._ra_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(READAHEAD_WORKERS, "netcache-readahead")
            return self._pool

    def _readahead_chunk(self, target: AbstractFileSystem, cookie: FileCookie,
                         claimed: dict[PageKey, Future[Page]], verify: bool) -> None:  # fmt: skip
        try:
            self._fetch_claimed(target, claimed, dict.fromkeys(claimed, cookie), verify,
                                failure=ReadaheadFailed)  # fmt: skip
        except Exception as exc:  # counted where it failed (Retrvls: err); said once here
            self._warn(
                "readahead",
                "netcache: a read-ahead fetch failed (%s); its readers fetch the pages",
                describe_error(exc),
            )
        finally:
            self._release_ra(len(claimed) * self.block_size)

    def _release_ra(self, nbytes: int) -> None:
        with self._ra_lock:
            self._ra_bytes -= nbytes

    @property
    def in_flight_limit(self) -> int:
        """Bytes of read-ahead in flight at once, at most."""
        return min(READAHEAD_MAX_INFLIGHT, self.page_cache.limit // 8)

    @property
    def look_limit(self) -> int:
        """Bytes a first look may fetch: its pages are offered, not claimed, so they may be
        evicted before they are read; as much as read-ahead keeps in flight at most, but
        always a file's first bytes."""
        return max(FIRST_LOOK_BYTES, self.in_flight_limit)

    def load_whole(self, target: AbstractFileSystem, cookie: FileCookie) -> FileCookie:
        """Read a file whose size the remote does not report, once, into pages."""
        data = self.retries.for_target(target).call(lambda: target.cat_file(cookie.path))
        cookie = cookie.with_size(len(data))
        self.offer_pages(cookie, 0, PageFiller.whole(self.block_size, data))
        return cookie

    def offer_pages(self, cookie: FileCookie, start: int, answer: PageFiller) -> None:
        """Admit the pages of ``answer`` (bytes of ``cookie`` from ``start``, a page
        boundary, that no reader claimed: a whole-file answer, a first look) that it
        holds whole, or up to the end of the file; the pages already resident or being
        fetched are left as they are. Counted as one request."""
        assert cookie.size is not None and start % self.block_size == 0
        self._counters.add_many({"retrievals.req": 1, "retrievals.rbytes": answer.received})
        buffers = answer.pages
        if start + answer.received < cookie.size:
            buffers = buffers[: answer.received // self.block_size]
        for page in self._pages(cookie, start, buffers):
            self._counters.add("retrievals.remote")
            if self.page_cache.offer(page):
                self._store(page)
        self._throttle()

    # -- internals -------------------------------------------------------------------------

    def _assemble(
        self, pages: dict[PageKey, Page], cookie: FileCookie, start: int, end: int
    ) -> bytes:
        if start >= end:
            return b""
        bs = self.block_size
        first = start // bs
        ordered = [pages[PageKey(cookie.file_id, cookie.version, i)]
                   for i in range(first, (end - 1) // bs + 1)]  # fmt: skip
        return _join(ordered, start - first * bs, end - first * bs)

    def _fetch_claimed(
        self,
        target: AbstractFileSystem,
        claimed: dict[PageKey, Future[Page]],
        wanted: dict[PageKey, FileCookie],
        verify: bool,
        failure: type[OSError] | None = None,
    ) -> dict[PageKey, Page]:
        """Fetch every claimed page; on any failure, fail the claims not yet met (with
        the error itself, or wrapped in ``failure``) and raise. Claims that are not the
        page cache's current ones (private, or disowned) are met without admitting."""
        got: dict[PageKey, Page] = {}
        try:
            missing = self._from_disk(claimed, wanted, got)
            by_cookie: dict[FileCookie, list[int]] = {}
            for key in missing:
                by_cookie.setdefault(wanted[key], []).append(key.index)
            for cookie, indices in by_cookie.items():
                self._from_remote(target, cookie, sorted(indices), claimed, got, verify)
        except BaseException as exc:
            shared = exc
            if failure is not None:
                shared = failure(f"read-ahead failed: {describe_error(exc)}")
                shared.__cause__ = exc
            self.page_cache.fail({k: f for k, f in claimed.items() if k not in got}, shared)
            raise
        self._throttle()  # every claim met: no reader waits on this thread's stores
        return got

    def _from_disk(
        self,
        claimed: dict[PageKey, Future[Page]],
        wanted: dict[PageKey, FileCookie],
        got: dict[PageKey, Page],
    ) -> list[PageKey]:
        """Meet the claims the disk tier can (in one call, so that it reads runs of
        pages at once); return the keys it could not serve. A page of another length
        than its place in the file calls for is damaged, whatever its checksum says."""
        if self.backend is None:
            return list(claimed)
        try:
            loaded = self.backend.load_pages(list(claimed))
        except Exception as exc:  # the whole tier failing: every page is a miss
            loaded = dict.fromkeys(claimed, exc)
        missing = []
        bs = self.block_size
        for key, future in claimed.items():
            data = loaded.get(key)
            if data is None:
                missing.append(key)
                continue
            size = wanted[key].size
            assert size is not None
            if not isinstance(data, BaseException) and len(data) != min(bs, size - key.index * bs):
                data = CorruptPageError(
                    f"page {key.index}: {len(data)} bytes, not as the file's size says"
                )
                self._discard_from_disk(key)
            if isinstance(data, BaseException):
                self._counters.add("disk.rerr")
                self._warn(
                    "disk-read",
                    "netcache: a disk-tier page could not be used (%r); reading it from the remote",
                    data,
                )
                missing.append(key)
                continue
            # a backend's own buffer is taken as it is; a view may share memory that
            # someone can still write, so it is copied once
            page = Page(key, data if type(data) in (mmap.mmap, bytes) else page_buffer(data))
            page.state = StoreState.STORED
            self.page_cache.complete(page, future)
            got[key] = page
        if len(missing) < len(claimed):
            self._counters.add("retrievals.disk", len(claimed) - len(missing))
        return missing

    def _discard_from_disk(self, key: PageKey) -> None:
        """Clear a damaged page from the disk tier, so that it is stored again."""
        assert self.backend is not None
        try:
            self.backend.discard_page(key)
        except Exception as exc:
            self._counters.add("disk.werr")
            self._warn("discard", "netcache: removing a damaged page failed: %r", exc)

    def _from_remote(
        self,
        target: AbstractFileSystem,
        cookie: FileCookie,
        indices: list[int],
        claimed: dict[PageKey, Future[Page]],
        got: dict[PageKey, Page],
        verify: bool,
    ) -> None:
        assert cookie.size is not None
        bs = self.block_size
        runs: list[tuple[int, int]] = []  # first and last index of adjacent pages
        for index in indices:
            if runs and runs[-1][1] == index - 1:
                runs[-1] = (runs[-1][0], index)
            else:
                runs.append((index, index))
        starts = [first * bs for first, _ in runs]
        ends = [min((last + 1) * bs, cookie.size) for _, last in runs]
        answers = self._remote_ranges(target, cookie, starts, ends, verify)
        for start, end, answer in zip(starts, ends, answers, strict=True):
            if answer.received == end - start:
                pages = self._pages(cookie, start, answer.pages)
            else:
                pages = self._whole_file_answer(cookie, start, end, answer)
            for page in pages:
                self._counters.add("retrievals.remote")
                if self.page_cache.complete(page, claimed[page.key]):
                    self._store(page)
                elif self.writeback is not None and not self.page_cache.admitting:
                    self._counters.add("unstored.pressure")  # to its readers, not kept
                got[page.key] = page

    def _remote_ranges(
        self,
        target: AbstractFileSystem,
        cookie: FileCookie,
        starts: list[int],
        ends: list[int],
        verify: bool,
    ) -> list[PageFiller]:
        ranges = list(zip(starts, ends, strict=True))
        etag = strong_etag(cookie.info)
        pin = Pin.of_info(cookie.info, cookie.size)
        bs = self.block_size
        s3 = is_s3(target)
        pinned = etag is not None and (s3 or is_http(target))

        def request() -> list[PageFiller]:
            if pinned and s3:
                return [a for _, a in get_s3_ranges(target, cookie.path, ranges, bs, pin, etag)]
            # HTTP is pinned by a header whoever makes the request: fsspec's own
            # HTTPFileSystem (streamed here), or a subclass with its own requests
            options = {"headers": if_match_headers(target, etag)} if pinned else {}
            if streams_pages(target):
                return get_http_ranges(target, cookie.path, ranges, bs, pin, **options)
            blobs = _cat_ranges(target, cookie.path, starts, ends, **options)
            return [PageFiller.whole(bs, blob) for blob in blobs]

        try:  # a retry makes the same request: pinned to the same version
            answers = self.retries.for_target(target).call(request)
        except Exception as exc:
            self._counters.add_many({"retrievals.req": len(starts), "retrievals.err": 1})
            if getattr(exc, "status", None) == 412:
                # from None: the client's error holds the URL whole, secrets and all
                raise FileChangedError(
                    f"{redact_url(cookie.path)} changed while open (412 to If-Match)"
                ) from None
            raise
        nbytes = sum(answer.received for answer in answers)
        self._counters.add_many({"retrievals.req": len(starts), "retrievals.rbytes": nbytes})
        if not pinned and verify:
            self._check_version(target, cookie)
        return answers

    def _check_version(self, target: AbstractFileSystem, cookie: FileCookie) -> None:
        info = self.retries.for_target(target).call(lambda: target.info(cookie.path))
        if version_token(info) != cookie.token:
            self._counters.add("retrievals.err")
            raise FileChangedError(f"{redact_url(cookie.path)} changed while open")

    def _whole_file_answer(
        self, cookie: FileCookie, start: int, end: int, answer: PageFiller
    ) -> list[Page]:
        """A remote that ignores ranges sends the whole file: keep all of it as pages, and
        return those of ``[start, end)``."""
        if answer.received != cookie.size:
            self._counters.add("retrievals.err")
            raise ShortReadError(
                f"{redact_url(cookie.path)}: asked for bytes {start}-{end}, the remote sent "
                f"{answer.received}"
            )
        asked = []
        for page in self._pages(cookie, 0, answer.pages):
            if start <= page.key.index * self.block_size < end:
                asked.append(page)
            elif self.page_cache.offer(page):
                self._store(page)
        return asked

    def _pages(self, cookie: FileCookie, start: int, buffers: list[mmap.mmap]) -> list[Page]:
        """Pages of ``buffers``, the first one at ``start`` (a page boundary)."""
        first = start // self.block_size
        return [Page(PageKey(cookie.file_id, cookie.version, first + i), buf)
                for i, buf in enumerate(buffers)]  # fmt: skip

    def _store(self, page: Page) -> None:
        if self.writeback is not None:
            self.writeback.submit(page)

    def _throttle(self) -> None:
        """After a fetch's stores: slowed to the disk's pace if it falls behind."""
        if self.writeback is not None:
            self.writeback.throttle()


def _cat_ranges(
    target: AbstractFileSystem, path: str, starts: list[int], ends: list[int], **kwargs: Any
) -> list[bytes]:
    """Ranges of ``path`` through fsspec (several at once where the target can); the
    first failure is raised."""
    if len(starts) == 1:
        return [target.cat_file(path, start=starts[0], end=ends[0], **kwargs)]
    blobs = target.cat_ranges([path] * len(starts), starts, ends, on_error="return", **kwargs)
    for blob in blobs:
        if isinstance(blob, BaseException):
            raise blob
    return blobs  # type: ignore[no-any-return]


def _join(pages: list[Page], lo: int, hi: int) -> bytes:
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
