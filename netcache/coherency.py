"""CookieJar: the current version of each remote file, rechecked every
``check_interval`` seconds, and the dropping of pages of versions that are gone."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import cachetools
from fsspec import AbstractFileSystem

from netcache.backends.base import Backend
from netcache.cookie import FileCookie
from netcache.errors import CorruptMetadataError
from netcache.identity import digest, is_secret_option, redact_url
from netcache.identity import file_id as make_file_id
from netcache.retry import Retries
from netcache.writeback import WritebackQueue

META_FORMAT = 1
_MAX_COOKIES = 65536


class CookieJar:
    """Hands out a :class:`FileCookie` per path, asking the target's ``info`` at most
    every ``check_interval`` seconds (never again once known if it is None; every time
    if it is 0; each caller says its own interval). A newer process trusts the disk
    tier's metadata while it is that fresh, so it can read cached files without touching
    the remote.

    When a check finds a new version, ``on_change(file_id, new_version)`` drops the old
    pages in memory and on disk before the new cookie is handed out, so no old byte is
    served again.

    The disk tier's metadata is read from ``backend`` and written through ``writeback``
    (in the background: opening a new file does not wait for the disk).

    Locking: one lock guards the cookie cache (a ``cachetools.LRUCache``, not
    thread-safe by itself) and the known versions; ``info`` calls and disk I/O run
    outside it. Two threads may check the same path at once; both get a correct cookie.
    """

    def __init__(
        self,
        target_id: str,
        backend: Backend | None,
        writeback: WritebackQueue | None,
        on_change: Callable[[str, str], None],
        on_stale: Callable[[str, Exception], None],
        on_damaged: Callable[[Exception], None],
        retries: Retries,
    ) -> None:
        self.target_id = target_id
        #: the target's protocol, which the disk tier's metadata names URLs with
        self.protocol = ""
        self.backend = backend
        self._writeback = writeback
        self._on_change = on_change
        self._on_stale = on_stale
        self._on_damaged = on_damaged
        self._retries = retries
        self._lock = threading.Lock()
        # path -> (cookie, when its version was checked)
        self._cookies: cachetools.LRUCache[str, tuple[FileCookie, float]] = cachetools.LRUCache(
            _MAX_COOKIES
        )
        self._known: dict[str, str] = {}  # file_id -> version last seen

    def cookie(
        self,
        target: AbstractFileSystem,
        path: str,
        check_interval: float | None,
        refresh: bool = False,
        offline: bool = False,
        first_look: Callable[[str], dict[str, Any]] | None = None,
    ) -> FileCookie:
        """The current version of ``path``. With ``offline`` set, a version check that
        cannot reach the remote falls back to the last version known (in memory or on
        disk, however old), counted as ``Retrvls: stale``; a missing file still raises.

        ``first_look(path)`` is asked instead of ``target.info`` when this process knows
        no version of the path at all (a first open, which may fetch bytes with the
        version); a recheck of a known version asks ``info``."""
        fid = make_file_id(self.target_id, path)
        ask = target.info
        if not refresh and check_interval != 0:
            with self._lock:
                entry = self._cookies.get(path)
            if entry is not None and _fresh(entry[1], check_interval):
                return entry[0]
            cookie = self._from_disk(fid, path, check_interval)
            if cookie is not None:
                return cookie
            if entry is None and first_look is not None:
                ask = first_look
        try:
            info = self._retries.for_target(target).call(lambda: ask(path))
        except Exception as exc:
            known = self._last_known(fid, path) if offline and _unreachable(exc) else None
            if known is None:
                raise
            self._on_stale(path, exc)
            return known
        if info.get("type", "file") == "directory":
            raise IsADirectoryError(path)
        cookie = FileCookie.from_info(make_file_id(self.target_id, path), path, info)
        self._learn(cookie, time.time(), from_remote=True)
        return cookie

    def would_look(self, path: str, check_interval: float | None) -> bool:
        """Whether ``cookie`` would take a first look at ``path`` now: this process knows
        no version of it, and the disk tier none checked within ``check_interval`` (one
        found there is learnt here). Reads the disk tier's metadata, no remote."""
        if check_interval == 0:
            return False
        with self._lock:
            if path in self._cookies:
                return False
        fid = make_file_id(self.target_id, path)
        return self._from_disk(fid, path, check_interval) is None

    def known(self, path: str, check_interval: float | None) -> FileCookie | None:
        """The version of ``path`` if one was checked within ``check_interval`` and is held
        in memory, else None: no I/O, so an event loop may call it."""
        if check_interval == 0:
            return None
        with self._lock:
            entry = self._cookies.get(path)
        if entry is None or not _fresh(entry[1], check_interval):
            return None
        return entry[0]

    def _last_known(self, fid: str, path: str) -> FileCookie | None:
        with self._lock:
            entry = self._cookies.get(path)
        if entry is not None:
            return entry[0]
        return self._from_disk(fid, path, None, learn=False)

    def _from_disk(
        self, fid: str, path: str, check_interval: float | None, learn: bool = True
    ) -> FileCookie | None:
        meta = self._load_meta(fid)
        if meta is None:
            return None
        try:
            cookie, checked_at = _cookie_of_meta(meta, fid, path)
        except (KeyError, TypeError, ValueError) as exc:
            self._on_damaged(CorruptMetadataError(f"metadata of {fid}: {exc}"))
            return None
        if not _fresh(checked_at, check_interval):
            return None
        if learn:
            self._learn(cookie, checked_at, from_remote=False)
        return cookie

    def _learn(self, cookie: FileCookie, checked_at: float, from_remote: bool) -> None:
        with self._lock:
            previous = self._known.get(cookie.file_id)
            self._known[cookie.file_id] = cookie.version
            self._cookies[cookie.path] = (cookie, checked_at)
        if previous is not None and previous != cookie.version:
            self._on_change(cookie.file_id, cookie.version)
        # The disk tier's metadata is read and written when this process first sees a
        # version (first sight or a change), not on every check: with check_interval=0
        # that would be a file rewrite on every read.
        if from_remote and self.backend is not None and previous != cookie.version:
            meta = self._load_meta(cookie.file_id) if previous is None else None
            if meta is not None and meta.get("version") != cookie.version:
                self._on_change(cookie.file_id, cookie.version)
            self._store_meta(cookie, checked_at)

    def _load_meta(self, fid: str) -> dict[str, Any] | None:
        """The disk tier's metadata of ``fid``, or None: missing, or damaged (counted)."""
        if self.backend is None:
            return None
        try:
            return self.backend.load_meta(fid)
        except Exception as exc:
            self._on_damaged(exc)
            return None

    def _store_meta(self, cookie: FileCookie, checked_at: float) -> None:
        if self._writeback is not None:
            self._writeback.submit_meta(cookie.file_id, self._meta(cookie, checked_at))

    def _meta(self, cookie: FileCookie, checked_at: float) -> dict[str, Any]:
        info = {
            k: v
            for k, v in cookie.info.items()
            if not is_secret_option(k) and k not in ("name", "url")
        }
        return {
            "format": META_FORMAT,
            "url": redact_url(
                cookie.path
                if "://" in cookie.path or not self.protocol
                else f"{self.protocol}://{cookie.path}"
            ),
            "size": cookie.size,
            "version": cookie.version,
            "token": cookie.token,
            "checked_at": checked_at,
            "info": _jsonable(info),
        }

    def sized(self, cookie: FileCookie) -> None:
        """Record the size learnt by reading a file whose remote reported none."""
        with self._lock:
            entry = self._cookies.get(cookie.path)
            checked_at = entry[1] if entry is not None else time.time()
            self._cookies[cookie.path] = (cookie, checked_at)
        self._store_meta(cookie, checked_at)

    def forget(self, path: str | None = None) -> None:
        """Drop cached versions (of one path, or all), so the next use asks the target."""
        with self._lock:
            if path is None:
                self._cookies.clear()
            else:
                self._cookies.pop(path, None)

    def unlearn(self, file_id: str | None) -> None:
        """Forget which version of a file (or of every file) the disk tier's metadata
        names, after it was removed: the next version learnt writes it again."""
        with self._lock:
            if file_id is None:
                self._known.clear()
            else:
                self._known.pop(file_id, None)

    def file_id(self, path: str) -> str:
        return make_file_id(self.target_id, path)


