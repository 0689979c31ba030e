"""NetCacheFileSystem: an fsspec filesystem that reads any other one through pages."""

from __future__ import annotations

import contextlib
import io
import numbers
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import fsspec
from fsspec import AbstractFileSystem
from fsspec.callbacks import DEFAULT_CALLBACK, Callback
from fsspec.implementations.chained import ChainedFileSystem
from fsspec.spec import AbstractBufferedFile

from netcache.backends.base import Backend, DiskUsage
from netcache.buffers import PageFiller
from netcache.context import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_CHECK_INTERVAL,
    DEFAULT_DISK_LIMIT,
    DEFAULT_MEMORY_LIMIT,
    DEFAULT_RETRIES,
    DEFAULT_WRITEBACK_WORKERS,
    CacheConfig,
    CacheContext,
    registry,
)
from netcache.cookie import FileCookie
from netcache.errors import FileChangedError
from netcache.fetch import READAHEAD_CHUNK_BYTES
from netcache.firstlook import Looked, Span, first_look, first_looks, look_spans
from netcache.identity import redact_url, target_identity
from netcache.policies.eviction import EvictionPolicy
from netcache.policies.release import PressureLevel, Reason, ReleasePolicy
from netcache.pressure import MemoryPressureMonitor
from netcache.readahead import Readahead
from netcache.sizes import parse_size
from netcache.stats import StatsSnapshot

DEFAULT_READAHEAD = 32 << 20
# Longest prefetch waits for the disk tier between chunks; a stalled disk slows a
# prefetch down, it never stops it.
_PREFETCH_STORE_WAIT = 10.0

# Options fsspec itself may hand any filesystem; accepted and passed to the base class.
_FSSPEC_OPTIONS = frozenset(
    {"use_listings_cache", "listings_expiry_time", "max_paths", "asynchronous", "loop"}
)
# ``open`` arguments that pandas, dask and pyarrow pass; netcache serves every read from
# its own pages, so these buffering hints have nothing to change and are ignored.
_IGNORED_OPEN_ARGS = frozenset(
    {"block_size", "cache_type", "cache_options", "autocommit", "size", "fill_cache", "cache_file"}
)
#: A range about to be read: ``(start, end)``, None for the start or the end of the file.
Reading = tuple[int | None, int | None]
# What an open or a whole-file read is about to read (for a first look: its first bytes).
_WHOLE: tuple[Reading] = ((None, None),)


