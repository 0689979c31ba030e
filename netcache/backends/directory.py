"""DirectoryBackend: pages as checksummed files in a folder, shareable between processes."""

from __future__ import annotations

import contextlib
import itertools
import json
import mmap
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psutil

from netcache.backends.base import (
    HEADER_SIZE,
    Backend,
    DiskUsage,
    PageIndex,
    check_header,
    check_payload,
    page_header,
)
from netcache.buffers import PageBuffer, empty_page_buffer
from netcache.errors import CorruptPageError
from netcache.page import PageKey

LAYOUT = "netcache-v1"
_TMP_PREFIX = ".tmp."
_STALE_TMP_SECONDS = 3600.0
#: Seconds by which recency shared through mtimes may lag: a disk hit on a page file
#: touched more recently than this does not touch it again (a syscall saved per hit).
_RECENCY_GRAIN = 10.0
#: Folders this process created, remembered at most (forgetting one only costs opening
#: files that are not there).
_MAX_CREATED = 1 << 16


# Fault the whole page in with the mapping (one syscall, not one fault per 4 KiB).
_MAP_FLAGS = mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0)


_WILLNEED: int | None = getattr(os, "POSIX_FADV_WILLNEED", None)


def _map_file(fd: int, size: int) -> mmap.mmap:
    return mmap.mmap(fd, size, flags=_MAP_FLAGS, prot=mmap.PROT_READ)


