"""MappingBackend: any ``MutableMapping[str, bytes]`` (zict.File, zict.LMDB, zict.Func) as
a disk tier."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import MutableMapping
from typing import Any

from netcache.backends.base import (
    HEADER_SIZE,
    Backend,
    DiskUsage,
    PageIndex,
    decode_meta,
    decode_page,
    encode_meta,
    encode_page,
)
from netcache.buffers import PageBuffer
from netcache.page import PageKey
from netcache.sizes import parse_size


class MappingBackend(Backend):
    """Stores pages as values of a user-supplied mapping, e.g.::

        MappingBackend(zict.File("/data/pages"), block_size=..., limit="10GiB")
        MappingBackend(zict.Func(zlib.compress, zlib.decompress, zict.File(path)), ...)

    Each value carries the same checksummed header as a directory-backend page, so
    a torn or corrupt value is a miss, never wrong bytes, and the LRU culling within
    ``limit`` is done here (cachetools). What it does not give, compared with
    :class:`~netcache.backends.directory.DirectoryBackend`: atomic writes (``zict.File``
    writes in place, so a crash mid-write leaves a value that fails its checksum), fsync,
    and safe sharing between processes (the index lives in this process; at start it
    counts every value already there as one full page without reading it).

    Thread-safety: one lock guards the index (a cachetools LRU, which is not
    thread-safe), held for its bookkeeping only. Calls into the mapping run outside it:
    concurrently for a mapping that is thread-safe (``thread_safe=True``; by default
    ``dict`` and zict's mappings, which are since zict 3.0), else one at a time under a
    second lock that only those calls take. The mapping is the truth: an index entry
    whose value is gone is a miss, forgotten when found.
    """

    def __init__(
        self,
        mapping: MutableMapping[str, bytes],
        block_size: int | str,
        limit: int | str,
        thread_safe: bool | None = None,
    ) -> None:
        """``block_size`` and ``limit`` in bytes, or size strings (``"10GiB"``);
        ``thread_safe``: whether the mapping may be called from several threads at once
        (None: true for ``dict`` and zict's mappings)."""
        if thread_safe is None:
            thread_safe = type(mapping) is dict or type(mapping).__module__.startswith("zict")
        elif not isinstance(thread_safe, bool):
            raise TypeError(f"thread_safe={thread_safe!r} must be True, False or None")
        self.mapping = mapping
        self.block_size = parse_size(block_size, "block_size", minimum=4096)
        self.limit = limit = parse_size(limit, "limit")
        self._lock = threading.Lock()  # the index
        self._calls = contextlib.nullcontext() if thread_safe else threading.Lock()
        self._index = PageIndex(limit)
        culled = []
        for name in list(mapping):
            if name.endswith(".page"):
                culled += self._track(name, HEADER_SIZE + self.block_size)
        self._drop(culled)

    def _name(self, key: PageKey) -> str:
        return f"{key.file_id}.{key.version}.{self.block_size:x}.{key.index:x}.page"

    def _track(self, name: str, size: int) -> list[str]:
        """Record ``name`` in the index; the names it culls, to drop from the mapping.
        Caller holds the index lock."""
        self._index[name] = size
        return [culled for culled, _ in self._index.take_culled()]

    def _drop(self, names: list[str]) -> None:
        with self._calls:
            for name in names:
                self.mapping.pop(name, None)

    def holds(self, key: PageKey) -> bool:
        with self._lock:
            return self._name(key) in self._index

    def load_page(self, key: PageKey) -> bytes | None:
        name = self._name(key)
        with self._calls:
            blob = self.mapping.get(name)
        with self._lock:
            if blob is None:
                self._index.pop(name, None)
                return None
            if name in self._index:
                self._index[name]  # most recently used
        try:
            return decode_page(bytes(blob), key, self.block_size)
        except OSError:
            self.discard_page(key)
            raise

    def store_page(self, key: PageKey, data: PageBuffer) -> None:
        name = self._name(key)
        blob = encode_page(key, self.block_size, data)
        with self._calls:
            self.mapping[name] = blob
        with self._lock:
            culled = self._track(name, len(blob))
        self._drop(culled)

    def discard_page(self, key: PageKey) -> None:
        name = self._name(key)
        with self._lock:
            self._index.pop(name, None)
        self._drop([name])

    def load_meta(self, file_id: str) -> dict[str, Any] | None:
        with self._calls:
            blob = self.mapping.get(f"{file_id}.meta")
        return decode_meta(bytes(blob), file_id) if blob is not None else None

    def store_meta(self, file_id: str, meta: dict[str, Any]) -> None:
        blob = encode_meta(meta)
        with self._calls:
            self.mapping[f"{file_id}.meta"] = blob

    def invalidate(self, file_id: str, keep_version: str | None = None) -> int:
        keep = f"{file_id}.{keep_version}." if keep_version is not None else None
        with self._calls:
            doomed = [
                name
                for name in list(self.mapping)
                if name.startswith(file_id + ".")
                and name.endswith(".page")
                and (keep is None or not name.startswith(keep))
            ]
        with self._lock:
            for name in doomed:
                self._index.pop(name, None)
        if keep_version is None:
            doomed_meta = [f"{file_id}.meta"]
            self._drop(doomed + doomed_meta)
        else:
            self._drop(doomed)
        return len(doomed)

    def clear(self) -> None:
        with self._lock:
            self._index.forget_all()
        with self._calls:
            names = list(self.mapping)
        self._drop(names)

    def set_limit(self, limit: int) -> None:
        """A new limit, culling down to it now."""
        with self._lock:
            self.limit = limit
            self._index = self._index.resized(limit)
            culled = [name for name, _ in self._index.take_culled()]
        self._drop(culled)

    def usage(self) -> DiskUsage:
        with self._lock:
            return self._index.usage()
