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
from collections.abc import Iterable

import crc32c

from netcache.backends.folder import CacheFolder, remove_at
from netcache.backends.segindex import SegmentIndex
from netcache.backends.segmentio import Folders, pwrite_all
from netcache.backends.segments import WHOLE_SUFFIX, file_folder, whole_name

#: Bytes read at a time when a copy's checksum is checked.
_CHECK_BYTES = 8 << 20


class LocalCopies:
    """Whole-file copies of one directory backend.

    Thread-safe: it keeps no state of its own (the index and the folders lock what they
    guard); two threads making the same copy each write a temporary of their own and
    the second rename replaces the first with the same bytes.
    """

    def __init__(self, folder: CacheFolder, folders: Folders, index: SegmentIndex) -> None:
        self.folder = folder
        self.folders = folders
        self.index = index

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

    def write(self, file_id: str, version: str, size: int, chunks: Iterable[bytes]) -> str:
        """Write ``chunks`` (the whole file, in order) as the copy of ``version``; its path.
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
    def _write_chunks(fd: int, chunks: Iterable[bytes]) -> tuple[int, int]:
        crc, written = 0, 0
        for chunk in chunks:
            pwrite_all(fd, [chunk], written)
            crc = crc32c.crc32c(chunk, crc)
            written += len(chunk)
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
            crc, at = 0, 0
            while at < size:
                chunk = os.pread(fd, min(_CHECK_BYTES, size - at), at)
                if not chunk:
                    return False
                crc = crc32c.crc32c(chunk, crc)
                at += len(chunk)
            return name == whole_name(name.split(".", 1)[0], crc)
        finally:
            os.close(fd)
