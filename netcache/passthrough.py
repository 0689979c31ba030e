"""TargetPassThrough: the fsspec methods that netcache hands to its target as they are,
name by name: writes (which drop what the cache holds of the paths they touch, once
they land), listings and folders."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from fsspec import AbstractFileSystem


class TargetPassThrough:
    """Mixin of :class:`~netcache.NetCacheFileSystem`: each method strips netcache's
    protocol, calls the target's method of the same name, and, for a write, invalidates
    the cached paths it touched. Explicit, method by method: nothing is forwarded by
    ``__getattr__``. Thread-safe as the target is; it keeps no state.

    A class using it provides ``fs`` (the target), ``_target_path`` and ``invalidate``.
    """

    fs: AbstractFileSystem

    def _target_path(self, path: str) -> str:
        raise NotImplementedError

    def invalidate(self, path: str | None = None) -> int:
        raise NotImplementedError

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
