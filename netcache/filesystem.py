"""NetCacheFileSystem: an fsspec filesystem that reads any other one through pages."""

from __future__ import annotations

import os
from typing import Any

import fsspec
from fsspec import AbstractFileSystem
from fsspec.callbacks import DEFAULT_CALLBACK, Callback
from fsspec.implementations.chained import ChainedFileSystem

from netcache.backends.base import Backend, DiskUsage
from netcache.config import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_CHECK_INTERVAL,
    DEFAULT_DISK_LIMIT,
    DEFAULT_RETRIES,
    DEFAULT_WRITEBACK_WORKERS,
    CacheConfig,
    made_again,
    make_target,
    parse_random_whole_below,
    parse_readahead,
)
from netcache.context import CacheContext
from netcache.cookie import FileCookie
from netcache.files import NetCacheFile, WriteThroughFile
from netcache.identity import target_identity
from netcache.passthrough import TargetPassThrough, TargetTransaction
from netcache.policies.eviction import EvictionPolicy
from netcache.policies.release import PressureLevel, Reason, ReleasePolicy
from netcache.pressure import MemoryPressureMonitor
from netcache.process import default_monitor, registry
from netcache.reader import WHOLE, Reader, offsets
from netcache.stats import StatsSnapshot

# Options fsspec itself may hand any filesystem; accepted and passed to the base class.
_FSSPEC_OPTIONS = frozenset(
    {"use_listings_cache", "listings_expiry_time", "max_paths", "asynchronous", "loop"}
)
# ``open`` arguments that pandas, dask and pyarrow pass; netcache serves every read from
# its own pages, so these buffering hints have nothing to change and are ignored.
_IGNORED_OPEN_ARGS = frozenset(
    {"block_size", "cache_type", "cache_options", "autocommit", "size", "fill_cache", "cache_file"}
)