def _cookie_of_meta(meta: dict[str, Any], fid: str, path: str) -> tuple[FileCookie, float]:
    """The cookie and check time that metadata read from disk describe; raises unless
    every field has its type and the fields agree (data, never trusted structure)."""
    if meta.get("format") != META_FORMAT:
        raise ValueError(f"format {meta.get('format')!r}")
    checked_at, size, info = meta["checked_at"], meta["size"], meta["info"]
    version, token = meta["version"], meta["token"]
    if type(checked_at) not in (int, float) or not math.isfinite(checked_at):
        raise TypeError("checked_at is not a time")
    if not (isinstance(version, str) and isinstance(token, str) and isinstance(info, dict)):
        raise TypeError("version, token or info of the wrong type")
    unsized = size is None and info.get("size") is None  # a remote that reports none
    if not unsized and (type(size) is not int or size < 0 or info.get("size", size) != size):
        raise ValueError(f"size {size!r} is not a byte count that info agrees with")
    if digest(token) != version:
        raise ValueError("version is not its token's")
    cookie = FileCookie(fid, path, version, token, size, dict(info, name=path))
    return cookie, float(checked_at)


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the remote could not be asked, rather than that the file is
    missing or forbidden. fsspec's HTTP ``info`` turns every failure into
    ``FileNotFoundError``; its cause tells a 404 from a refused connection."""
    if isinstance(exc, (IsADirectoryError, PermissionError)):
        return False
    if isinstance(exc, FileNotFoundError):
        cause = exc.__cause__
        return cause is not None and getattr(cause, "status", None) not in (404, 410)
    return True


def _fresh(checked_at: float, check_interval: float | None) -> bool:
    return check_interval is None or time.time() < checked_at + check_interval


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