class DirectoryBackend(Backend):
    """Each page in its own file, written to a temporary name and atomically renamed.

    Layout under ``cache_dir/netcache-v1/files``: one folder per remote file, named by
    the hash in its ``file_id`` (never by its path), holding ``meta.json`` and one
    ``<version>.<block size>.<index>.page`` file per page. A page file starts with a
    header (format version, length, the page it holds, CRC32C) that is checked on every
    read, so a torn, truncated, flipped or misplaced file is a miss, never wrong bytes.
    Folders are created ``0o700`` and files ``0o600``.

    Sharing: readers and writers in several processes may use one folder, lock-free.
    Writers never expose a partial file (the rename is atomic on POSIX), so a reader sees
    either no page or a whole one; a reader that has a page open keeps reading it even if
    another process culls it (unlink), and a page culled just before it is opened is a
    miss. A page missing from this process's index, in a file folder this process
    created, is a miss without a look (a cold read of a new file would otherwise try to
    open every page in vain); a page another process stored there is found after the
    next rebuild of the index. Recency is shared through the files' mtimes (set on
    write, and on a disk hit of a file not touched in the last ten seconds). Each
    process keeps an LRU index of the folder, rebuilt from it at start and again after
    every ``max(8, pages/8)`` stores, and culls the least recently used pages of the
    whole folder, whoever wrote them. Slack: between two rebuilds, each other process
    may add that many pages unseen, plus one ``meta.json`` per file and the temporary
    files of writes in progress.

    Reading: a page loaded from disk is a private read-only mapping of its file, used in
    place (no copy into fresh memory, and its memory is the OS page cache's); dropping
    the page unmaps it. netcache never changes a page file in place (it renames over it
    or unlinks it, and a mapping keeps its own inode), so only someone truncating a page
    file by hand while a process has it mapped could fault that process (SIGBUS): clear
    a folder with ``python -m netcache clear``, which unlinks.

    Thread-safety: one lock guards the index and counters; file I/O runs outside it.
    Page files are not fsynced: a process crash cannot tear them (the kernel holds the
    data), and after a power loss the checksum turns a torn page into a miss.
    """

    def __init__(self, cache_dir: str, block_size: int, limit: int) -> None:
        self.block_size = block_size
        self.limit = limit
        self.root = os.path.join(os.path.abspath(os.path.expanduser(cache_dir)), LAYOUT)
        self.files = os.path.join(self.root, "files")
        _makedirs_private(self.files)
        self._lock = threading.Lock()
        self._index = PageIndex(limit)
        self._suffix = f".{block_size:x}."
        self._stores_since_rescan = 0
        # folders known to exist (a write that finds one gone creates it again)
        self._folders: set[str] = set()
        # remote files' folders (relative) this process created, newest last
        self._created: dict[str, None] = {}
        self._tmp_pid = -1
        self._tmp_prefix = ""
        self._tmp_seq = itertools.count()
        self._rescan_lock = threading.Lock()
        # pages indexed since the running rescan listed the folder: kept by its rebuild
        self._since_listing: dict[str, int] = {}
        self._rescan()

    # -- pages ---------------------------------------------------------------------------

    def _page_path(self, key: PageKey) -> tuple[str, str]:
        rel = f"{key.file_id[:2]}/{key.file_id}/{key.version}{self._suffix}{key.index:x}.page"
        return rel, os.path.join(self.files, rel)

    def holds(self, key: PageKey) -> bool:
        rel, _ = self._page_path(key)
        with self._lock:
            return rel in self._index

    def will_need(self, keys: Sequence[PageKey]) -> None:
        # One file per page: the kernel reads ahead within a file, never across files, so
        # a reader going through page files one by one waits for each in turn (about 300
        # MiB/s here after they leave the OS page cache, 2-3x that with this hint).
        if _WILLNEED is None:
            return
        for key in keys:
            try:
                fd = os.open(self._page_path(key)[1], os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, _WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)

    def load_page(self, key: PageKey) -> PageBuffer | None:
        rel, path = self._page_path(key)
        if not self._may_hold(rel):
            # A cold read of a new file would try to open each of its pages in vain, in
            # the folder write-back is creating files in: both contend for its lock.
            return None
        try:
            data, mtime = self._read_page_file(path, key)
        except FileNotFoundError:
            self._forget(rel)
            return None
        except OSError:
            self._forget(rel)
            _remove_any(path)
            raise
        if time.time() - mtime > _RECENCY_GRAIN:
            with contextlib.suppress(OSError):
                os.utime(path)  # recency that other processes' culling can see
        with self._lock:
            if rel in self._index:
                self._index[rel]
            else:  # written by another process
                self._index[rel] = self._since_listing[rel] = HEADER_SIZE + len(data)
            culled = self._take_culled()
        self._unlink_culled(culled)
        return data

    def _read_page_file(self, path: str, key: PageKey) -> tuple[PageBuffer, float]:
        """The page's bytes, checked, and its file's mtime."""
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except IsADirectoryError as exc:
            raise CorruptPageError(f"page {key.index}: a directory stands in its place") from exc
        with f:
            st = os.fstat(f.fileno())
            size = st.st_size
            if size <= HEADER_SIZE:
                raise CorruptPageError(f"page {key.index}: truncated file")
            try:
                view = memoryview(_map_file(f.fileno(), size))
            except OSError:  # a filesystem that cannot map files (some FUSE and network ones)
                view = memoryview(empty_page_buffer(size))
                if f.readinto(view) != size:
                    raise CorruptPageError(f"page {key.index}: file changed while read") from None
        header = bytes(view[:HEADER_SIZE])
        length = check_header(header, key, self.block_size)
        if size != HEADER_SIZE + length:
            raise CorruptPageError(f"page {key.index}: file length does not match header")
        data = view[HEADER_SIZE:]
        check_payload(header, key, data)
        return data, st.st_mtime

    def store_page(self, key: PageKey, data: PageBuffer) -> None:
        rel, path = self._page_path(key)
        self._write_atomic(path, (page_header(key, self.block_size, data), data))
        with self._lock:
            self._index[rel] = self._since_listing[rel] = HEADER_SIZE + len(data)
            culled = self._take_culled()
            self._stores_since_rescan += 1
            due = self._stores_since_rescan >= max(8, len(self._index) // 8)
        self._unlink_culled(culled)
        if due and self._rescan_lock.acquire(blocking=False):
            try:  # see what other processes stored, and cull the folder as a whole
                self._rescan()
            finally:
                self._rescan_lock.release()

    def discard_page(self, key: PageKey) -> None:
        rel, path = self._page_path(key)
        self._forget(rel)
        _remove_any(path)

    # -- metadata ------------------------------------------------------------------------

    def _file_dir(self, file_id: str) -> str:
        return os.path.join(self.files, file_id[:2], file_id)

    def load_meta(self, file_id: str) -> dict[str, Any] | None:
        try:
            with open(os.path.join(self._file_dir(file_id), "meta.json"), "rb") as f:
                meta = json.loads(f.read())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def store_meta(self, file_id: str, meta: dict[str, Any]) -> None:
        path = os.path.join(self._file_dir(file_id), "meta.json")
        self._write_atomic(path, (json.dumps(meta, sort_keys=True).encode(),))

    # -- whole files and the folder --------------------------------------------------------

    def invalidate(self, file_id: str, keep_version: str | None = None) -> int:
        folder = self._file_dir(file_id)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return 0
        removed = 0
        prefix = f"{file_id[:2]}/{file_id}/"
        for name in names:
            if not name.endswith(".page"):
                continue
            if keep_version is not None and name.startswith(keep_version + "."):
                continue
            self._forget(prefix + name)
            _remove_any(os.path.join(folder, name))
            removed += 1
        if keep_version is None:
            _remove_any(os.path.join(folder, "meta.json"))
            with contextlib.suppress(OSError):
                os.rmdir(folder)
            self._folders.discard(folder)
            with self._lock:
                self._created.pop(os.path.relpath(folder, self.files), None)
        return removed

    def clear(self) -> None:
        with self._lock:
            self._index.forget_all()
            self._since_listing = {}
            self._folders.clear()
            self._created.clear()
        for name in os.listdir(self.files):
            _remove_any(os.path.join(self.files, name))

    def usage(self) -> DiskUsage:
        with self._lock:
            return self._index.usage()

    # -- helpers ---------------------------------------------------------------------------

    def _write_atomic(self, path: str, chunks: tuple[PageBuffer, ...]) -> None:
        folder = os.path.dirname(path)
        if folder not in self._folders:
            self._made_folder(folder)
        tmp = os.path.join(folder, self._tmp_name())
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileNotFoundError:  # the folder was removed since (a clear, a cull)
                self._made_folder(folder)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                views = [memoryview(chunk).cast("B") for chunk in chunks]
                while views:  # one call for header and page; loop only on a short write
                    done = os.writev(fd, views)
                    while views and done >= len(views[0]):
                        done -= len(views[0])
                        views.pop(0)
                    if views and done:
                        views[0] = views[0][done:]
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            _remove_any(tmp)
            raise

    def _made_folder(self, folder: str) -> None:
        """Make sure ``folder`` exists; remember it, and whether this process created it."""
        created = _makedirs_private(folder)
        self._folders.add(folder)
        rel = os.path.relpath(folder, self.files)
        if created and rel.count("/") == 1:  # a remote file's folder
            with self._lock:
                self._created[rel] = None
                if len(self._created) > _MAX_CREATED:
                    del self._created[next(iter(self._created))]

    def _may_hold(self, rel: str) -> bool:
        """False only for a page that cannot be on disk: one missing from the index, in a
        folder this process created (so every page file in it is one this process
        stored, or one another process stored since, indexed at the next rescan)."""
        with self._lock:
            return rel in self._index or rel.rsplit("/", 1)[0] not in self._created

    def _tmp_name(self) -> str:
        # Named by pid (a rescan removes the temporaries of dead writers), a random token
        # (pids are reused) and a counter; made again in a forked child.
        if self._tmp_pid != os.getpid():
            self._tmp_pid = os.getpid()
            self._tmp_prefix = f"{_TMP_PREFIX}{self._tmp_pid}.{secrets.token_hex(4)}-"
        return f"{self._tmp_prefix}{next(self._tmp_seq)}"

    def _forget(self, rel: str) -> None:
        with self._lock:
            self._index.pop(rel, None)
            self._since_listing.pop(rel, None)

    def _take_culled(self) -> list[tuple[str, int]]:
        """Culled pages to unlink (caller holds the lock)."""
        culled = self._index.take_culled()
        for rel, _ in culled:
            self._since_listing.pop(rel, None)
        return culled

    def _unlink_culled(self, culled: list[tuple[str, int]]) -> None:
        for rel, _ in culled:
            _remove_any(os.path.join(self.files, rel))

    def _rescan(self) -> None:
        """Rebuild the index from the folder (least recently used first, by mtime), cull
        it to the limit, and remove temporaries of dead writers."""
        found: list[tuple[float, str, int]] = []
        now = time.time()
        with self._lock:
            self._since_listing = {}
        for rel, entry in _entries(self.files):
            name = entry.name
            if name.startswith(_TMP_PREFIX):
                with contextlib.suppress(OSError):
                    if _writer_gone(name) or now - entry.stat().st_mtime > _STALE_TMP_SECONDS:
                        _remove_any(entry.path)
            elif name.endswith(".page"):
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                found.append((st.st_mtime, rel, st.st_size))
        found.sort()
        with self._lock:
            self._stores_since_rescan = 0
            self._index.forget_all()
            for _, rel, size in found:
                if size <= self.limit:
                    self._index[rel] = size
            for rel, size in self._since_listing.items():  # newer than the listing
                self._index[rel] = size
            culled = self._take_culled()
        self._unlink_culled(culled)


def _entries(top: str, rel: str = "") -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Every entry under ``top`` that is not a folder (or is a folder named like a page
    file, which a read then finds damaged), with its path relative to ``top``."""
    try:
        listing = os.scandir(top)
    except OSError:
        return
    with listing:
        for entry in listing:
            name = rel + entry.name
            try:
                folder = entry.is_dir(follow_symlinks=False) and not name.endswith(".page")
            except OSError:
                continue
            if folder:
                yield from _entries(entry.path, name + "/")
            else:
                yield name, entry


def _writer_gone(tmp_name: str) -> bool:
    try:
        pid = int(tmp_name[len(_TMP_PREFIX) :].split(".", 1)[0])
    except ValueError:
        return True
    return pid != os.getpid() and not psutil.pid_exists(pid)


def _makedirs_private(folder: str) -> bool:
    """Create ``folder`` and any missing parents owner-only (``os.makedirs`` gives its
    mode to the last folder alone); True if this call created ``folder`` itself."""
    if os.path.isdir(folder):
        return False
    parent = os.path.dirname(folder)
    if parent != folder:
        _makedirs_private(parent)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        return False
    return True


def _remove_any(path: str) -> None:
    """Remove a file or a folder standing at ``path``; absent is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except (IsADirectoryError, PermissionError, OSError):
        shutil.rmtree(path, ignore_errors=True)
