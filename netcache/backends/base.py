"""The disk-tier interface and the page file format shared by the shipped backends."""

from __future__ import annotations

import json
import struct
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cachetools
import crc32c

from netcache.buffers import PageBuffer
from netcache.errors import CorruptMetadataError, CorruptPageError
from netcache.page import PageKey


@dataclass(frozen=True)
class DiskUsage:
    """What a disk tier holds now, its limit, and what culling has removed so far."""

    used: int
    limit: int
    pages: int
    culls: int
    cbytes: int
    #: culled pages or segments that could not be removed (found and culled again later)
    cerr: int = 0


class PageIndex(cachetools.LRUCache):
    """Names of stored pages, least recently used first, with their sizes in bytes.

    cachetools does the LRU bookkeeping and decides what to cull once ``limit`` is
    exceeded; ``popitem`` records each culled name so that a backend can delete it after
    letting go of its lock (``take_culled``). Not thread-safe, as no cachetools cache
    is: the owning backend's lock guards it.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(maxsize=limit, getsizeof=_identity)
        self._culled: list[tuple[str, int]] = []
        self.culls = 0
        self.cbytes = 0

    def popitem(self) -> tuple[str, int]:
        item = super().popitem()
        self._culled.append(item)
        self.culls += 1
        self.cbytes += item[1]
        return item

    def cull(self, name: str) -> int:
        """Remove ``name`` as culled (counted), out of the LRU order; its size."""
        size = self.pop(name)
        self.culls += 1
        self.cbytes += size
        return size

    def resized(self, limit: int) -> PageIndex:
        """A copy of this index with another limit, in the same recency order, its culls
        counted and recorded (``take_culled``) if it is smaller."""
        new = PageIndex(limit)
        new.culls, new.cbytes = self.culls, self.cbytes
        for name in list(self):  # least recently used first
            new[name] = cachetools.Cache.__getitem__(self, name)  # without touching it
        return new

    def forget_all(self) -> None:
        """Empty the index without counting culls (its pages were removed on purpose)."""
        while self:
            super().popitem()

    def take_culled(self) -> list[tuple[str, int]]:
        culled, self._culled = self._culled, []
        return culled

    def usage(self) -> DiskUsage:
        return DiskUsage(self.currsize, self.maxsize, len(self), self.culls, self.cbytes)


def _identity(size: int) -> int:
    return size


class Backend(ABC):
    """A persistent tier of pages and per-file metadata.

    Implementations must be thread-safe: write-back workers store while readers load.
    ``load_page`` returns None for a page it does not hold and raises ``OSError``
    (:class:`~netcache.errors.CorruptPageError` for a failed check) for one it cannot
    read; the caller then fetches from the remote, so a backend never needs to be right
    about anything but the bytes it returns. Metadata is a JSON-able dict.
    """

    block_size: int
    #: Pages a ``store_pages`` call is given at most: more than one only for a backend
    #: that writes a run of pages in one go.
    store_batch_pages: int = 1

    @abstractmethod
    def load_page(self, key: PageKey) -> PageBuffer | None: ...

    @abstractmethod
    def store_page(self, key: PageKey, data: PageBuffer) -> None: ...

    def store_pages(self, pages: Sequence[tuple[PageKey, PageBuffer]]) -> None:
        """Store several pages (adjacent pages of one file version, in order); raises
        on the first that fails, the pages before it stored. The default calls
        ``store_page`` for each; a backend that writes a run in one go overrides it."""
        for key, data in pages:
            self.store_page(key, data)

    @abstractmethod
    def discard_page(self, key: PageKey) -> None: ...

    @abstractmethod
    def load_meta(self, file_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def store_meta(self, file_id: str, meta: dict[str, Any]) -> None: ...

    @abstractmethod
    def invalidate(self, file_id: str, keep_version: str | None = None) -> int:
        """Drop a file's pages (all, or all but one version's); return how many."""

    @abstractmethod
    def clear(self) -> None: ...

    @abstractmethod
    def usage(self) -> DiskUsage: ...

    def set_limit(self, limit: int) -> None:
        """A new byte limit, culling down to it now. The default refuses: a backend
        that can change its limit while in use overrides it."""
        raise ValueError(
            f"{type(self).__name__} cannot change its limit while in use; make it anew"
        )

    def load_pages(self, keys: Sequence[PageKey]) -> dict[PageKey, PageBuffer | OSError]:
        """Several pages at once (a reader's consecutive pages, typically): each page held
        maps to its bytes, or to the ``OSError`` that makes it unusable; pages not held
        are left out. The default calls ``load_page`` for each; a backend that can read
        a run of pages in one go overrides it."""
        loaded: dict[PageKey, PageBuffer | OSError] = {}
        for key in keys:
            try:
                data = self.load_page(key)
            except OSError as exc:
                loaded[key] = exc
                continue
            if data is not None:
                loaded[key] = data
        return loaded

    def holds(self, key: PageKey) -> bool:
        """Whether the page is (as far as this process knows) on disk: a cheap look at an
        in-memory index, no I/O. Read-ahead skips such pages (reading them when needed
        costs less than a thread hop); False when unsure, which only costs that hop."""
        return False

    def will_need(self, keys: Sequence[PageKey]) -> None:  # noqa: B027 - optional hook
        """A hint that these pages will be loaded soon: read them from the device into the
        OS page cache, so that loads in a row overlap their I/O. It may wait for those
        reads (callers give it on a thread of their own). Never raises; the default does
        nothing."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; the default holds none."""

    def __reduce__(self) -> Any:
        # A backend holds open state (locks, an index) that means nothing in another
        # process; a filesystem sent to Dask workers names its folder instead.
        raise TypeError(
            f"a {type(self).__name__} instance cannot be pickled; to send a "
            "NetCacheFileSystem to other processes (Dask workers), give cache_dir as a path"
        )


# A page's header: in a segment's table (DirectoryBackend), or before the page's bytes
# in one value (MappingBackend). The header names the page it holds, so a page in the
# wrong place is caught like a corrupt one. The checksum is CRC32C,
# which CPUs compute in hardware (several times zlib's CRC32), as mountpoint-s3 and
# JuiceFS do: checking every page on every read costs next to nothing.
_HEADER = struct.Struct("<4sB3xQQQI4x16s16s")
MAGIC = b"NCPG"
FORMAT_VERSION = 2  # 2: CRC32C (hardware) instead of zlib's CRC32
HEADER_SIZE = _HEADER.size


def page_header(key: PageKey, block_size: int, data: PageBuffer | memoryview) -> bytes:
    return _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        len(data),
        key.index,
        block_size,
        crc32c.crc32c(data),
        bytes.fromhex(key.file_id),
        bytes.fromhex(key.version),
    )


