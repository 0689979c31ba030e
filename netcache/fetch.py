"""PageFetcher: byte ranges of pinned files, assembled from pages, fetching what is
missing from the disk tier or the remote."""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future

from fsspec import AbstractFileSystem

from netcache import peers
from netcache.backends.base import Backend
from netcache.buffers import PageFiller, page_buffer
from netcache.cookie import FileCookie
from netcache.errors import CorruptPageError, ReadaheadFailed, ShortReadError
from netcache.firstlook import FIRST_LOOK_BYTES
from netcache.identity import describe_error, redact_url
from netcache.page import Page, PageKey, StoreState, join_pages
from netcache.pagecache import PageCache
from netcache.readahead import in_flight_limit
from netcache.retry import Retries
from netcache.stats import Counters
from netcache.transport import RemoteRanges
from netcache.warnonce import WarnOnce
from netcache.writeback import WritebackQueue

Range = tuple[FileCookie, int, int]

#: Pages one read gathers at once at most (512 MiB of 128 KiB pages); a larger read is
#: gathered and assembled in parts.
GATHER_PAGES = 4096


class PageFetcher:
    """Serves ``[start, end)`` of a :class:`FileCookie` from pages.

    Order of search: memory; a fetch already under way (waited for, never repeated);
    the disk tier; the remote, where adjacent missing pages of one request go out as one
    ranged request. Pages from the remote are admitted and handed to write-back; pages
    from disk are admitted only. A remote error reaches the caller unchanged and caches
    nothing; a disk error is a miss, counted and logged once.

    The remote read is pinned to the cookie's version (:class:`RemoteRanges`): a
    changed file raises :class:`FileChangedError`.

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
        self.remote = RemoteRanges(block_size, retries)
        #: Hands over claims that read-ahead holds but has not sent (the context wires
        #: its scheduler's ``take_queued`` here); None: nothing to hand over.
        self.take_queued: Callable[[Iterable[PageKey]], dict[PageKey, Future[Page]]] | None = None
        #: The target's identity, for peers (:mod:`netcache.peers`): set by the context.
        self.target_id: str | None = None

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
        return join_pages(pages, start - first * bs, end - first * bs)

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
        pages = self.gather_pages(target, wanted, verify)
        for i, cookie, start, end in batch:
            results[i].append(self._assemble(pages, cookie, start, end))

    def gather_pages(self, target: AbstractFileSystem, wanted: dict[PageKey, FileCookie],
                     verify: bool) -> dict[PageKey, Page]:  # fmt: skip
        """Every wanted page (key -> the version it is of), from memory, disk, peers or
        the remote: read-ahead that failed under this caller is waited for three times at
        most, then its pages are fetched without waiting for anyone."""
        for _ in range(3):
            pages = self._gather(target, wanted, verify)
            if pages is not None:
                return pages
        pages = self._gather(target, wanted, verify, wait=False)
        assert pages is not None
        return pages

    def _gather(self, target: AbstractFileSystem, wanted: dict[PageKey, FileCookie],
                verify: bool, wait: bool = True) -> dict[PageKey, Page] | None:  # fmt: skip
        """Every wanted page, or None if a read-ahead we waited for failed (try again)."""
        claim = self.page_cache.lookup(wanted)
        pages = claim.hits
        if claim.waits and self.take_queued is not None:
            # pages claimed by read-ahead not yet sent: fetched now, by this reader
            for key, future in self.take_queued(claim.waits).items():
                del claim.waits[key]
                claim.claimed[key] = future
        if not wait and claim.waits:  # take over: fetch those pages ourselves too
            own = {key: Future[Page]() for key in claim.waits}
            pages.update(self.fetch_claimed(target, own, wanted, verify))  # not admitted
            claim.waits = {}
        if claim.claimed:
            pages.update(self.fetch_claimed(target, claim.claimed, wanted, verify))
        retry = False
        for key, future in claim.waits.items():
            try:
                pages[key] = future.result()
            except ReadaheadFailed:
                retry = True
        return None if retry else pages

    @property
    def look_limit(self) -> int:
        """Bytes a first look may fetch: its pages are offered, not claimed, so they may be
        evicted before they are read; as much as read-ahead keeps in flight at most, but
        always a file's first bytes."""
        return max(FIRST_LOOK_BYTES, in_flight_limit(self.page_cache.limit))

    def load_whole(self, target: AbstractFileSystem, cookie: FileCookie) -> FileCookie:
        """Read a file whose size the remote does not report, once, into pages."""
        data = self.remote.get_whole(target, cookie.path)
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
        return join_pages(ordered, start - first * bs, end - first * bs)

    def fetch_claimed(
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
            source = peers.current() if missing and self.target_id is not None else None
            if source is not None:
                away = set(source.elsewhere(missing))
                # this worker's own pages first: a peer asking for them then waits on the
                # remote only, not on this fetch's asks of peers (see netcache.peers)
                self._from_remote_pages(target, [k for k in missing if k not in away],
                                        claimed, wanted, got, verify)  # fmt: skip
                missing = self._from_peers(source, target, [k for k in missing if k in away],
                                           claimed, wanted, got)  # fmt: skip
            self._from_remote_pages(target, missing, claimed, wanted, got, verify)
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
        served = 0
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
            served += len(data)
        if len(missing) < len(claimed):
            self._counters.add_many({"retrievals.disk": len(claimed) - len(missing),
                                     "retrievals.dbytes": served})  # fmt: skip
        return missing

    def _discard_from_disk(self, key: PageKey) -> None:
        """Clear a damaged page from the disk tier, so that it is stored again."""
        assert self.backend is not None
        try:
            self.backend.discard_page(key)
        except Exception as exc:
            self._counters.add("disk.werr")
            self._warn("discard", "netcache: removing a damaged page failed: %r", exc)

    def _from_peers(self, source: peers.PeerSource, target: AbstractFileSystem,
                    missing: list[PageKey], claimed: dict[PageKey, Future[Page]],
                    wanted: dict[PageKey, FileCookie], got: dict[PageKey, Page],
                    ) -> list[PageKey]:  # fmt: skip
        """Ask peers for ``missing`` pages; the ones still missing (for the remote)."""
        assert self.target_id is not None
        answer = source.fetch(target, self.target_id, self.block_size, missing, wanted)
        nbytes = sum(len(data) for data in answer.pages.values())
        self._counters.add_many({"peers.asked": answer.asked, "peers.req": answer.requests,
                                 "peers.got": len(answer.pages),
                                 "peers.gbytes": nbytes, "peers.fallback": answer.fallback,
                                 "peers.err": answer.errors})  # fmt: skip
        for key, data in answer.pages.items():
            # the answer's own bytes become the page: no second copy. Kept in memory
            # only: the page's home keeps it on disk, one copy for the cluster
            page = Page(key, data if type(data) is bytes else page_buffer(data))
            self.page_cache.complete(page, claimed[key])
            got[key] = page
        return [key for key in missing if key not in answer.pages]

    def _from_remote_pages(self, target: AbstractFileSystem, keys: list[PageKey],
                           claimed: dict[PageKey, Future[Page]],
                           wanted: dict[PageKey, FileCookie], got: dict[PageKey, Page],
                           verify: bool) -> None:  # fmt: skip
        """Fetch ``keys`` from the remote, each file version's in one call."""
        by_cookie: dict[FileCookie, list[int]] = {}
        for key in keys:
            by_cookie.setdefault(wanted[key], []).append(key.index)
        for cookie, indices in by_cookie.items():
            self._from_remote(target, cookie, sorted(indices), claimed, got, verify)

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
        answers = self.remote_ranges(target, cookie, starts, ends, verify)
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

    def remote_ranges(self, target: AbstractFileSystem, cookie: FileCookie, starts: list[int],
                       ends: list[int], verify: bool) -> list[PageFiller]:  # fmt: skip
        """The remote's answers for ``[starts[i], ends[i])`` of ``cookie``'s version,
        counted (requests, bytes, errors), made concurrently; nothing is cached."""
        try:
            answers = self.remote.get_ranges(target, cookie, starts, ends, verify)
        except Exception:
            self._counters.add_many({"retrievals.req": len(starts), "retrievals.err": 1})
            raise
        nbytes = sum(answer.received for answer in answers)
        self._counters.add_many({"retrievals.req": len(starts), "retrievals.rbytes": nbytes})
        return answers

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
