"""AsyncNetCacheFileSystem: netcache for async fsspec consumers (zarr v3, async code).

fsspec's caching filesystems are synchronous; wrapped for async use, every call becomes a
thread hop, and ``blockcache`` is bypassed altogether on the async path. Here the cache
stays in the path: reads whose pages are resident are answered on the event loop itself
(no I/O, no waiting: :meth:`NetCacheFileSystem.cat_file_resident`); everything else (disk
tier, remote, version checks, writes) runs on a worker thread, so the loop is never
blocked by a disk or a network.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fsspec.asyn import AsyncFileSystem

from netcache.filesystem import NetCacheFileSystem


class AsyncNetCacheFileSystem(AsyncFileSystem):
    """The async face of a :class:`NetCacheFileSystem` (same cache, same stats).

    ``AsyncNetCacheFileSystem(fs=netcache_fs)``, or the arguments of
    ``NetCacheFileSystem`` (``AsyncNetCacheFileSystem(target_protocol="s3", ...)``). For
    zarr v3: ``zarr.storage.FsspecStore(AsyncNetCacheFileSystem(...), path=...)``.

    Thread-safe and loop-safe: it holds no state but the wrapped filesystem, whose methods
    are thread-safe; coroutines may run on any loop.
    """

    protocol = "netcache"
    cachable = False  # wraps an instance; fsspec's instance cache would key on its repr

    def __init__(
        self,
        fs: NetCacheFileSystem | None = None,
        asynchronous: bool = True,
        loop: Any = None,
        **netcache_options: Any,
    ) -> None:
        super().__init__(asynchronous=asynchronous, loop=loop)
        if fs is None:
            fs = NetCacheFileSystem(**netcache_options)
        elif netcache_options:
            raise TypeError(
                f"pass either fs= or NetCacheFileSystem arguments, not both "
                f"(got {sorted(netcache_options)})"
            )
        if not isinstance(fs, NetCacheFileSystem):
            raise TypeError(f"fs must be a NetCacheFileSystem, not {type(fs).__name__}")
        #: The synchronous filesystem doing the work.
        self.sync_fs = fs

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        return NetCacheFileSystem._strip_protocol(path)

    # -- reads: memory on the loop, the rest on a thread -------------------------------------

    async def _cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        data = self.sync_fs.cat_file_resident(path, start, end)
        if data is not None:
            return data
        return await asyncio.to_thread(self.sync_fs.cat_file, path, start, end, **kwargs)

    async def _cat_ranges(
        self,
        paths: list[str],
        starts: Any,
        ends: Any,
        max_gap: int | None = None,
        batch_size: int | None = None,
        on_error: str = "return",
        **kwargs: Any,
    ) -> list[Any]:
        if isinstance(paths, list) and isinstance(starts, list) and isinstance(ends, list):
            resident = [
                self.sync_fs.cat_file_resident(p, s, e)
                for p, s, e in zip(paths, starts, ends, strict=False)
            ]
            if len(resident) == len(paths) and None not in resident:
                return resident
        return await asyncio.to_thread(
            self.sync_fs.cat_ranges, paths, starts, ends, max_gap, on_error, **kwargs
        )

    async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync_fs.info, path, **kwargs)

    async def _exists(self, path: str, **kwargs: Any) -> bool:
        return await asyncio.to_thread(self.sync_fs.exists, path, **kwargs)

    async def _isdir(self, path: str) -> bool:
        return await asyncio.to_thread(self.sync_fs.isdir, path)

    async def _isfile(self, path: str) -> bool:
        return await asyncio.to_thread(self.sync_fs.isfile, path)

    async def _size(self, path: str) -> int | None:
        return (await self._info(path)).get("size")

    async def _ls(self, path: str, detail: bool = True, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self.sync_fs.ls, path, detail, **kwargs)

    async def _find(
        self,
        path: str,
        maxdepth: int | None = None,
        withdirs: bool = False,
        **kwargs: Any,
    ) -> Any:
        return await asyncio.to_thread(self.sync_fs.find, path, maxdepth, withdirs, **kwargs)

    async def _get_file(self, rpath: str, lpath: str, **kwargs: Any) -> None:
        await asyncio.to_thread(self.sync_fs.get_file, rpath, lpath, **kwargs)

    # -- writes: through to the target, invalidating ------------------------------------------

    async def _pipe_file(self, path: str, value: bytes, **kwargs: Any) -> None:
        await asyncio.to_thread(self.sync_fs.pipe_file, path, value, **kwargs)

    async def _put_file(self, lpath: str, rpath: str, **kwargs: Any) -> None:
        await asyncio.to_thread(self.sync_fs.put_file, lpath, rpath, **kwargs)

    async def _cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        await asyncio.to_thread(self.sync_fs.cp_file, path1, path2, **kwargs)

    async def _rm_file(self, path: str, **kwargs: Any) -> None:
        await asyncio.to_thread(self.sync_fs.rm_file, path)

    async def _rm(
        self, path: Any, recursive: bool = False, maxdepth: int | None = None, **kwargs: Any
    ) -> None:
        await asyncio.to_thread(self.sync_fs.rm, path, recursive, maxdepth)

    async def _mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        await asyncio.to_thread(self.sync_fs.mkdir, path, create_parents, **kwargs)

    async def _makedirs(self, path: str, exist_ok: bool = False) -> None:
        await asyncio.to_thread(self.sync_fs.makedirs, path, exist_ok)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        return self.sync_fs._open(path, mode, **kwargs)

    def __repr__(self) -> str:
        return f"Async{self.sync_fs!r}"
