"""The file objects ``NetCacheFileSystem.open`` returns: a read-only file over pages of
one pinned version, and a write-through file on the target."""

from __future__ import annotations

import errno
import io
import operator
import os
from collections.abc import Callable
from typing import Any

from fsspec.spec import AbstractBufferedFile

from netcache.cookie import FileCookie
from netcache.identity import redact_url
from netcache.readahead import READAHEAD_CHUNK_BYTES, Readahead
from netcache.reader import Reader

#: ``os.SEEK_DATA`` and ``os.SEEK_HOLE`` where the platform has them.
_SEEK_DATA_HOLE = tuple(getattr(os, n) for n in ("SEEK_DATA", "SEEK_HOLE") if hasattr(os, n))


#: Reads that did not start where the one before ended, before a file under
#: ``random_whole_below`` is fetched whole: a first seek (to a footer, say) is not yet
#: random reading.
RANDOM_READS = 2


class NetCacheFile(AbstractBufferedFile):
    """A read-only, seekable file over one pinned version of a remote file.

    Every read is served from pages; fsspec's own buffering is off (``cache_type="none"``),
    so there is exactly one cache. Not thread-safe (one position per file, as any file).
    """

    def __init__(self, fs: Any, path: str, cookie: FileCookie, block_size: int) -> None:
        self.cookie = cookie
        self._local: str | None = None
        assert cookie.size is not None
        self._readahead = Readahead(block_size, fs.readahead, cookie.size,
                                    READAHEAD_CHUNK_BYTES)  # fmt: skip
        # the next page a whole-file fetch for a random reader asks for (None: never)
        self._whole_next: int | None = 0 if cookie.size < fs.random_whole_below else None
        super().__init__(
            fs,
            path,
            mode="rb",
            block_size=block_size,
            cache_type="none",
            size=cookie.size,
        )

    # -- Python's binary file semantics where fsspec's base class differs ------------------

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")

    def read(self, length: int | None = -1) -> bytes:
        """Up to ``length`` bytes from the position (all the rest if ``length`` is -1 or
        None); any other negative length raises ``ValueError``, as Python's files do.

        Replaces fsspec's ``read``, which adds a cache layer (``"none"`` here) and
        formats a debug log line on every call, on the path of every warm read.
        """
        self._check_open()
        length = -1 if length is None else operator.index(length)
        if length < -1:
            raise ValueError("read length must be non-negative or -1")
        start = self.loc
        end = self.size if length < 0 else min(start + length, self.size)
        if start >= end:
            return b""
        data = self._fetch_range(start, end)
        self.loc = start + len(data)
        return data

    def read1(self, size: int = -1) -> bytes:
        """As ``read`` (every read is served whole, so one call is all there is); the
        size must be an integer, as for Python's files."""
        return self.read(operator.index(size))  # the size is checked first, as Python's

    def readinto(self, b: Any) -> int:
        out = memoryview(b).cast("B")
        data = self.read(out.nbytes)
        out[: len(data)] = data
        return len(data)

    def readinto1(self, b: Any) -> int:
        return self.readinto(b)

    def readline(self, size: int | None = -1) -> bytes:
        """Up to and including the next ``\\n``, at most ``size`` bytes (all of the line
        if ``size`` is negative or None)."""
        self._check_open()
        size = -1 if size is None else operator.index(size)
        limit = self.size if size < 0 else min(self.size, self.loc + size)
        parts: list[bytes] = []
        pos = self.loc
        while pos < limit:
            chunk = self._fetch_range(pos, min(limit, pos + self.blocksize))
            found = chunk.find(b"\n")
            if found >= 0:
                parts.append(chunk[: found + 1])
                pos += found + 1
                break
            parts.append(chunk)
            pos += len(chunk)
        self.loc = pos
        return b"".join(parts)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """Lines until their total size exceeds ``hint`` (all of them if ``hint`` is
        not positive); ``[]`` at the end of the file."""
        self._check_open()
        hint = -1 if hint is None else operator.index(hint)
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint < total:
                break
        return lines

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def seek(self, loc: int, whence: int = io.SEEK_SET) -> int:
        """As a Python file's: an integer offset, ``whence`` 0, 1 or 2, and no position
        before the start (``OSError`` EINVAL); past the end is allowed."""
        self._check_open()
        loc = operator.index(loc)
        whence = operator.index(whence)
        if whence == io.SEEK_SET:
            target = loc
        elif whence == io.SEEK_CUR:
            target = self.loc + loc
        elif whence == io.SEEK_END:
            target = self.size + loc
        elif whence in _SEEK_DATA_HOLE:  # as on a regular file, which has no holes
            if not 0 <= loc < self.size:
                raise OSError(errno.ENXIO, "No such device or address")
            target = loc if whence == _SEEK_DATA_HOLE[0] else self.size
        else:
            raise ValueError(f"whence value {whence} unsupported")
        if target < 0:
            raise OSError(errno.EINVAL, "Invalid argument")
        self.loc = target
        return target

    def tell(self) -> int:
        self._check_open()
        return int(self.loc)

    def write(self, data: Any) -> int:
        raise io.UnsupportedOperation("write")  # open or closed, as a read-only file says

    def readable(self) -> bool:
        self._check_open()
        return True

    def seekable(self) -> bool:
        self._check_open()
        return True

    def writable(self) -> bool:
        self._check_open()
        return False

    def _fetch_range(self, start: int, end: int) -> bytes:
        reader: Reader = self.fs.reader  # made anew in a forked child
        readahead = self._readahead
        # only a sequential read's window grows with the pipe: a random one skips asking
        pipe = (
            reader.read_ahead_limit(self.cookie, end // self.blocksize)
            if self.fs.readahead_grows and readahead.is_sequential(start)
            else 0
        )
        ahead = readahead.advise(start, end, pipe)
        if ahead is not None:  # started first, so it overlaps with this read's own fetch
            started = reader.read_ahead(self.cookie, ahead, readahead.request_pages)
            if started < len(ahead):  # asked for again by a later read
                readahead.not_started(ahead.start + started)
        data = reader.read_pages(self.cookie, start, end)
        if self._whole_next is not None and readahead.random_reads >= RANDOM_READS:
            self._fetch_rest(reader)
        return data

    def _fetch_rest(self, reader: Reader) -> None:
        """Random reading of a small file: the rest of it, in the background (after the
        reader's own pages, which also go first later: they are taken back from
        requests not yet sent), as far as the in-flight bound allows; a later read asks
        for the remainder. Not for a file the disk tier holds."""
        assert self._whole_next is not None and self.cookie.size is not None
        rest = range(self._whole_next, (self.cookie.size - 1) // self.blocksize + 1)
        if rest and reader.on_disk(self.cookie, rest.start):
            # the disk tier holds the file (a reader before this one fetched it): its
            # random reads cost no round trip, and hints for all of it only compete
            self._whole_next = None
            return
        started = reader.read_ahead(self.cookie, rest) if rest else 0
        self._whole_next = None if started == len(rest) else rest.start + started

    @property
    def name(self) -> str:
        """A complete local copy's path (``fsspec.open_local`` takes it): made on first
        use, never by reads."""
        if self._local is None:
            self._local = self.fs.open_local(self.path)
        return self._local

    def __repr__(self) -> str:
        return f"<NetCacheFile {redact_url(self.path)}>"


class WriteThroughFile(io.RawIOBase):
    """A file opened on the target for writing or update (``"wb"``, ``"ab"``, ``"xb"``,
    ``"r+b"``, ...): every call goes to the target's file, method by method. The cached
    pages and version of its path are dropped when the write lands: at ``close`` when
    it commits itself, at ``commit`` inside a transaction (``discard`` drops nothing:
    the target never changed). Not thread-safe, as any file.
    """

    def __init__(self, fs: Any, path: str, mode: str, target_file: Any, autocommit: bool,
                 on_landed: Callable[[], None]) -> None:  # fmt: skip
        super().__init__()
        self.fs = fs
        self.path = path
        self.mode = mode
        self.autocommit = autocommit
        self._file = target_file
        self._on_landed = on_landed

    @property
    def name(self) -> str:
        return self.path

    def readable(self) -> bool:
        return bool(self._file.readable())

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return bool(self._file.seekable())

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)  # type: ignore[no-any-return]

    def readinto(self, buffer: Any) -> int:
        return self._file.readinto(buffer)  # type: ignore[no-any-return]

    def write(self, data: Any) -> int:
        return self._file.write(data)  # type: ignore[no-any-return]

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)  # type: ignore[no-any-return]

    def tell(self) -> int:
        return self._file.tell()  # type: ignore[no-any-return]

    def truncate(self, size: int | None = None) -> int:
        return self._file.truncate(size)  # type: ignore[no-any-return]

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._file.close()
        finally:
            super().close()
            if self.autocommit:
                self._on_landed()

    def commit(self) -> None:
        """Inside a transaction: the target's file lands; its cached pages go."""
        try:
            self._file.commit()
        finally:
            self._on_landed()

    def discard(self) -> None:
        """Inside a transaction that failed: the target's file is dropped unwritten."""
        self._file.discard()

    def __repr__(self) -> str:
        return f"<WriteThroughFile {redact_url(self.path)} mode={self.mode!r}>"
