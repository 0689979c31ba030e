"""TargetPassThrough: the fsspec methods that netcache hands to its target as they are,
name by name: writes (which drop what the cache holds of the paths they touch, once
they land), listings, folders, and the target's other public methods."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.transaction import Transaction

#: Methods taking a path first (or a list of paths) that read from the target: handed
#: to it with the path made the target's. ``ukey`` and ``checksum`` are the target's
#: own values, so that they change exactly when the target says its file did.
PATH_READS: tuple[str, ...] = (
    "checksum", "created", "getxattr", "get_tags", "islink", "lexists", "metadata",
    "modified", "object_version_info", "sign", "ukey", "url",
)  # fmt: skip
#: Methods taking a path first that change it on the target: handed to it, and the
#: path's cached pages and version dropped afterwards (whether the call worked or not).
PATH_WRITES: tuple[str, ...] = (
    "chmod", "put_tags", "setxattrs", "touch",
)  # fmt: skip
#: Methods taking two paths, ``(source, destination)``, that make the destination.
PAIR_WRITES: tuple[str, ...] = ("link", "symlink")


class TargetPassThrough:
    """Mixin of :class:`~netcache.NetCacheFileSystem`: each method strips netcache's
    protocol, calls the target's method of the same name, and, for a write, invalidates
    the cached paths it touched once the call returns. Explicit, method by method (the
    lists above, and the methods below): nothing is forwarded by ``__getattr__``, and a
    target without a method raises the target's ``AttributeError``. Thread-safe as the
    target is; it keeps no state.

    A class using it provides ``fs`` (the target), ``_target_path``, ``invalidate`` and
    fsspec's ``_intrans`` and ``open``.
    """

    fs: AbstractFileSystem
    _intrans: bool

    def _target_path(self, path: str) -> str:
        raise NotImplementedError

    def invalidate(self, path: str | None = None) -> int:
        raise NotImplementedError

    def _target_path_any(self, path: Any) -> Any:
        if isinstance(path, (list, tuple)):
            return [self._target_path(p) for p in path]
        return self._target_path(path)

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

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        if self._intrans:  # held until the transaction commits, as the target's files are
            opener = self.open  # type: ignore[attr-defined]  # fsspec's, on the subclass
            with opener(path, "xb" if mode == "create" else "wb", **kwargs) as f:
                f.write(value)
            return
        if mode != "overwrite":  # fsspec's newer argument, passed only when it is used
            kwargs["mode"] = mode
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
        """The target's ``rm`` of the paths as given (it expands them its own way); every
        file they named or held is invalidated."""
        tpaths = self._target_path_any(path)
        try:
            doomed = self.fs.expand_path(tpaths, recursive=recursive, maxdepth=maxdepth)
        except FileNotFoundError:
            doomed = []  # the target's rm says what is missing
        with self._invalidating(*doomed):
            self.fs.rm(tpaths, recursive=recursive, maxdepth=maxdepth)

    def mv(self, path1: Any, path2: Any, recursive: bool = False, maxdepth: int | None = None,
           **kwargs: Any) -> None:  # fmt: skip
        """The target's ``mv``; the sources, and every file under the destination after
        the move (a folder moved into an existing one lands under it), are invalidated."""
        sources = self.fs.expand_path(self._target_path_any(path1), recursive=recursive,
                                      maxdepth=maxdepth)  # fmt: skip
        dest = self._target_path_any(path2)
        dests = dest if isinstance(dest, list) else [dest]
        with self._invalidating(*sources, *dests):  # whether the move worked or not
            self.fs.mv(self._target_path_any(path1), dest, recursive=recursive,
                       maxdepth=maxdepth, **kwargs)  # fmt: skip
            # it worked: what landed under a destination folder too
            for d in dests:
                with contextlib.suppress(FileNotFoundError):  # a file, moved as one
                    for tpath in self.fs.find(d):
                        self.invalidate(tpath)

    # -- listings and folders go to the target ---------------------------------------------

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> Any:
        return self.fs.ls(self._target_path(path), detail=detail, **kwargs)

    def find(self, path: str, maxdepth: int | None = None, withdirs: bool = False,
             detail: bool = False, **kwargs: Any) -> Any:  # fmt: skip
        return self.fs.find(self._target_path(path), maxdepth=maxdepth, withdirs=withdirs,
                            detail=detail, **kwargs)  # fmt: skip

    def glob(self, path: str, maxdepth: int | None = None, **kwargs: Any) -> Any:
        return self.fs.glob(self._target_path(path), maxdepth=maxdepth, **kwargs)

    def du(self, path: str, total: bool = True, maxdepth: int | None = None,
           withdirs: bool = False, **kwargs: Any) -> Any:  # fmt: skip
        return self.fs.du(self._target_path(path), total=total, maxdepth=maxdepth,
                          withdirs=withdirs, **kwargs)  # fmt: skip

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        self.fs.mkdir(self._target_path(path), create_parents=create_parents, **kwargs)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.fs.makedirs(self._target_path(path), exist_ok=exist_ok)

    def rmdir(self, path: str) -> None:
        self.fs.rmdir(self._target_path(path))


def _path_read(name: str) -> Callable[..., Any]:
    def method(self: TargetPassThrough, path: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.fs, name)(self._target_path_any(path), *args, **kwargs)

    method.__doc__ = f"The target's ``{name}``, on the target's path."
    return method


def _path_write(name: str) -> Callable[..., Any]:
    def method(self: TargetPassThrough, path: Any, *args: Any, **kwargs: Any) -> Any:
        tpath = self._target_path_any(path)
        with self._invalidating(*(tpath if isinstance(tpath, list) else [tpath])):
            return getattr(self.fs, name)(tpath, *args, **kwargs)

    method.__doc__ = f"The target's ``{name}``, on the target's path; the path is invalidated."
    return method


def _pair_write(name: str) -> Callable[..., Any]:
    def method(self: TargetPassThrough, source: str, dest: str, *args: Any, **kwargs: Any) -> Any:
        tdest = self._target_path(dest)
        with self._invalidating(tdest):
            return getattr(self.fs, name)(self._target_path(source), tdest, *args, **kwargs)

    method.__doc__ = f"The target's ``{name}``; the destination is invalidated."
    return method


for _names, _make in ((PATH_READS, _path_read), (PATH_WRITES, _path_write),
                      (PAIR_WRITES, _pair_write)):  # fmt: skip
    for _name in _names:
        _method = _make(_name)
        _method.__name__ = _name
        _method.__qualname__ = f"TargetPassThrough.{_name}"
        setattr(TargetPassThrough, _name, _method)


class TargetTransaction(Transaction):
    """netcache's transaction and its target's at once: files opened for writing inside
    it are the target's deferred files (a memory target defers by its own flag, a local
    one by ``autocommit``), committed or discarded with the block, and their cached
    pages are invalidated when they commit. Not thread-safe, as fsspec's is not."""

    def start(self) -> None:
        super().start()
        self.fs.fs._intrans = True

    def complete(self, commit: bool = True) -> None:
        target = self.fs.fs
        try:
            super().complete(commit)
        finally:
            target._intrans = False
            target._transaction = None
