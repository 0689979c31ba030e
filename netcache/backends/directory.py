"""DirectoryBackend: pages in checksummed segment files in a folder, shareable between
processes. The format is in :mod:`~netcache.backends.segments`, the system calls in
:mod:`~netcache.backends.segmentio`, the bookkeeping in
:mod:`~netcache.backends.segindex`; this module decides what to read, write and cull."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from netcache.backends import segmentio
from netcache.backends.base import (
    HEADER_SIZE,
    MAX_META_BYTES,
    Backend,
    DiskUsage,
    decode_meta,
    encode_meta,
    page_header,
)
from netcache.backends.folder import CacheFolder, group_id, remove_at
from netcache.backends.localcopies import LocalCopies
from netcache.backends.segindex import Culled, SegmentIndex
from netcache.backends.segmentio import (
    DirectWrites,
    Folders,
    clear_header,
    pwrite_all,
    slots_at,
)
from netcache.backends.segments import (
    LAYOUT,
    META_NAME,
    Layout,
    file_folder,
    free_slots,
    parse_segment_name,
    runs,
    segment_pages,
    segment_path,
    segment_suffix,
    spans,
    table_size,
    whole_version,
)
from netcache.buffers import PageBuffer
from netcache.errors import CorruptMetadataError, CorruptPageError, UntrustedFolderError
from netcache.page import PageKey
from netcache.warnonce import WarnOnce

#: Bytes a store call writes at most (adjacent pages of a segment, one open and two
#: writes for all): fewer calls per page are most of the write-back's CPU
#: (docs/measurements.md).
STORE_BATCH_BYTES = 4 << 20
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_STALE_TMP_SECONDS = 3600.0
#: Seconds by which recency shared through mtimes may lag: a disk hit on a segment
#: touched more recently than this does not touch it again (a syscall saved per hit).
RECENCY_GRAIN = 10.0

Run = list[tuple[int, PageKey, PageBuffer]]


class DirectoryBackend(Backend):
    """Pages in segment files: each holds up to ``MAX_SEGMENT_PAGES`` consecutive pages
    of one version of one remote file.

    Layout under ``cache_dir/netcache-v2/files``: one folder per remote file, named by
    the hash in its ``file_id`` (never by its path), holding ``meta.json`` and segment
    files ``<version>.<block size>.<pages per segment>.<segment>.seg``. A segment starts
    with a table of page headers (format version, length, the page it holds, CRC32C),
    then one slot per page at a fixed offset. A page's header is written after its
    bytes, and checked with the bytes' CRC32C on every read, so a torn, truncated,
    flipped or misplaced page is a miss, never wrong bytes; a damaged page's header is
    cleared and the page stored again from the remote. Folders are ``0o700``, files
    ``0o600``.

    Why segments, and why whole pages are written around the OS page cache
    (``O_DIRECT``, where the filesystem takes it): ``docs/design.md``.

    Sharing: readers and writers in several processes may use one folder, lock-free.
    Two processes storing the same page write the same bytes; a reader sees a page only
    once its header is written, after its bytes. A page missing from this process's
    index, in a file folder this process created, is a miss without a look (a cold read
    of a new file would otherwise open its segments in vain); pages another process
    stored there are found after the next rescan. Recency is shared through the
    segments' mtimes (set on write, and on a disk hit of a segment not touched in the
    last ten seconds). Each process keeps an LRU index of the segments of the folder
    (:class:`SegmentIndex`), rebuilt from it (names, sizes, header tables) at start and
    again after every ``max(8, limit/64, pages/8)`` stores (``limit`` in pages), and
    culls the least recently used segments of the whole folder, whoever wrote them.
    Slack: between two rescans, each other process may add that many pages unseen,
    plus one ``meta.json`` per file. A culled segment that cannot be removed is counted
    (``DiskUsage.cerr``), logged once, and found again by the next rescan.

    Space: a segment is sparse; it counts as its table plus the pages it holds.

    Reading: each page is read into memory of its own (a recycled page buffer where
    one is free), one ``preadv`` per run of adjacent slots, and its CRC32C checked once
    there. What a process holds never changes after that check, whatever happens to the
    segment: another process writing it, a slot cleared, the file truncated (which
    would kill a reader holding a mapping of it with SIGBUS) or a failing disk.

    Thread-safety: the index has its own lock (see :class:`SegmentIndex`); file I/O
    runs outside it, and this class takes no lock of its own but the one that keeps a
    single rescan running. Segments are not fsynced: a process crash cannot tear them
    (the kernel holds the data), and after a power loss the checksum turns a torn page
    into a miss.
    """

    def __init__(
        self, cache_dir: str, block_size: int, limit: int, trusted_group: str | int | None = None
    ) -> None:
        self.block_size = block_size
        self.limit = limit
        self.folder = CacheFolder(cache_dir, f"{LAYOUT}/files", group_id(trusted_group))
        self.root = os.path.join(self.folder.root, LAYOUT)
        self.files = self.folder.path
        self.segment_pages = segment_pages(block_size, limit)
        self._table = table_size(self.segment_pages)
        self.store_batch_pages = max(1, min(self.segment_pages, STORE_BATCH_BYTES // block_size))
        self._suffix = segment_suffix(block_size, self.segment_pages)
        self.layout = Layout(block_size, self.segment_pages, self._table)
        self.index = SegmentIndex(limit, block_size, self.segment_pages, self._table)
        self._folders = Folders(self.folder, self.index.note_created)
        self._direct = DirectWrites(block_size)
        #: whole-file copies, for ``open_local``
        self.local_copies = LocalCopies(self.folder, self._folders, self.index)
        self._rescan_lock = threading.Lock()
        self._warn = WarnOnce()
        self._rescan()

    # -- pages ---------------------------------------------------------------------------

    def _locate(self, key: PageKey) -> tuple[str, int]:
        """The page's segment (path relative to ``files``) and slot."""
        segment, slot = divmod(key.index, self.segment_pages)
        return segment_path(key.file_id, key.version, self._suffix, segment), slot

    def holds(self, key: PageKey) -> bool:
        return self.index.holds(*self._locate(key))

    def will_need(self, keys: Sequence[PageKey]) -> None:
        # The kernel reads ahead within a file as it is read; a reader moving from one
        # segment to the next would still wait at each start without this hint. The hint
        # reads the span through the OS page cache, where the kernel's sequential
        # read-ahead reads it in large requests into large folios (posix_fadvise queued
        # it in 4 KiB folios, which read slower and cost more to map).
        wanted: dict[str, list[int]] = {}
        for key in keys:
            rel, slot = self._locate(key)
            wanted.setdefault(rel, []).append(slot)
        bs = self.block_size
        for rel, slots in wanted.items():
            try:
                fd, _ = self.folder.open_file(rel, os.O_RDONLY)
            except OSError:  # not there, or not to be trusted: the load will say
                continue
            try:
                first, last = min(slots), max(slots)
                # from the segment's start when its first slot is asked for: a reader
                # entering the segment reads its header table first
                start = 0 if first == 0 else self._table + first * bs
                segmentio.read_through(fd, start, self._table + (last + 1) * bs - start)
            except OSError:
                pass  # a hint only: the load that follows reads, and reports, the same
            finally:
                os.close(fd)

    def load_page(self, key: PageKey) -> PageBuffer | None:
        found = self.load_pages([key]).get(key)
        if isinstance(found, OSError):
            raise found
        return found

    def load_pages(self, keys: Sequence[PageKey]) -> dict[PageKey, PageBuffer | OSError]:
        # One open, one read of the headers and one read per run of adjacent pages of
        # a segment, not per page: a new process reading its pages back from disk was
        # bound by that per-page work, not by the disk.
        segments: dict[str, list[tuple[int, PageKey]]] = {}
        for key in keys:
            rel, slot = self._locate(key)
            segments.setdefault(rel, []).append((slot, key))
        loaded: dict[PageKey, PageBuffer | OSError] = {}
        for rel, wanted in segments.items():
            mask, known, ours = self.index.look(rel)
            if ours:
                # A page missing from the index of a folder this process created cannot
                # be on disk (every segment there holds pages this process stored, or
                # pages another process stored since, indexed at the next rescan).
                wanted = [(slot, key) for slot, key in wanted if mask >> slot & 1]
            if wanted:
                self._load_from(rel, sorted(wanted), not known, loaded)
        return loaded

    def _load_from(
        self,
        rel: str,
        wanted: list[tuple[int, PageKey]],
        whole_table: bool,
        loaded: dict[PageKey, PageBuffer | OSError],
    ) -> None:
        """Load ``wanted`` (slots in order, and their keys) from one segment into
        ``loaded``; index what was found, and clear what was damaged."""
        try:
            fd, _ = self.folder.open_file(rel, os.O_RDONLY)
        except FileNotFoundError:
            self.index.forget(rel)
            return
        except UntrustedFolderError as exc:  # a folder, a link, a FIFO: one error, removed
            self._remove(rel)
            loaded[wanted[0][1]] = CorruptPageError(f"page {wanted[0][1].index}: {exc}")
            return
        except OSError as exc:
            for _, key in wanted:
                loaded[key] = CorruptPageError(f"page {key.index}: segment unreadable: {exc!r}")
            return
        try:
            pages, held, st = segmentio.read_slots(fd, wanted, whole_table, self.layout)
            found = 0
            for slot, key in wanted:
                data = pages.get(slot)
                if data is None:
                    self.index.clear_slot(rel, slot)  # never written, or cleared
                elif isinstance(data, OSError):
                    loaded[key] = data
                    self._clear_slot(rel, slot)
                else:
                    loaded[key] = data
                    found |= 1 << slot
            if not found:
                return
            assert st is not None
            if time.time() - st.st_mtime > RECENCY_GRAIN:
                with contextlib.suppress(OSError):  # recency is a hint; a miss costs none
                    os.utime(fd)  # recency that other processes' culling can see
        finally:
            os.close(fd)
        _, _, culled = self.index.add_slots(rel, held | found)
        self._unlink_culled(culled)

    def store_page(self, key: PageKey, data: PageBuffer) -> None:
        self.store_pages([(key, data)])

    def store_pages(self, pages: Sequence[tuple[PageKey, PageBuffer]]) -> None:
        segments: dict[str, Run] = {}
        for key, data in pages:
            rel, slot = self._locate(key)
            segments.setdefault(rel, []).append((slot, key, data))
        for rel, slots in segments.items():
            for run in runs(sorted(slots, key=lambda item: item[0])):
                self._store_run(rel, run)

    def _store_run(self, rel: str, run: Run) -> None:
        """Store pages of adjacent slots of one segment, with one open and (unless some
        slots are taken) one write of their bytes and one of their headers. A full disk
        (``ENOSPC``, ``EDQUOT``) first makes room, culling the least recently used
        segments, and the run is written once more; only then is the error raised."""
        try:
            self._write_run(rel, run)
        except OSError as exc:
            if exc.errno not in _DISK_FULL or not self._cull_for(
                rel, 2 * len(run) * self.block_size
            ):
                raise
            self._write_run(rel, run)
        mask = 0
        for slot, _, _ in run:
            mask |= 1 << slot
        fits, due, culled = self.index.add_slots(rel, mask, stored=len(run))
        self._unlink_culled(culled)
        if not fits:
            self._remove(rel)
            raise ValueError(f"a segment does not fit disk_limit={self.limit}")
        if due and self._rescan_lock.acquire(blocking=False):
            try:  # see what other processes stored, and cull the folder as a whole
                self._rescan()
            finally:
                self._rescan_lock.release()

    def _write_run(self, rel: str, run: Run) -> None:
        """The writes of ``_store_run``."""
        bs = self.block_size
        headers = [page_header(key, bs, data) for _, key, data in run]
        first = run[0][0]
        fd = self._folders.create(rel, os.O_RDWR | os.O_CREAT)
        try:
            table = os.pread(fd, len(run) * HEADER_SIZE, first * HEADER_SIZE)
            # Written once: a slot holding a page (another process's, say) is left as it
            # is (a damaged page's header is cleared first, by the reader that found it).
            whole = [len(data) == bs for _, _, data in run]
            for lo, hi in spans(free_slots(table, len(run)), whole):
                # bytes first, header last: a reader never takes a page whose bytes are
                # not all there (and a crash in between leaves a slot that reads empty)
                at, pages = self._table + (first + lo) * bs, run[lo:hi]
                direct = len(pages) if whole[hi - 1] else len(pages) - 1
                if direct and self._direct.write(fd, [d for _, _, d in pages[:direct]], at):
                    at, pages = at + direct * bs, pages[direct:]
                if pages:
                    pwrite_all(fd, [data for _, _, data in pages], at)
                pwrite_all(fd, [b"".join(headers[lo:hi])], (first + lo) * HEADER_SIZE)
        finally:
            os.close(fd)

    def _cull_for(self, keep: str, nbytes: int) -> bool:
        """Cull least recently used segments (never ``keep``) until ``nbytes`` are freed;
        whether anything was."""
        culled = self.index.cull_for(keep, nbytes)
        self._unlink_culled(culled)
        return bool(culled)

    def discard_page(self, key: PageKey) -> None:
        self._clear_slot(*self._locate(key))

    # -- metadata ------------------------------------------------------------------------

    def load_meta(self, file_id: str) -> dict[str, Any] | None:
        rel = f"{file_folder(file_id)}/{META_NAME}"
        try:
            blob = self.folder.read_small(rel, MAX_META_BYTES)
            return decode_meta(blob, file_id) if blob is not None else None
        except (UntrustedFolderError, CorruptMetadataError) as exc:
            # a FIFO, a link, a huge file, a failed check: damaged, so removed (and
            # written again once the remote has been asked)
            self.folder.remove(rel)
            if isinstance(exc, CorruptMetadataError):
                raise
            raise CorruptMetadataError(f"metadata of {file_id}: {exc}") from exc

    def store_meta(self, file_id: str, meta: dict[str, Any]) -> None:
        self._folders.write_atomic(file_folder(file_id), META_NAME, encode_meta(meta))

    # -- whole files and the folder --------------------------------------------------------

    def invalidate(self, file_id: str, keep_version: str | None = None) -> int:
        folder = file_folder(file_id)
        try:
            dir_fd, _ = self.folder.open_folder(folder)
        except FileNotFoundError:
            return 0
        removed = 0
        try:
            for name in os.listdir(dir_fd):
                parsed = parse_segment_name(name)
                version = parsed[0] if parsed is not None else whole_version(name)
                if version is None or version == keep_version:
                    continue
                if parsed is not None:
                    removed += slots_at(self.folder, dir_fd, name, parsed[2]).bit_count()
                self.index.forget(f"{folder}/{name}")
                remove_at(dir_fd, name)
        finally:
            os.close(dir_fd)
        if keep_version is None:
            self.folder.remove(folder)
            self._folders.forget(folder)
            self.index.forget_folder(folder)
        return removed

    def clear(self) -> None:
        self.index.forget_all()
        self._folders.forget()
        for name in self.folder.listdir(""):
            self.folder.remove(name)

    def set_limit(self, limit: int) -> None:
        """A new limit, culling the least recently used segments down to it now (the
        pages per segment stay as the folder has them)."""
        self.limit = limit
        self._unlink_culled(self.index.set_limit(limit))

    def usage(self) -> DiskUsage:
        return self.index.usage()

    # -- helpers ---------------------------------------------------------------------------

    def _clear_slot(self, rel: str, slot: int) -> None:
        """Make a slot read as empty (its page is fetched and stored again)."""
        self.index.clear_slot(rel, slot)
        try:
            fd, _ = self.folder.open_file(rel, os.O_WRONLY)
        except FileNotFoundError:
            return
        except OSError:  # not a file (a folder, a link, a FIFO): remove whatever it is
            self._remove(rel)
            return
        try:
            clear_header(fd, slot)
        except OSError:
            self._remove(rel)
        finally:
            os.close(fd)

    def _remove(self, rel: str) -> None:
        self.index.forget(rel)
        self.folder.remove(rel)

    def _unlink_culled(self, culled: Culled) -> None:
        """Remove culled segments. One that cannot be removed stays on disk unindexed:
        it is counted, logged once, and the next store rescans the folder, which finds
        it, counts its space and culls it again."""
        for rel, _ in culled:
            try:
                self.folder.remove(rel)
            except OSError as exc:
                self.index.unlink_failed()
                self._warn("unlink", "netcache: a culled segment of the disk tier at %s "
                           "could not be removed (%r); it is culled again after the next "
                           "rescan", self.folder.root, exc)  # fmt: skip

    def _rescan(self) -> None:
        """Rebuild the index from the folder (least recently used first, by mtime), cull
        it to the limit, and remove temporaries of dead writers."""
        found: list[tuple[float, str, int, int]] = []
        self.index.start_listing()
        for folder, names, dir_fd in self.folder.walk():
            for name in names:
                entry = segmentio.listed(self.folder, folder, name, dir_fd, self.layout,
                                         self.index.segment_bytes)  # fmt: skip
                if entry is not None:
                    found.append(entry)
        self._unlink_culled(self.index.rebuild(found))
