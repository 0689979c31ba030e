"""The file objects ``NetCacheFileSystem.open`` returns: a read-only file over pages of
one pinned version, and a write-through file on the target."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from fsspec.spec import AbstractBufferedFile

from netcache.cookie import FileCookie
from netcache.identity import redact_url
from netcache.readahead import READAHEAD_CHUNK_BYTES, Readahead
from netcache.reader import Reader


class NetCacheFile(AbstractBufferedFile):
    """A read-only, seekable file over one pinned version of a remote file.

    Every read is served from pages; fsspec's own buffering is off (``cache_type="none"``),
    so there is exactly one cache. Not thread-safe (one position per file, as any file).
    """

    def __init__(self, fs: Any, path: str, cookie: FileCookie, block_size: int) -> None:
        self.cookie = cookie
        assert cookie.size is not None
        self._readahead = Readahead(block_size, fs.readahead, cookie.size,
                                    READAHEAD_CHUNK_BYTES)  # fmt: skip
        super().__init__(
            fs,
            path,
            mode="rb",
            block_size=block_size,
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
        reader: Reader = self.fs.reader  # made anew in a forked child
        ahead = self._readahead.advise(start, end)
        if ahead is not None:  # started first, so it overlaps with this read's own fetch
            started = reader.read_ahead(self.cookie, ahead, self._readahead.request_pages)
            if started < len(ahead):  # asked for again by a later read
                self._readahead.not_started(ahead.start + started)
        return reader.read_pages(self.cookie, start, end)

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