def check_header(header: bytes, key: PageKey, block_size: int) -> int:
    """Validate a page header for ``key``; return the payload length."""
    if len(header) != HEADER_SIZE:
        raise CorruptPageError(f"page {key.index}: truncated header")
    magic, fmt, length, index, bsize, _, fid, version = _HEADER.unpack(header)
    if magic != MAGIC or fmt != FORMAT_VERSION:
        raise CorruptPageError(f"page {key.index}: not a netcache page (format {fmt})")
    if (index, bsize, fid.hex(), version.hex()) != (
        key.index,
        block_size,
        key.file_id,
        key.version,
    ):
        raise CorruptPageError(f"page {key.index}: header names another page")
    if not 0 < length <= block_size:
        raise CorruptPageError(f"page {key.index}: length {length} > block size")
    return length


def check_payload(header: bytes, key: PageKey, data: PageBuffer | memoryview) -> None:
    expected = _HEADER.unpack(header)[5]
    if crc32c.crc32c(data) != expected:
        raise CorruptPageError(f"page {key.index}: checksum mismatch")


#: Bytes a file's metadata may take at most: a few fields and the remote's ``info``.
MAX_META_BYTES = 16 << 10


def encode_meta(meta: dict[str, Any]) -> bytes:
    """A file's metadata as stored: JSON with the CRC32C of its canonical text."""
    body = json.dumps(meta, sort_keys=True)
    return json.dumps({"crc32c": crc32c.crc32c(body.encode()), "meta": body}).encode()


def decode_meta(blob: bytes, file_id: str) -> dict[str, Any]:
    """The metadata in ``blob``, checked against its checksum and its size cap; raises
    :class:`~netcache.errors.CorruptMetadataError` for anything else."""
    try:
        if len(blob) > MAX_META_BYTES:
            raise ValueError(f"{len(blob)} bytes")
        outer = json.loads(blob)
        body = outer["meta"]
        if not isinstance(body, str) or crc32c.crc32c(body.encode()) != outer["crc32c"]:
            raise ValueError("checksum mismatch")
        meta = json.loads(body)
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except (ValueError, TypeError, KeyError, UnicodeError) as exc:
        raise CorruptMetadataError(f"metadata of {file_id}: {exc}") from None
    return meta


def encode_page(key: PageKey, block_size: int, data: PageBuffer) -> bytes:
    return page_header(key, block_size, data) + bytes(data)


def decode_page(blob: bytes, key: PageKey, block_size: int) -> bytes:
    header = blob[:HEADER_SIZE]
    length = check_header(header, key, block_size)
    payload = blob[HEADER_SIZE:]
    if len(payload) != length:
        raise CorruptPageError(f"page {key.index}: {len(payload)} bytes, header says {length}")
    check_payload(header, key, payload)
    return payload