class NetCacheFileSystem(TargetPassThrough, ChainedFileSystem):
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
        Byte budget of the memory tier; None (default): 512 MiB, or 1/8 of RAM if less.
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
        Largest window fetched ahead of a sequential reader, in concurrent requests of up
        to 8 MiB; False or 0 turns read-ahead off. None (the default) starts at 32 MiB and
        grows with what the remote's pipe takes (bandwidth times round trip, measured:
        :mod:`netcache.pipe`) within the memory budget. Random access never reads ahead.
        Read-ahead calls the target from a pool of threads.
    random_whole_below:
        A file smaller than this, once read at random (two reads that did not start where
        the one before ended), is fetched whole in the background, in concurrent requests,
        while the reader's own pages go first: at most the file's size on the wire, and
        no round trip per read. Larger files fetch only what is read. None (the default):
        256 MiB, or half the memory budget if less (``docs/measurements.md`` says why), and
        never if ``readahead`` is off; False or 0: never. A column read of a Parquet file
        under it is a random read too: set it lower to keep the wire to what is read.
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
    #: ``fsspec.open_local`` works: a file's ``name`` is a complete local copy, made
    #: when asked for (ordinary reads never make one).
    local_file = True
    _strip_tokenize_options = ("fo",)
    transaction_type = TargetTransaction

    def __init__(
        self,
        fs: AbstractFileSystem | None = None,
        target_protocol: str | None = None,
        target_options: dict[str, Any] | None = None,
        cache_dir: str | os.PathLike[str] | Backend | bool | None = None,
        block_size: int | str = DEFAULT_BLOCK_SIZE,
        memory_limit: int | str | None = None,
        disk_limit: int | str = DEFAULT_DISK_LIMIT,
        eviction: str | EvictionPolicy = "lru",
        release_policy: ReleasePolicy | None = None,
        writeback_workers: int = DEFAULT_WRITEBACK_WORKERS,
        check_interval: float | None = DEFAULT_CHECK_INTERVAL,
        memory_monitor: MemoryPressureMonitor | bool | None = None,
        trusted_group: str | int | None = None,
        retries: int = DEFAULT_RETRIES,
        readahead: int | str | bool | None = None,
        random_whole_below: int | str | bool | None = None,
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
        self._target = make_target(fs, target_protocol, target_options)

        def _strip_protocol(path: Any) -> Any:  # the target's paths, as blockcache's
            stripped = type(self)._strip_protocol(path)
            if isinstance(stripped, list):
                return [self.fs._strip_protocol(p) for p in stripped]
            return self.fs._strip_protocol(stripped)

        self._strip_protocol: Any = _strip_protocol
        self.config = CacheConfig.build(
            cache_dir=cache_dir,
            block_size=block_size,
            memory_limit=memory_limit,
            disk_limit=disk_limit,
            eviction=eviction,
            release_policy=release_policy,
            writeback_workers=writeback_workers,
            check_interval=check_interval,
            memory_monitor=memory_monitor,
            default_monitor=default_monitor,
            trusted_group=trusted_group,
            retries=retries,
        )
        #: Largest read-ahead window of a sequentially read file, in bytes (0: off), or the
        #: window it starts from where it grows with the remote's measured pipe.
        self.readahead, self.readahead_grows = parse_readahead(readahead, self.config.block_size)
        #: Files under this size read at random are fetched whole in the background.
        self.random_whole_below = parse_random_whole_below(
            random_whole_below, self.config.memory_limit, self.readahead
        )
        if not isinstance(offline, bool):
            raise TypeError(f"offline={offline!r} must be True or False")
        #: Serve cached versions when the remote cannot be reached to check them.
        self.offline = offline
        self._target_id = target_identity(self._target)
        self._forks = registry.forks
        self._generation = registry.generation
        self._reader = self._new_reader()

    def _new_reader(self) -> Reader:
        protocol = self._target.protocol
        protocol = protocol if isinstance(protocol, str) else protocol[0]
        context = registry.acquire(self.config, self._target_id, protocol)
        return Reader(self._target, context, self.config.check_interval, self.offline)

    @property
    def reader(self) -> Reader:
        """How this instance reads through the cache. In a forked child the target and
        the shared context are made anew (an async target's event loop and sessions,
        and the context's threads and locks, belong to the parent)."""
        if self._forks != registry.forks:
            self._target = made_again(self._target)
            self._reader = self._new_reader()
            self._forks = registry.forks
        elif self._generation != registry.generation and not self._reader.context.is_current:
            self._generation = registry.generation
            self._reader = self._new_reader()  # its cache was replaced: this instance's
        return self._reader

    @property
    def fs(self) -> AbstractFileSystem:
        """The target filesystem."""
        return self.reader.target

    @property
    def context(self) -> CacheContext:
        """The process-wide shared cache."""
        return self.reader.context

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
        return self.fs._strip_protocol(type(self)._strip_protocol(path))

    def unstrip_protocol(self, name: str) -> str:
        """A URL that opens ``name`` again through netcache: ``netcache::`` and the
        target's own URL of it."""
        return f"netcache::{self.fs.unstrip_protocol(self._target_path(name))}"

    # -- reading through pages ---------------------------------------------------------------

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "r" in mode and "+" not in mode:
            unknown = set(kwargs) - _IGNORED_OPEN_ARGS
            if unknown:
                raise TypeError(f"open() got unexpected argument(s) {sorted(unknown)}")
            reader = self.reader
            cookie = reader.pin_version(self._target_path(path), reading=WHOLE)
            f = NetCacheFile(self, path, cookie, self.config.block_size)
            reader.context.file_opened(f)
            return f
        tpath = self._target_path(path)
        autocommit = kwargs.pop("autocommit", True)
        kwargs.pop("block_size", None)  # netcache's page size is not the target's buffer
        target_file = self.fs.open(tpath, mode, autocommit=autocommit, **kwargs)
        return WriteThroughFile(self, tpath, mode, target_file, autocommit,
                                lambda: self.invalidate(tpath))  # fmt: skip

    def read_ahead(self, cookie: FileCookie, pages: range, request_pages: int | None = None) -> int:
        """See :meth:`Reader.read_ahead`."""
        return self.reader.read_ahead(cookie, pages, request_pages)

    def read_pages(self, cookie: FileCookie, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of one pinned version of a file."""
        return self.reader.read_pages(cookie, start, end)

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
        return self.reader.prefetch([self._target_path(p) for p in files], callback)

    def open_local(self, path: str) -> str:
        """A path to a complete local copy of ``path``, for libraries that need a real
        file (netCDF4, h5py, GDAL, SQLite). It is assembled from the pages held, the rest
        fetched concurrently, kept in the cache folder (counted in ``disk_limit``, culled
        with the pages, dropped when the file changes or is invalidated), and checked
        against its checksum each time it is handed out. Needs ``cache_dir`` to be a
        folder. The path is good until the copy is culled or invalidated; a library
        that has it open keeps reading it."""
        return self.reader.local_copy(self._target_path(path))

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """The target's ``info``, answered from cached metadata within ``check_interval``
        for files; directories and missing paths are the target's answer."""
        tpath = self._target_path(path)
        try:
            return dict(self.reader.pin_version(tpath).info, name=tpath)
        except IsADirectoryError:
            return self.fs.info(tpath, **kwargs)

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        return self.reader.cat_file(self._target_path(path), start, end)

    def cat_file_resident(
        self, path: str, start: int | None = None, end: int | None = None
    ) -> bytes | None:
        """``cat_file`` if it can be answered at once from memory (a version checked within
        ``check_interval`` and every page resident), else None. It does no I/O and never
        waits, which is what lets :class:`~netcache.AsyncNetCacheFileSystem` answer warm
        reads on the event loop."""
        return self.reader.cat_file_resident(self._target_path(path), start, end)

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
        starts, ends = offsets("starts", starts, len(paths)), offsets("ends", ends, len(paths))
        if not len(paths) == len(starts) == len(ends):
            raise ValueError("paths, starts and ends must have the same length")
        return self.reader.cat_ranges([self._target_path(p) for p in paths], starts, ends,
                                      on_error)  # fmt: skip

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
        return self.reader.kind(self._target_path(path))

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
