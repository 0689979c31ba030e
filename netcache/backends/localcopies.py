"""Whole-file copies in the directory backend's folder, for C libraries that need a real
local path (``NetCacheFileSystem.open_local``).

A copy sits in its remote file's folder as ``<version>.<CRC32C>.whole``: written to a
temporary and renamed into place once whole, checked (a regular file of ours, its size,
its CRC32C) every time it is handed out, indexed, counted in ``disk_limit`` and culled
with the segments, and removed with its file's other versions.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence

import crc32c

from netcache.backends.folder import CacheFolder, remove_at
from netcache.backends.segindex import SegmentIndex
from netcache.backends.segmentio import Folders, pwrite_all
from netcache.backends.segments import WHOLE_SUFFIX, file_folder, whole_name
from netcache.buffers import PageBuffer

#: Bytes read at a time when a copy's checksum is checked.
_CHECK_BYTES = 8 << 20
#: Copies whose check this process remembers, at most.
_MAX_REMEMBERED = 4096


class LocalCopies:
    """Whole-file copies of one directory backend.

    A copy's CRC32C is checked once per process: after that, while the file's identity
    (device, inode, size, and modification and change times, which no one without
    root can set back) is the one seen at the check, or at the write, it is handed out
    without reading it again.

    Thread-safe: the index and the folders lock what they guard, and the identities
    checked are a dictionary changed by single, GIL-atomic operations; two threads
    making the same copy each write a temporary of their own and the second rename
    replaces the first with the same bytes.
    """

    def __init__(self, folder: CacheFolder, folders: Folders, index: SegmentIndex) -> None:
        self.folder = folder
        self.folders = folders
        self.index = index
        self._checked_as: dict[str, tuple[int, ...]] = {}

    def find(self, file_id: str, version: str, size: int) -> str | None:
        """The path of a complete copy of ``version`` of ``file_id``, checked, or None
        (none, or damaged: then removed)."""
        rel_folder = file_folder(file_id)
        try:
            names = self.folder.listdir(rel_folder)
        except FileNotFoundError:
            return None
        for name in names:
            if name.startswith(f"{version}.") and name.endswith(WHOLE_SUFFIX):
                rel = f"{rel_folder}/{name}"
                if self._checked(rel, name, size):
                    self.index.touch(rel)
                    return os.path.join(self.folder.path, rel)
                self.index.forget(rel)
                self.folder.remove(rel)
        return None

    def write(self, file_id: str, version: str, size: int,
              chunks: Iterable[Sequence[PageBuffer]]) -> str:  # fmt: skip
        """Write ``chunks`` (the whole file, in order, each a sequence of buffers) as the
        copy of ``version``; its path.
        Raises ``ValueError`` if they do not add up to ``size``, and ``OSError`` from the
        disk (nothing is left behind either way)."""
        rel_folder = file_folder(file_id)
        dir_fd = self.folders.open(rel_folder)
        try:
            tmp = self.folders.temp_name()
            fd = self.folder.open_in(dir_fd, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                crc, written = self._write_chunks(fd, chunks)
            except BaseException:
                os.close(fd)
                remove_at(dir_fd, tmp)
                raise
            os.close(fd)
            if written != size:
                remove_at(dir_fd, tmp)
                raise ValueError(f"a local copy got {written} bytes of a {size}-byte file")
            name = whole_name(version, crc)
            self.folder.replace(dir_fd, tmp, name)
            self._checked_as[f"{rel_folder}/{name}"] = _identity(
                os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            )
        finally:
            os.close(dir_fd)
        rel = f"{rel_folder}/{name}"
        fits, _, culled = self.index.add_whole(rel, size)
        for culled_rel, _ in culled:
            if culled_rel != rel:
                self.folder.remove(culled_rel)
        if not fits:
            self.folder.remove(rel)
            raise ValueError(f"a {size}-byte local copy does not fit disk_limit")
        return os.path.join(self.folder.path, rel)

    @staticmethod
    def _write_chunks(fd: int, chunks: Iterable[Sequence[PageBuffer]]) -> tuple[int, int]:
        crc, written = 0, 0
        for buffers in chunks:
            pwrite_all(fd, buffers, written)
            for buf in buffers:
                crc = crc32c.crc32c(buf, crc)
                written += len(buf)
        return crc, written

    def _checked(self, rel: str, name: str, size: int) -> bool:
        """Whether ``rel`` is a regular file of ours of ``size`` bytes whose CRC32C is the
        one its name says."""
        try:
            fd, _ = self.folder.open_file(rel, os.O_RDONLY)
        except OSError:  # not a regular file of ours, or gone
            return False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                return False
            if self._checked_as.get(rel) == _identity(st):
                return True  # checked (or written) by this process, untouched since
            crc, at = 0, 0
            while at < size:
                chunk = os.pread(fd, min(_CHECK_BYTES, size - at), at)
                if not chunk:
                    return False
                crc = crc32c.crc32c(chunk, crc)
                at += len(chunk)
            if name != whole_name(name.split(".", 1)[0], crc):
                return False
            if len(self._checked_as) >= _MAX_REMEMBERED:
                self._checked_as.clear()
            self._checked_as[rel] = _identity(st)
            return True
        finally:
            os.close(fd)


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