class NetCacheFileSystem(ChainedFileSystem):
    """Reads files of a target fsspec filesystem through a paged cache.

    Parameters
    ----------
    fs, target_protocol, target_options:
        The target: an instance, or a protocol and its options (exactly one of ``fs``
        and ``target_protocol``).
    cache_dir:
        Folder of the disk tier. None: ``$XDG_CACHE_HOME/netcache`` (else
        ``~/.cache/netcache``); False: memory only; or a :class:`~netcache.Backend`
        instance (e.g. ``MappingBackend(zict.File(path), block_size, limit)``), whose own
        limit then applies instead of ``disk_limit``.
    block_size:
        Page size in bytes (int or ``"128KiB"``), default 128 KiB.
    memory_limit:
        Byte budget of the memory tier, default 512 MiB (or 1/8 of RAM if less).
    disk_limit:
        Byte budget of the disk tier, default 10 GiB; least recently used pages are culled.
    eviction:
        ``"lru"``, ``"2q"`` (scan-resistant) or an
        :class:`~netcache.policies.EvictionPolicy`.
    release_policy:
        What reclaim does with pages whose store is pending; None is
        :class:`~netcache.policies.PressureGraded`.
    writeback_workers:
        Threads storing pages into the disk tier at most, default 2: one runs from the
        first store, and another starts each time the queue is full (the disk falls
        behind), as each takes CPU from readers.
    check_interval:
        Seconds between checks that a remote file is unchanged (default 60); 0 checks on
        every open and every ``cat``; None means remote files never change.
    readahead:
        Largest window fetched ahead of a sequential reader (default 32 MiB, in
        concurrent requests of up to 8 MiB); False or 0 turns read-ahead off. Random access
        never reads ahead. Read-ahead calls the target from a pool of threads.
    offline:
        For remotes that go away: when a version check cannot reach the remote, serve the
        version cached last (counted as ``Retrvls: stale``, logged once); only bytes that
        are not cached raise. Off by default: a failed check raises.
    memory_monitor:
        None: register with the process-wide :class:`~netcache.MemoryPressureMonitor`;
        False: none; or a monitor of your own (its limit, thresholds, probe).
    retries:
        Times a request is made again after a transient error (a 5xx answer, a reset, a
        timeout), with bounded exponential backoff and jitter, on every path (opens,
        reads, ``cat_ranges``, read-ahead, first looks, version checks); default 3, as
        the AWS SDKs. 4xx answers are raised at once, and a target that retries for
        itself (s3fs) is not retried again on top. Counted as ``Retrvls: retry``.
    trusted_group:
        None (default): the cache folder, and everything in it, must belong to this user
        and be writable by no one else, or construction raises
        :class:`~netcache.errors.UntrustedFolderError` (as ssh refuses a ``~/.ssh`` that
        others can write). A group name or id: a folder shared on purpose, which every
        member of that group may write. Every member is then trusted with the bytes this
        cache serves: any of them can plant pages that all the others read.

    All instances in a process naming the same ``cache_dir`` and target share one cache
    (fsspec makes an instance per thread); they must agree on every setting above, or the
    later one raises ``ValueError``. Thread-safe: instances hold no mutable state of their
    own; the shared context's parts each lock what they guard.
    """

    protocol = "netcache"
    _strip_tokenize_options = ("fo",)

    def __init__(
        self,
        fs: AbstractFileSystem | None = None,
        target_protocol: str | None = None,
        target_options: dict[str, Any] | None = None,
        cache_dir: str | os.PathLike[str] | Backend | bool | None = None,
        block_size: int | str = DEFAULT_BLOCK_SIZE,
        memory_limit: int | str = DEFAULT_MEMORY_LIMIT,
        disk_limit: int | str = DEFAULT_DISK_LIMIT,
        eviction: str | EvictionPolicy = "lru",
        release_policy: ReleasePolicy | None = None,
        writeback_workers: int = DEFAULT_WRITEBACK_WORKERS,
        check_interval: float | None = DEFAULT_CHECK_INTERVAL,
        memory_monitor: MemoryPressureMonitor | bool | None = None,
        trusted_group: str | int | None = None,
        retries: int = DEFAULT_RETRIES,
        readahead: int | str | bool = DEFAULT_READAHEAD,
        offline: bool = False,
        fo: str | None = None,
        **storage_options: Any,
    ) -> None:
        unknown = set(storage_options) - _FSSPEC_OPTIONS
        if unknown:
            raise TypeError(
                f"NetCacheFileSystem got unexpected argument(s) {sorted(unknown)}; target "
                "options go in target_options={...} (or under the target protocol's name "
                "when chaining)"
            )
        super().__init__(**storage_options)
        self._target = _make_target(fs, target_protocol, target_options)
        self._target_forks = registry.forks
        self.config = CacheConfig.build(
            cache_dir,
            block_size,
            memory_limit,
            disk_limit,
            eviction,
            release_policy,
            writeback_workers,
            check_interval,
            memory_monitor,
            trusted_group,
            retries,
        )
        if readahead is True:
            readahead = DEFAULT_READAHEAD
        #: Largest read-ahead window of a sequentially read file, in bytes (0: off).
        self.readahead = 0 if readahead is False else parse_size(readahead, "readahead")
        if 0 < self.readahead < self.config.block_size:
            raise ValueError(f"readahead={readahead!r} must be False, 0, or at least one page "
                             f"(block_size={self.config.block_size})")  # fmt: skip
        if not isinstance(offline, bool):
            raise TypeError(f"offline={offline!r} must be True or False")
        #: Serve cached versions when the remote cannot be reached to check them.
        self.offline = offline
        self._target_id = target_identity(self.fs)
        self._forks = registry.forks
        self._context = registry.acquire(self.config, self._target_id)

    @property
    def fs(self) -> AbstractFileSystem:
        """The target filesystem; made anew in a forked child, as the cache context is (an
        async target's event loop and sessions belong to the parent)."""
        if self._target_forks != registry.forks:
            self._target = _made_again(self._target)
            self._target_forks = registry.forks
        return self._target

    @property
    def _verify(self) -> bool:
        """Whether fetches that cannot be pinned to a version are checked after the fact."""
        return self.config.check_interval is not None

    @property
    def context(self) -> CacheContext:
        """The process-wide shared cache (made anew in a forked child)."""
        if self._forks != registry.forks:
            self._context = registry.acquire(self.config, self._target_id)
            self._forks = registry.forks
        return self._context

    # -- paths ---------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = fsspec.utils.stringify_path(path)
        for prefix in ("netcache://", "netcache::"):
            if path.startswith(prefix):
                return path[len(prefix) :]
        return path

    def _target_path(self, path: str) -> str:
        return self.fs._strip_protocol(self._strip_protocol(path))

    def _cookie(
        self,
        path: str,
        refresh: bool = False,
        reading: Sequence[Reading] = (),
        looked: Looked = None,
    ) -> FileCookie:
        """The version of ``path`` to read. ``reading``: the ranges about to be read
        (``(start, end)``, ``None`` for the start or the end of the file), so that a first
        open may fetch their pages in the requests that learn the version; ``looked``:
        that first look, taken already (``cat_ranges`` takes many at once)."""
        context = self.context
        bs = self.config.block_size
        spans = look_spans(reading, bs, context.fetcher.look_limit)
        offered: list[tuple[int, PageFiller]] = []

        def look(tpath: str) -> dict[str, Any]:
            if isinstance(looked, FileNotFoundError):
                raise looked
            found = looked or first_look(
                self.fs, tpath, spans, bs, self.context.retries.for_target(self.fs)
            )
            if found is None:
                return self.fs.info(tpath)
            offered.extend(found[1])
            return found[0]

        cookie = context.cookies.cookie(
            self.fs,
            self._target_path(path),
            self.config.check_interval,
            refresh,
            self.offline,
            first_look=look if spans or looked is not None else None,
        )
        # the cookie was made from those very answers: their bytes are its version's
        for start, answer in offered:
            context.fetcher.offer_pages(cookie, start, answer)
        if cookie.size is None:
            cookie = context.fetcher.load_whole(self.fs, cookie)
            context.cookies.sized(cookie)
        return cookie

    # -- reading through pages ---------------------------------------------------------------

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "r" in mode and "+" not in mode:
            unknown = set(kwargs) - _IGNORED_OPEN_ARGS
            if unknown:
                raise TypeError(f"open() got unexpected argument(s) {sorted(unknown)}")
            return NetCacheFile(self, path, self._cookie(path, reading=_WHOLE))
        tpath = self._target_path(path)
        self.invalidate(tpath)
        return WriteThroughFile(self.fs.open(tpath, mode, **kwargs), lambda: self.invalidate(tpath))

    def read_ahead(self, cookie: FileCookie, pages: range, request_pages: int | None = None) -> int:
        """Start fetching ``pages`` of one pinned file in the background, at most
        ``request_pages`` to a request (default: the largest requests read-ahead makes).
        Returns how many of ``pages``, from the first, are resident or on their way; the
        others were not started (too much read-ahead in flight, or memory pressure)."""
        request_bytes = None if request_pages is None else request_pages * self.config.block_size
        return self.context.fetcher.readahead(self.fs, cookie, pages, self._verify, request_bytes)

    def read_pages(self, cookie: FileCookie, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of one pinned version of a file."""
        fetcher = self.context.fetcher
        # resident pages first, with no more calls than needed: the path of a warm read
        data = fetcher.read_resident(cookie, start, end)
        if data is None:
            return fetcher.read_ranges(self.fs, [(cookie, start, end)], self._verify)[0]
        return data

    def prefetch(self, paths: str | list[str], callback: Callback = DEFAULT_CALLBACK) -> int:
        """Fetch every page of ``paths`` (files, or folders: all files under them) into the
        cache ahead of a job; returns the bytes covered. Progress goes to ``callback``
        (an ``fsspec.callbacks.Callback``: ``TqdmCallback()`` shows a bar), in bytes.

        Pages already cached are not fetched again. With a disk tier every page lands on
        disk: prefetch waits for write-back to keep up rather than let pages be dropped
        from memory unstored. Without one, what fits in ``memory_limit`` stays."""
        files: list[str] = []
        for path in [paths] if isinstance(paths, str) else list(paths):
            files.extend(self.find(path) if self.isdir(path) else [path])
        cookies = [self._cookie(self._target_path(p), reading=_WHOLE) for p in files]
        total = sum(c.size or 0 for c in cookies)
        callback.set_size(total)
        # Chunks small enough for the write-back queue, and a wait for room before each,
        # so that no store is refused and no page is evicted unstored.
        writeback = self.context.writeback
        bs = self.config.block_size
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

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """The target's ``info``, answered from cached metadata within ``check_interval``
        for files; directories and missing paths are the target's answer."""
        tpath = self._target_path(path)
        try:
            return dict(self._cookie(tpath).info, name=tpath)
        except IsADirectoryError:
            return self.fs.info(tpath, **kwargs)

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        tpath = self._target_path(path)
        start, end = _offset("start", start), _offset("end", end)
        try:
            return self._cat(self._cookie(tpath, reading=[(start, end)]), start, end)
        except FileChangedError:  # changed between the version check and the fetch
            return self._cat(self._cookie(tpath, refresh=True), start, end)

    def cat_file_resident(
        self, path: str, start: int | None = None, end: int | None = None
    ) -> bytes | None:
        """``cat_file`` if it can be answered at once from memory (a version checked within
        ``check_interval`` and every page resident), else None. It does no I/O and never
        waits, which is what lets :class:`~netcache.AsyncNetCacheFileSystem` answer warm
        reads on the event loop."""
        cookie = self._resident_cookie(path)
        if cookie is None:
            return None
        return self.context.fetcher.read_resident(
            cookie, *_absolute_range(cookie.size or 0, start, end)
        )

    def _resident_cookie(self, path: str) -> FileCookie | None:
        """The version of ``path`` checked within ``check_interval``, if its size is known;
        no I/O."""
        cookie = self.context.cookies.known(self._target_path(path), self.config.check_interval)
        return cookie if cookie is not None and cookie.size is not None else None

    def _cat(self, cookie: FileCookie, start: int | None, end: int | None) -> bytes:
        lo, hi = _absolute_range(cookie.size or 0, start, end)
        return self.read_pages(cookie, lo, hi)

    def cat(
        self, path: Any, recursive: bool = False, on_error: str = "raise", **kwargs: Any
    ) -> Any:
        """fsspec's ``cat``; the files of a list are read at once (see ``cat_ranges``)."""
        if kwargs:  # ranges or options for each file: fsspec's way, a file at a time
            return super().cat(path, recursive=recursive, on_error=on_error, **kwargs)
        paths = self.expand_path(path, recursive=recursive)
        if (
            len(paths) == 1
            and not isinstance(path, list)
            and paths[0] == self._strip_protocol(path)
        ):
            return self.cat_file(paths[0])
        out: dict[str, Any] = {}
        for p, data in zip(paths, self.cat_ranges(paths, None, None), strict=True):
            if isinstance(data, Exception):
                if on_error == "raise":
                    raise data
                if on_error == "omit":
                    continue
            out[p] = data
        return out

    def cat_ranges(
        self,
        paths: list[str],
        starts: Any,
        ends: Any,
        max_gap: int | None = None,
        on_error: str = "return",
        **kwargs: Any,
    ) -> list[Any]:
        """Many ranges at once: the missing pages of each file fetched together, and
        several files read concurrently (``FILE_WORKERS`` at a time)."""
        if not isinstance(paths, list):
            raise TypeError(f"paths must be a list, not {type(paths).__name__}")
        starts, ends = _offsets("starts", starts, len(paths)), _offsets("ends", ends, len(paths))
        if not len(paths) == len(starts) == len(ends):
            raise ValueError("paths, starts and ends must have the same length")
        by_path: dict[str, list[int]] = {}
        for i, p in enumerate(paths):
            by_path.setdefault(p, []).append(i)
        if len(by_path) <= 1:
            return self._file_ranges(paths[0], starts, ends, on_error) if paths else []
        out: list[Any] = [None] * len(paths)
        jobs = []
        workers = self.context.file_workers
        bs, limit = self.config.block_size, self.context.fetcher.look_limit
        cold: dict[str, list[Span]] = {}  # files to take a first look at, in waves
        for p, indices in by_path.items():
            file_starts, file_ends = [starts[i] for i in indices], [ends[i] for i in indices]
            answers = self._resident_ranges(p, file_starts, file_ends)
            if answers is None and self.context.cookies.would_look(
                self._target_path(p), self.config.check_interval
            ):
                spans = look_spans(list(zip(file_starts, file_ends, strict=True)), bs, limit)
                if spans:
                    cold[p] = spans
                    continue
            if answers is None:
                # A thread a file, as plain fsspec sends its requests at once. No
                # deadlock: a worker waits only for pages claimed by fetches under way.
                answers = workers.submit(self._file_ranges, p, file_starts, file_ends, on_error)
            jobs.append((indices, answers))
        for wave in _waves(cold, limit):
            # the first looks of many files at once, as plain fsspec's requests go out; a
            # wave's files are read (on the workers) while the next wave is looked at
            looked = first_looks(self.fs, {self._target_path(p): wave[p] for p in wave}, bs,
                                 self.context.retries.for_target(self.fs))  # fmt: skip
            for p in wave:
                indices = by_path[p]
                answer = looked[self._target_path(p)]
                answers = workers.submit(self._file_ranges, p, [starts[i] for i in indices],
                                         [ends[i] for i in indices], on_error, answer,
                                         answer is not None)  # fmt: skip
                jobs.append((indices, answers))
        for indices, answers in jobs:
            if not isinstance(answers, list):
                answers = answers.result()
            for i, answer in zip(indices, answers, strict=True):
                out[i] = answer
        return out

    def _resident_ranges(self, path: str, starts: list[Any], ends: list[Any]) -> list[bytes] | None:
        """The ranges of one file if a checked version and every page are in memory, else
        None: warm files are answered here, without a thread hop."""
        cookie = self._resident_cookie(path)  # once for all the ranges
        if cookie is None:
            return None
        read_resident = self.context.fetcher.read_resident
        out = []
        for s, e in zip(starts, ends, strict=True):
            data = read_resident(cookie, *_absolute_range(cookie.size or 0, s, e))
            if data is None:
                return None
            out.append(data)
        return out

    def _file_ranges(
        self,
        path: str,
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
            cookie = self._cookie(self._target_path(path), reading=reading, looked=looked)
        except Exception as exc:  # no version (a missing file): the answer of every range
            if on_error != "return":
                raise
            return [exc] * len(starts)
        try:
            ranges = [(cookie, *_absolute_range(cookie.size or 0, s, e))
                      for s, e in zip(starts, ends, strict=True)]  # fmt: skip
            return self.context.fetcher.read_ranges(self.fs, ranges, self._verify)
        except Exception:
            if on_error != "return":
                raise
        # A fetch failed: read one by one so each range gets its own answer.
        out: list[Any] = []
        for s, e in zip(starts, ends, strict=True):
            try:
                out.append(self.cat_file(path, s, e))
            except Exception as exc:
                out.append(exc)
        return out

    # -- writes go to the target and invalidate --------------------------------------------

    @contextlib.contextmanager
    def _invalidating(self, *tpaths: str) -> Iterator[None]:
        """Around a write on the target: afterwards, whether it worked or not, drop every
        cached page of the paths it touched."""
        try:
            yield
        finally:
            for tpath in tpaths:
                self.invalidate(tpath)

    def pipe_file(self, path: str, value: bytes, **kwargs: Any) -> None:
        tpath = self._target_path(path)
        with self._invalidating(tpath):
            self.fs.pipe_file(tpath, value, **kwargs)

    def put_file(self, lpath: str, rpath: str, **kwargs: Any) -> None:
        tpath = self._target_path(rpath)
        with self._invalidating(tpath):
            self.fs.put_file(lpath, tpath, **kwargs)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        tpath = self._target_path(path2)
        with self._invalidating(tpath):
            self.fs.cp_file(self._target_path(path1), tpath, **kwargs)

    def rm_file(self, path: str) -> None:
        tpath = self._target_path(path)
        with self._invalidating(tpath):
            self.fs.rm_file(tpath)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        tpaths = self.fs.expand_path(self._target_path_any(path), recursive=recursive,
                                     maxdepth=maxdepth)  # fmt: skip
        with self._invalidating(*tpaths):
            self.fs.rm(tpaths, recursive=recursive, maxdepth=maxdepth)

    def mv(self, path1: Any, path2: Any, recursive: bool = False, maxdepth: int | None = None,
           **kwargs: Any) -> None:  # fmt: skip
        sources = self.fs.expand_path(self._target_path_any(path1), recursive=recursive,
                                      maxdepth=maxdepth)  # fmt: skip
        dest = self._target_path_any(path2)
        dests = dest if isinstance(dest, list) else [dest]
        # a move into a folder lands under it
        under = [
            d.rstrip("/") + "/" + s.rstrip("/").rsplit("/")[-1] for d in dests for s in sources
        ]
        with self._invalidating(*sources, *dests, *under):
            self.fs.mv(self._target_path_any(path1), dest, recursive=recursive,
                       maxdepth=maxdepth, **kwargs)  # fmt: skip

    def _target_path_any(self, path: Any) -> Any:
        if isinstance(path, list):
            return [self._target_path(p) for p in path]
        return self._target_path(path)

    # -- metadata goes to the target -------------------------------------------------------

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> Any:
        return self.fs.ls(self._target_path(path), detail=detail, **kwargs)

    def find(
        self,
        path: str,
        maxdepth: int | None = None,
        withdirs: bool = False,
        detail: bool = False,
        **kwargs: Any,
    ) -> Any:
        return self.fs.find(
            self._target_path(path), maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs
        )

    def glob(self, path: str, maxdepth: int | None = None, **kwargs: Any) -> Any:
        return self.fs.glob(self._target_path(path), maxdepth=maxdepth, **kwargs)

    # Answered from the version netcache keeps (the target's ``info``, re-checked every
    # ``check_interval``): data libraries ask these before every open, and fsspec's HTTP
    # ``exists`` and ``isfile`` download the whole file to answer (``isdir`` too, for links).
    def exists(self, path: str, **kwargs: Any) -> bool:
        return self._kind(path) is not None

    def isdir(self, path: str) -> bool:
        return self._kind(path) == "directory"

    def isfile(self, path: str) -> bool:
        return self._kind(path) == "file"

    def _kind(self, path: str) -> str | None:
        tpath = self._target_path(path)
        try:
            self.context.cookies.cookie(
                self.fs, tpath, self.config.check_interval, False, self.offline
            )
        except IsADirectoryError:
            return "directory"
        except FileNotFoundError:
            return None
        return "file"

    def du(
        self,
        path: str,
        total: bool = True,
        maxdepth: int | None = None,
        withdirs: bool = False,
        **kwargs: Any,
    ) -> Any:
        return self.fs.du(
            self._target_path(path), total=total, maxdepth=maxdepth, withdirs=withdirs, **kwargs
        )

    def modified(self, path: str) -> Any:
        return self.fs.modified(self._target_path(path))

    def created(self, path: str) -> Any:
        return self.fs.created(self._target_path(path))

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        self.fs.mkdir(self._target_path(path), create_parents=create_parents, **kwargs)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.fs.makedirs(self._target_path(path), exist_ok=exist_ok)

    def rmdir(self, path: str) -> None:
        self.fs.rmdir(self._target_path(path))

    def invalidate_cache(self, path: str | None = None) -> None:
        """fsspec's listing-cache reset: the target's listings and netcache's versions
        (pages stay; they are checked against the target's version on next use)."""
        self.fs.invalidate_cache(None if path is None else self._target_path(path))
        self.context.cookies.forget(None if path is None else self._target_path(path))

    # -- the cache itself --------------------------------------------------------------------

    def invalidate(self, path: str | None = None) -> int:
        """Drop every cached page and version of ``path`` (of every file when None), in
        memory and on disk, and cancel their pending stores; returns pages dropped."""
        context = self.context
        if path is None:
            return context.invalidate_file(None)
        tpath = self._target_path(path)
        context.cookies.forget(tpath)
        return context.invalidate_file(context.cookies.file_id(tpath))

    def clear(self) -> None:
        """Empty the whole cache: memory, pending stores and the disk tier's folder."""
        self.invalidate(None)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every pending write-back is stored; False if ``timeout`` ran out."""
        return self.context.flush(timeout)

    def reclaim(self, nbytes: int, level: PressureLevel = PressureLevel.MODERATE) -> int:
        """Release at least ``nbytes`` of memory if possible, FS-Cache style; returns the
        bytes freed. Never waits for a store unless the release policy does."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"nbytes={nbytes!r} must be an int >= 0")
        if not isinstance(level, PressureLevel):
            raise TypeError(f"level={level!r} must be a PressureLevel")
        return self.context.page_cache.reclaim(nbytes, Reason.RECLAIM, level)

    def stats(self) -> StatsSnapshot:
        """An immutable snapshot of this cache's counters; ``str()`` renders it."""
        return self.context.stats()

    def disk_usage(self) -> DiskUsage | None:
        """What the disk tier holds now, or None without one."""
        backend = self.context.backend
        return backend.usage() if backend is not None else None

    def __repr__(self) -> str:
        where = self.config.cache_dir or "memory only"
        return f"NetCacheFileSystem({type(self.fs).__name__}, cache_dir={where!r})"


class NetCacheFile(AbstractBufferedFile):
    """A read-only, seekable file over one pinned version of a remote file.

    Every read is served from pages; fsspec's own buffering is off (``cache_type="none"``),
    so there is exactly one cache. Not thread-safe (one position per file, as any file).
    """

    def __init__(self, fs: NetCacheFileSystem, path: str, cookie: FileCookie) -> None:
        self.cookie = cookie
        assert cookie.size is not None
        self._readahead = Readahead(fs.config.block_size, fs.readahead, cookie.size,
                                    READAHEAD_CHUNK_BYTES)  # fmt: skip
        super().__init__(
            fs,
            path,
            mode="rb",
            block_size=fs.config.block_size,
            cache_type="none",
            size=cookie.size,
        )

    def read(self, length: int = -1) -> bytes:
        """Up to ``length`` bytes from the position (all the rest if ``length`` < 0).

        Replaces fsspec's ``read``, which adds a cache layer (``"none"`` here) and
        formats a debug log line on every call, on the path of every warm read.
        """
        length = -1 if length is None else int(length)
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        start = self.loc
        end = self.size if length < 0 else min(start + length, self.size)
        if start >= end:
            return b""
        data = self._fetch_range(start, end)
        self.loc = start + len(data)
        return data

    def _fetch_range(self, start: int, end: int) -> bytes:
        ahead = self._readahead.advise(start, end)
        if ahead is not None:  # started first, so it overlaps with this read's own fetch
            started = self.fs.read_ahead(self.cookie, ahead, self._readahead.request_pages)
            if started < len(ahead):  # asked for again by a later read
                self._readahead.not_started(ahead.start + started)
        return self.fs.read_pages(self.cookie, start, end)

    def __repr__(self) -> str:
        return f"<NetCacheFile {redact_url(self.path)}>"


class WriteThroughFile(io.RawIOBase):
    """A file opened for writing on the target; closing it invalidates the cached path.

    Delegates to the target's file method by method. Not thread-safe.
    """

    def __init__(self, target_file: Any, on_close: Callable[[], None]) -> None:
        super().__init__()
        self._file = target_file
        self._on_close = on_close

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self._file.write(data)

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._file.close()
        finally:
            super().close()
            self._on_close()


def _make_target(fs: Any, protocol: Any, options: Any) -> AbstractFileSystem:
    if (fs is None) == (protocol is None):
        raise ValueError(
            "give exactly one of fs= (a filesystem) and target_protocol= "
            "(a protocol name such as 'http' or 's3')"
        )
    if fs is not None:
        if not isinstance(fs, AbstractFileSystem):
            raise TypeError(f"fs={fs!r} must be an fsspec filesystem instance")
        if options:
            raise ValueError("target_options= goes with target_protocol=, not with fs=")
        return fs
    if not isinstance(protocol, str):
        raise TypeError(f"target_protocol={protocol!r} must be a protocol name string")
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"target_options={options!r} must be a dict")
    try:
        return fsspec.filesystem(protocol, **(options or {}))
    except ValueError as exc:
        raise ValueError(f"target_protocol={protocol!r}: {exc}") from exc


def _made_again(target: AbstractFileSystem) -> AbstractFileSystem:
    """``target`` made anew from its own arguments (fsspec's instance cache is emptied
    in a forked child, so this is a new instance)."""
    return type(target)(*target.storage_args, **target.storage_options)


def _absolute_range(size: int, start: Any, end: Any) -> tuple[int, int]:
    """Python-slice semantics for ``start``/``end`` (None, negative from the end); any
    integer type (numpy's too, as plain fsspec takes them), never a bool."""
    start, end = _offset("start", start), _offset("end", end)
    lo = 0 if start is None else (max(0, size + start) if start < 0 else start)
    hi = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
    return lo, max(lo, hi)


def _offset(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be an int or None")
    return int(value)


def _offsets(name: str, values: Any, n: int) -> list[int | None]:
    """``starts`` or ``ends`` of ``cat_ranges``: one for all (None or an integer), or one
    each (a list, tuple or array), as ints."""
    if values is None or not hasattr(values, "__iter__"):
        return [_offset(name, values)] * n
    return [_offset(name, value) for value in values]


def _waves(spans: dict[str, list[Span]], limit: int) -> Iterator[dict[str, list[Span]]]:
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
