"""Reader: how one filesystem instance reads through its shared cache. Pins a version
of a file (which may ask the remote), plans many ranges of many files at once, reads
ahead, and prefetches whole files at the pace of the write-back.

Paths here are the target's (the adapter strips its own protocol first).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.callbacks import DEFAULT_CALLBACK, Callback

from netcache import peers
from netcache.buffers import PageFiller
from netcache.context import CacheContext
from netcache.cookie import FileCookie
from netcache.errors import FileChangedError
from netcache.firstlook import Looked, Span, first_look, first_looks, look_spans
from netcache.page import PageKey
from netcache.readahead import READAHEAD_CHUNK_BYTES
from netcache.wholefile import local_copy

#: A range about to be read: ``(start, end)``, None for the start or the end of the file.
Reading = tuple[int | None, int | None]
#: What an open or a whole-file read is about to read (for a first look: its first bytes).
WHOLE: tuple[Reading] = ((None, None),)
# Longest prefetch waits for the disk tier between chunks; a stalled disk slows a
# prefetch down, it never stops it.
_PREFETCH_STORE_WAIT = 10.0


class Reader:
    """Reads of one target through one shared cache context, with one instance's
    ``check_interval`` and ``offline`` settings.

    Thread-safe: it holds no mutable state; the context's parts lock what they guard.
    Methods whose names start with ``read``, ``pin``, ``cat`` or ``prefetch`` may ask the
    remote; ``known_version`` and ``*_resident`` never do.
    """

    def __init__(self, target: AbstractFileSystem, context: CacheContext,
                 check_interval: float | None, offline: bool) -> None:  # fmt: skip
        self.target = target
        self.context = context
        self.check_interval = check_interval
        self.offline = offline
        self.block_size = context.config.block_size
        #: whether fetches that cannot be pinned to a version are checked after the fact
        self.verify = check_interval is not None

    # -- versions ------------------------------------------------------------------------

    def pin_version(
        self,
        tpath: str,
        refresh: bool = False,
        reading: Sequence[Reading] = (),
        looked: Looked = None,
    ) -> FileCookie:
        """The version of ``tpath`` to read, asking the remote unless one was checked
        within ``check_interval``. ``reading``: the ranges about to be read, so that a
        first open may fetch their pages in the requests that learn the version;
        ``looked``: that first look, taken already (``cat_ranges`` takes many at once)."""
        context = self.context
        # with peers, bytes come from a page's home: a first look would fetch them from
        # the remote on every worker, so the version comes from info() alone
        sharing = peers.current() is not None
        spans = [] if sharing else look_spans(reading, self.block_size, context.fetcher.look_limit)
        offered: list[tuple[int, PageFiller]] = []

        def look(path: str) -> dict[str, Any]:
            if isinstance(looked, FileNotFoundError):
                raise looked
            found = looked or first_look(self.target, path, spans, self.block_size,
                                         context.retries.for_target(self.target),
                                         context.look_fell_back)  # fmt: skip
            if found is None:  # no ranged first look (fell back, or none for this target)
                return self.target.info(path)
            offered.extend(found[1])
            return found[0]

        cookie = context.cookies.cookie(
            self.target,
            tpath,
            self.check_interval,
            refresh,
            self.offline,
            first_look=look if spans or looked is not None else None,
        )
        # the cookie was made from those very answers: their bytes are its version's
        for start, answer in offered:
            context.fetcher.offer_pages(cookie, start, answer)
        if cookie.size is None:
            cookie = context.fetcher.load_whole(self.target, cookie)
            context.cookies.sized(cookie)
        return cookie

    def known_version(self, tpath: str) -> FileCookie | None:
        """The version of ``tpath`` checked within ``check_interval``, if its size is
        known; no I/O."""
        cookie = self.context.cookies.known(tpath, self.check_interval)
        return cookie if cookie is not None and cookie.size is not None else None

    def kind(self, tpath: str) -> str | None:
        """``"file"``, ``"directory"`` or None (missing), from the version kept."""
        try:
            self.context.cookies.cookie(
                self.target, tpath, self.check_interval, False, self.offline
            )
        except IsADirectoryError:
            return "directory"
        except FileNotFoundError:
            return None
        return "file"

    # -- pages ---------------------------------------------------------------------------

    def read_ahead(self, cookie: FileCookie, pages: range, request_pages: int | None = None) -> int:
        """Start fetching ``pages`` of one pinned file in the background, at most
        ``request_pages`` to a request (default: the largest requests read-ahead makes).
        Returns how many of ``pages``, from the first, are resident or on their way; the
        others were not started (too much read-ahead in flight, or memory pressure)."""
        request_bytes = None if request_pages is None else request_pages * self.block_size
        return self.context.readahead.start(self.target, cookie, pages, self.verify,
                                            request_bytes)  # fmt: skip

    def read_ahead_limit(self, cookie: FileCookie, page: int) -> int:
        """Bytes a sequential reader's window may grow to ahead of ``page``: what the
        remote's pipe was measured to take in flight, or 0 where the disk tier holds
        that page (its reads need no wider window than ``readahead``, and hints reaching
        further only compete with the reader's own reads). No I/O."""
        if self.context.page_cache.is_resident(cookie.file_id, cookie.version, page):
            return self.context.readahead.pipe_bytes()  # warm: the disk is not asked
        return 0 if self.on_disk(cookie, page) else self.context.readahead.pipe_bytes()

    def on_disk(self, cookie: FileCookie, page: int) -> bool:
        """Whether the disk tier holds page ``page`` of ``cookie``'s version, as far as
        its index in memory says (no I/O)."""
        backend = self.context.backend
        return backend is not None and backend.holds(PageKey(cookie.file_id, cookie.version, page))

    def read_pages(self, cookie: FileCookie, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of one pinned version of a file."""
        fetcher = self.context.fetcher
        # resident pages first, with no more calls than needed: the path of a warm read
        data = fetcher.read_resident(cookie, start, end)
        if data is None:
            return fetcher.read_ranges(self.target, [(cookie, start, end)], self.verify)[0]
        return data

    def cat_file(self, tpath: str, start: int | None, end: int | None) -> bytes:
        start, end = offset("start", start), offset("end", end)
        try:
            cookie = self.pin_version(tpath, reading=[(start, end)])
            return self.read_pages(cookie, *absolute_range(cookie.size or 0, start, end))
        except FileChangedError:  # changed between the version check and the fetch
            cookie = self.pin_version(tpath, refresh=True)
            return self.read_pages(cookie, *absolute_range(cookie.size or 0, start, end))

    def cat_file_resident(self, tpath: str, start: Any, end: Any) -> bytes | None:
        """``cat_file`` if it can be answered at once from memory, else None; no I/O."""
        cookie = self.known_version(tpath)
        if cookie is None:
            return None
        return self.context.fetcher.read_resident(
            cookie, *absolute_range(cookie.size or 0, start, end)
        )

    def prefetch(self, tpaths: list[str], callback: Callback = DEFAULT_CALLBACK) -> int:
        """Fetch every page of the files ``tpaths``; returns the bytes covered. With a disk
        tier, waits for write-back to keep up rather than let pages be dropped from
        memory unstored."""
        cookies = [self.pin_version(p, reading=WHOLE) for p in tpaths]
        total = sum(c.size or 0 for c in cookies)
        callback.set_size(total)
        # Chunks small enough for the write-back queue, and a wait for room before each,
        # so that no store is refused and no page is evicted unstored.
        writeback = self.context.writeback
        bs = self.block_size
        room = writeback.max_pending_bytes if writeback is not None else READAHEAD_CHUNK_BYTES
        step = max(1, min(READAHEAD_CHUNK_BYTES, room // 2) // bs) * bs
        for cookie in cookies:
            size = cookie.size or 0
            for lo in range(0, size, step):
                hi = min(lo + step, size)
                if writeback is not None:
                    writeback.wait_below(max(0, room - step), _PREFETCH_STORE_WAIT)
                self.read_pages(cookie, lo, hi)
                callback.relative_update(hi - lo)
        return total

    def local_copy(self, tpath: str) -> str:
        """The path of a complete local copy of ``tpath``'s current version (see
        :func:`netcache.wholefile.local_copy`)."""
        return local_copy(self, tpath)

    # -- many ranges at once ---------------------------------------------------------------

    def cat_ranges(self, tpaths: list[str], starts: list[int | None], ends: list[int | None],
                   on_error: str) -> list[Any]:  # fmt: skip
        """Many ranges at once: the missing pages of each file fetched together, several
        files read concurrently (on the context's file workers), and first looks at cold
        files taken in waves."""
        by_path: dict[str, list[int]] = {}
        for i, p in enumerate(tpaths):
            by_path.setdefault(p, []).append(i)
        if len(by_path) <= 1:
            return self._file_ranges(tpaths[0], starts, ends, on_error) if tpaths else []
        jobs: list[tuple[list[int], Any]] = []
        cold: dict[str, list[Span]] = {}  # files to take a first look at, in waves
        limit = self.context.fetcher.look_limit
        for p, indices in by_path.items():
            file_starts, file_ends = [starts[i] for i in indices], [ends[i] for i in indices]
            answers = self._resident_ranges(p, file_starts, file_ends)
            if (answers is None and peers.current() is None
                    and self.context.cookies.would_look(p, self.check_interval)):  # fmt: skip
                spans = look_spans(list(zip(file_starts, file_ends, strict=True)),
                                   self.block_size, limit)  # fmt: skip
                if spans:
                    cold[p] = spans
                    continue
            if answers is None:
                # A thread a file, as plain fsspec sends its requests at once. No
                # deadlock: a worker waits only for pages claimed by fetches under way.
                answers = self.context.file_workers.submit(
                    self._file_ranges, p, file_starts, file_ends, on_error
                )
            jobs.append((indices, answers))
        jobs += self._cold_jobs(cold, by_path, starts, ends, on_error)
        out: list[Any] = [None] * len(tpaths)
        for indices, answers in jobs:
            if not isinstance(answers, list):
                answers = answers.result()
            for i, answer in zip(indices, answers, strict=True):
                out[i] = answer
        return out

    def _cold_jobs(self, cold: dict[str, list[Span]], by_path: dict[str, list[int]],
                   starts: list[int | None], ends: list[int | None],
                   on_error: str) -> list[tuple[list[int], Any]]:  # fmt: skip
        """The first looks of many files at once, as plain fsspec's requests go out; a
        wave's files are read (on the file workers) while the next wave is looked at."""
        jobs: list[tuple[list[int], Any]] = []
        retries = self.context.retries.for_target(self.target)
        for wave in waves(cold, self.context.fetcher.look_limit):
            looked = first_looks(self.target, wave, self.block_size, retries,
                                 self.context.look_fell_back)  # fmt: skip
            for p in wave:
                indices = by_path[p]
                answer = looked[p]
                jobs.append((indices, self.context.file_workers.submit(
                    self._file_ranges, p, [starts[i] for i in indices],
                    [ends[i] for i in indices], on_error, answer, answer is not None,
                )))  # fmt: skip
        return jobs

    def _resident_ranges(
        self, tpath: str, starts: list[Any], ends: list[Any]
    ) -> list[bytes] | None:
        """The ranges of one file if a checked version and every page are in memory, else
        None: warm files are answered here, without a thread hop."""
        cookie = self.known_version(tpath)  # once for all the ranges
        if cookie is None:
            return None
        read_resident = self.context.fetcher.read_resident
        out = []
        for s, e in zip(starts, ends, strict=True):
            data = read_resident(cookie, *absolute_range(cookie.size or 0, s, e))
            if data is None:
                return None
            out.append(data)
        return out

    def _file_ranges(
        self,
        tpath: str,
        starts: list[Any],
        ends: list[Any],
        on_error: str,
        looked: Looked = None,
        look: bool = True,
    ) -> list[Any]:
        """Ranges of one file, its missing pages fetched together. ``looked``: the first
        look at the file, taken already; ``look``: whether one may be taken (not after
        one failed)."""
        try:
            # a first open fetches the pages of every range with the version
            reading = list(zip(starts, ends, strict=True)) if look else []
            cookie = self.pin_version(tpath, reading=reading, looked=looked)
        except Exception as exc:  # no version (a missing file): the answer of every range
            if on_error != "return":
                raise
            return [exc] * len(starts)
        try:
            ranges = [(cookie, *absolute_range(cookie.size or 0, s, e))
                      for s, e in zip(starts, ends, strict=True)]  # fmt: skip
            return self.context.fetcher.read_ranges(self.target, ranges, self.verify)
        except Exception:
            if on_error != "return":
                raise
        # A fetch failed: read one by one so each range gets its own answer.
        out: list[Any] = []
        for s, e in zip(starts, ends, strict=True):
            try:
                out.append(self.cat_file(tpath, s, e))
            except Exception as exc:
                out.append(exc)
        return out


def absolute_range(size: int, start: Any, end: Any) -> tuple[int, int]:
    """Python-slice semantics for ``start``/``end`` (None, negative from the end); any
    integer type (numpy's too, as plain fsspec takes them), never a bool."""
    start, end = offset("start", start), offset("end", end)
    lo = 0 if start is None else (max(0, size + start) if start < 0 else start)
    hi = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
    return lo, max(lo, hi)


def offset(name: str, value: Any) -> int | None:
    """``value`` as an int offset (or None); raises ``TypeError`` naming ``name``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be an int or None")
    return int(value)


def offsets(name: str, values: Any, n: int) -> list[int | None]:
    """``starts`` or ``ends`` of ``cat_ranges``: one for all (None or an integer), or one
    each (a list, tuple or array), as ints."""
    if values is None or not hasattr(values, "__iter__"):
        return [offset(name, values)] * n
    return [offset(name, value) for value in values]


def waves(spans: dict[str, list[Span]], limit: int) -> Iterator[dict[str, list[Span]]]:
    """``spans`` (path -> its first look's spans) in waves of at most ``limit`` bytes in
    all (``look_spans`` keeps each file's within it): a look's pages are offered, not
    claimed, so a wave must fit in memory until its files are read."""
    wave: dict[str, list[Span]] = {}
    nbytes = 0
    for path, file_spans in spans.items():
        size = sum(hi - lo for lo, hi in file_spans)
        if wave and nbytes + size > limit:
            yield wave
            wave, nbytes = {}, 0
        wave[path] = file_spans
        nbytes += size
    if wave:
        yield wave
