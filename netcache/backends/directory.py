"""DirectoryBackend: pages in checksummed segment files in a folder, shareable between
processes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import mmap
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psutil

from netcache.backends.base import (
    HEADER_SIZE,
    MAGIC,
    MAX_META_BYTES,
    Backend,
    DiskUsage,
    PageIndex,
    check_header,
    check_payload,
    decode_meta,
    encode_meta,
    page_header,
)
from netcache.backends.folder import CacheFolder, group_id, remove_at
from netcache.buffers import PageBuffer, blank_page_buffer, empty_page_buffer
from netcache.errors import CorruptMetadataError, CorruptPageError, UntrustedFolderError
from netcache.page import PageKey

LAYOUT = "netcache-v2"  # v2: segment files (v1 held one file per page)
SEGMENT_SUFFIX = ".seg"
#: Pages a segment file holds at most (8 MiB of 128 KiB pages); fewer under small disk
#: limits, so that culling (a whole segment at a time) stays fine-grained.
MAX_SEGMENT_PAGES = 64
#: Bytes a store call writes at most (adjacent pages of a segment, one open and two
#: writes for all): per page, a write-back worker spent half its CPU opening, checking
#: and closing the segment (2048 pages of 128 KiB, 8 at a time: 230 -> 130 ms). 4 MiB
#: rather than 1 MiB: the kernel's share of an O_DIRECT write is mostly per call
#: (256 MiB stored: sys 63 -> 35 ms, user 73 -> 56 ms); a cold 256 MiB read with the
#: disk tier took ~11% less CPU in all (median of 6 alternated pairs, 944 -> 837 ms).
STORE_BATCH_BYTES = 4 << 20
#: A rebuild of the index comes after at least 1/RESCAN_LIMIT_SHARE of the limit stored.
RESCAN_LIMIT_SHARE = 64
_TMP_PREFIX = ".tmp."
META_NAME = "meta.json"
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_STALE_TMP_SECONDS = 3600.0
#: Seconds by which recency shared through mtimes may lag: a disk hit on a segment
#: touched more recently than this does not touch it again (a syscall saved per hit).
_RECENCY_GRAIN = 10.0
#: Folders this process created, remembered at most (forgetting one only costs opening
#: files that are not there).
_MAX_CREATED = 1 << 16

#: Bytes a hint copies at a time where it cannot use sendfile (into a buffer of each
#: read-ahead thread's).
_HINT_READ_BYTES = 1 << 20
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)
#: What O_DIRECT asks of offsets and lengths (the logical block size of the devices in
#: use, 512 or 4096); page buffers are mappings, so their addresses are aligned too.
_DIRECT_ALIGN = 4096
_Slotted = TypeVar("_Slotted", bound=tuple[Any, ...])  # an item whose first field is a slot


_hint_buffers = threading.local()
#: sendfile's errors where it cannot send a file to /dev/null (not Linux, say): hints
#: then copy into a buffer instead.
_NO_SENDFILE = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSOCK, errno.EOPNOTSUPP})
#: Whether hints may use sendfile: cleared, for good, the first time it is refused.
_sendfile_hints = hasattr(os, "sendfile")


def _read_through(fd: int, start: int, length: int) -> None:
    """Read ``length`` bytes of ``fd`` from ``start`` into the OS page cache.

    ``sendfile`` to /dev/null reads them through the page cache, with the kernel's
    sequential read-ahead in large folios, and copies nothing out: a new process read
    256 MiB from disk 1.16x faster than when each MiB was copied into a buffer (medians
    of 6 alternated runs). /dev/null is opened for each hint (a few microseconds for up
    to a segment): a descriptor kept open could be closed and its number reused for
    another file (a daemon closing every descriptor after a fork), which the hint would
    then write into. Where sendfile is refused, the bytes are copied into a buffer."""
    global _sendfile_hints
    end = start + length
    if _sendfile_hints:
        sink = os.open(os.devnull, os.O_WRONLY)
        try:
            while start < end:
                n = os.sendfile(sink, fd, start, end - start)
                if n <= 0:
                    return  # the segment ends sooner (a page not stored)
                start += n
            return
        except OSError as exc:
            if exc.errno not in _NO_SENDFILE:
                raise
            _sendfile_hints = False  # a race sets it twice, to the same value
        finally:
            os.close(sink)
    _copy_through(fd, start, end - start)


def _copy_through(fd: int, start: int, length: int) -> None:
    """Read ``length`` bytes of ``fd`` from ``start`` into the OS page cache, through a
    buffer of the calling thread's (reused: fresh memory costs more than the read).

    The buffer is a mapping, so page-aligned like the page cache it is copied from. A
    large ``bytearray`` starts 16 bytes into a page (malloc's header), and the kernel's
    copy into it ran 5x slower here (409 against 75 us per MiB): its loads and stores
    16 bytes apart alias in the CPU's 4 KiB store-forwarding check."""
    buf = getattr(_hint_buffers, "buf", None)
    if buf is None:
        buf = _hint_buffers.buf = memoryview(empty_page_buffer(_HINT_READ_BYTES))
    end = start + length
    while start < end:
        n = os.preadv(fd, [buf[: min(len(buf), end - start)]], start)
        if n <= 0:
            return  # the segment ends sooner (a page not stored): nothing more to read
        start += n


def segment_pages(block_size: int, limit: int) -> int:
    """Pages per segment file for a disk tier of ``limit`` bytes: a segment is at most
    1/16 of the limit."""
    return max(1, min(MAX_SEGMENT_PAGES, limit // (16 * block_size)))


def table_size(pages: int) -> int:
    """Bytes of a segment's header table: page headers, padded so that page data starts
    on an allocation boundary (aligned as ``O_DIRECT`` writes need)."""
    grain = mmap.ALLOCATIONGRANULARITY
    return -(-pages * HEADER_SIZE // grain) * grain


def parse_segment_name(name: str) -> tuple[str, int, int, int] | None:
    """(version, block size, pages per segment, segment number) of a segment file's
    name, or None if it is not one."""
    if not name.endswith(SEGMENT_SUFFIX):
        return None
    parts = name[: -len(SEGMENT_SUFFIX)].split(".")
    if len(parts) != 4:
        return None
    try:
        return parts[0], int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None


def stored_slots(fd: int, pages: int) -> int:
    """Bit ``i`` set for each slot of the segment open at ``fd`` whose header is written
    (checked in full only when the page is read); 0 if it cannot be read."""
    try:
        return _slots_in(os.pread(fd, pages * HEADER_SIZE, 0), pages)
    except OSError:
        return 0


def _slots_in(table: bytes, pages: int) -> int:
    """Bit ``i`` set for each header in ``table`` that starts as a page header does."""
    mask = 0
    for slot in range(min(pages, len(table) // HEADER_SIZE)):
        if table[slot * HEADER_SIZE : slot * HEADER_SIZE + len(MAGIC)] == MAGIC:
            mask |= 1 << slot
    return mask


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

    Why segments: one file per page cost an inode allocation and a rename on every store
    (in the kernel, about 1 ms of CPU per page here, under contention for the folder's
    lock), and pages read back one file at a time after they left the OS page cache.
    A store is now one open of the segment, one write of a run of pages' bytes and one
    of their headers, and the kernel reads a segment ahead as one file.

    Writing: whole pages' bytes go around the OS page cache (``O_DIRECT``) where the
    filesystem and the block size allow it; headers, and a file's short last page, go
    through it. Those bytes are in the memory tier already: a page-cache copy would hold
    them in memory twice, and allocating it cost the write-back most of its CPU (writing
    256 MiB into new page-cache memory: about 1 s of kernel time on the VM measured, 37
    ms direct). A page read back soon after it left the memory tier then comes from the
    device. The first write the filesystem refuses (tmpfs, some FUSE ones) turns it off.

    Sharing: readers and writers in several processes may use one folder, lock-free.
    Two processes storing the same page write the same bytes; a reader sees a page only
    once its header is written, after its bytes. A page missing from this process's
    index, in a file folder this process created, is a miss without a look (a cold read
    of a new file would otherwise open its segments in vain); pages another process
    stored there are found after the next rebuild of the index. Recency is shared
    through the segments' mtimes (set on write, and on a disk hit of a segment not
    touched in the last ten seconds). Each process keeps an LRU index of the segments
    of the folder, rebuilt from it (names, sizes, header tables) at start and again
    after every ``max(8, limit/64, pages/8)`` stores (``limit`` in pages), and culls
    the least recently used segments of the whole folder, whoever wrote them. Slack:
    between two rebuilds, each other process may add that many pages unseen, plus one
    ``meta.json`` per file.

    Space: a segment is sparse; it counts as its table plus the pages it holds.

    Reading: each page is read into memory of its own (a recycled page buffer where
    one is free), one ``preadv`` per run of adjacent slots, and its CRC32C checked once
    there. What a process holds never changes after that check, whatever happens to the
    segment: another process writing it, a slot cleared, the file truncated (which
    would kill a reader holding a mapping of it with SIGBUS) or a failing disk.

    Thread-safety: one lock guards the index, the slot masks and the counters; file I/O
    runs outside it. Writers make file folders under a second lock, so that a folder
    this process creates is known as its own before any writer can put a segment in it
    (readers never take that lock). Whether writes bypass the page cache only ever turns
    from on to off, without the lock (a store racing with the first refusal tries once
    more). Segments are not fsynced: a process crash cannot tear them (the kernel holds
    the data), and after a power loss the checksum turns a torn page into a miss.
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
        # Stores between two rebuilds of the index, at least: 1/64 of the limit. A fresh
        # folder was otherwise rebuilt after every few MiB stored (21 times while 256 MiB
        # went in, every segment's table read each time: ~15% of the write-back's CPU).
        self._rescan_floor = max(8, limit // (RESCAN_LIMIT_SHARE * block_size))
        # flags for writes of whole pages' bytes: offsets and lengths must be aligned
        self._direct = _O_DIRECT if block_size % _DIRECT_ALIGN == 0 else 0
        self._suffix = f".{block_size:x}.{self.segment_pages:x}."
        self._lock = threading.Lock()
        self._index = PageIndex(limit)  # segment (relative path) -> bytes
        self._slots: dict[str, int] = {}  # segment -> bit i set if slot i is stored
        self._stores_since_rescan = 0
        # folders known to exist (a write that finds one gone creates it again)
        self._folders: set[str] = set()
        # remote files' folders (relative) this process created, newest last
        self._created: dict[str, None] = {}
        self._tmp_pid = -1
        self._tmp_prefix = ""
        self._tmp_seq = itertools.count()
        self._rescan_lock = threading.Lock()
        self._folder_lock = threading.Lock()  # writers making folders; see _made_folder
        # segments indexed since the running rescan listed the folder: kept by its rebuild
        self._since_listing: dict[str, tuple[int, int]] = {}
        self._rescan()

    # -- pages ---------------------------------------------------------------------------

    def _locate(self, key: PageKey) -> tuple[str, int]:
        """The page's segment (path relative to ``files``) and slot."""
        segment, slot = divmod(key.index, self.segment_pages)
        rel = f"{key.file_id[:2]}/{key.file_id}/{key.version}{self._suffix}{segment:x}.seg"
        return rel, slot

    def holds(self, key: PageKey) -> bool:
        rel, slot = self._locate(key)
        with self._lock:
            return bool(self._slots.get(rel, 0) >> slot & 1)

    def will_need(self, keys: Sequence[PageKey]) -> None:
        # The kernel reads ahead within a file as it is read; a reader moving from one
        # segment to the next would still wait at each start without this hint. The hint
        # reads the span through the OS page cache: the kernel's sequential read-ahead
        # then reads it in large requests into large folios. posix_fadvise(WILLNEED)
        # queued it in 4 KiB folios instead, which read slower and cost more to map: a
        # new process read 256 MiB from disk 14-22% faster with this (median of 7).
        spans: dict[str, list[int]] = {}
        for key in keys:
            rel, slot = self._locate(key)
            spans.setdefault(rel, []).append(slot)
        bs = self.block_size
        for rel, slots in spans.items():
            try:
                fd, _ = self.folder.open_file(rel, os.O_RDONLY)
            except OSError:  # not there, or not to be trusted: the load will say
                continue
            try:
                first, last = min(slots), max(slots)
                # from the segment's start when its first slot is asked for: a reader
                # entering the segment reads its header table first
                start = 0 if first == 0 else self._table + first * bs
                _read_through(fd, start, self._table + (last + 1) * bs - start)
            except OSError:
                pass
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
            with self._lock:
                mask = self._slots.get(rel, 0)
                known = rel in self._index
                ours = rel.rsplit("/", 1)[0] in self._created
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
            self._forget(rel)
            return
        except UntrustedFolderError as exc:  # a folder, a link, a FIFO: one error, removed
            self._forget(rel)
            self.folder.remove(rel)
            loaded[wanted[0][1]] = CorruptPageError(f"page {wanted[0][1].index}: {exc}")
            return
        except OSError as exc:
            for _, key in wanted:
                loaded[key] = CorruptPageError(f"page {key.index}: segment unreadable: {exc!r}")
            return
        try:
            pages, held, st = self._read_slots(fd, wanted, whole_table)
            found = 0
            for slot, key in wanted:
                data = pages.get(slot)
                if data is None:
                    self._clear_bit(rel, slot)  # never written, or cleared
                elif isinstance(data, OSError):
                    loaded[key] = data
                    self._clear_slot(rel, slot)
                else:
                    loaded[key] = data
                    found |= 1 << slot
            if not found:
                return
            assert st is not None
            if time.time() - st.st_mtime > _RECENCY_GRAIN:
                with contextlib.suppress(OSError):
                    os.utime(fd)  # recency that other processes' culling can see
        finally:
            os.close(fd)
        with self._lock:
            mask = self._slots.get(rel, 0) | held | found
            self._slots[rel] = mask
            self._index_segment(rel, mask)
            culled = self._take_culled()
        self._unlink_culled(culled)

    def _read_slots(
        self, fd: int, wanted: list[tuple[int, PageKey]], whole_table: bool
    ) -> tuple[dict[int, PageBuffer | OSError], int, os.stat_result | None]:
        """The pages in ``wanted``'s slots (in order), each checked (or the error that
        makes it unusable; slots holding no page are left out); a mask of the slots the
        table says are written (the whole table, if asked); the segment's stat."""
        first, last = (0, self.segment_pages - 1) if whole_table else (wanted[0][0], wanted[-1][0])
        try:
            table = os.pread(fd, (last - first + 1) * HEADER_SIZE, first * HEADER_SIZE)
        except OSError as exc:  # one error for the segment (clearing it removes it)
            return {wanted[0][0]: exc}, 0, None
        held = _slots_in(table, self.segment_pages) if whole_table else 0
        headers: list[tuple[int, PageKey, bytes, int]] = []
        pages: dict[int, PageBuffer | OSError] = {}
        st: os.stat_result | None = None
        for slot, key in wanted:
            header = table[(slot - first) * HEADER_SIZE : (slot - first + 1) * HEADER_SIZE]
            if len(header) < HEADER_SIZE or not header.startswith(MAGIC):
                continue
            try:
                length = check_header(header, key, self.block_size)
                if st is None:
                    st = os.fstat(fd)
                if st.st_size < self._table + slot * self.block_size + length:
                    raise CorruptPageError(f"page {key.index}: segment truncated")
            except OSError as exc:
                pages[slot] = exc
                continue
            headers.append((slot, key, header, length))
        for run in _runs(headers, ends_run=lambda item: item[3] != self.block_size):
            self._read_run(fd, run, pages)
        return pages, held, st

    def _read_run(self, fd: int, run: list[tuple[int, PageKey, bytes, int]],
                  pages: dict[int, PageBuffer | OSError]) -> None:  # fmt: skip
        """Pages of adjacent slots (whole pages but the last), read with one call into
        buffers of their own, each then checked against its header."""
        buffers = [blank_page_buffer(size) for *_, size in run]
        at = self._table + run[0][0] * self.block_size
        try:
            complete = _vectored_all(os.preadv, fd, buffers, at)
        except OSError as exc:
            for slot, *_ in run:
                pages[slot] = exc
            return
        for (slot, key, header, _), data in zip(run, buffers, strict=True):
            try:
                if not complete:
                    raise CorruptPageError(f"page {key.index}: segment changed while read")
                check_payload(header, key, data)
            except CorruptPageError as exc:
                pages[slot] = exc
                continue
            pages[slot] = data

    def store_page(self, key: PageKey, data: PageBuffer) -> None:
        self.store_pages([(key, data)])

    def store_pages(self, pages: Sequence[tuple[PageKey, PageBuffer]]) -> None:
        segments: dict[str, list[tuple[int, PageKey, PageBuffer]]] = {}
        for key, data in pages:
            rel, slot = self._locate(key)
            segments.setdefault(rel, []).append((slot, key, data))
        for rel, slots in segments.items():
            for run in _runs(sorted(slots, key=lambda item: item[0])):
                self._store_run(rel, run)

    def _store_run(self, rel: str, run: list[tuple[int, PageKey, PageBuffer]]) -> None:
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
        with self._lock:
            mask = self._slots.get(rel, 0)
            for slot, _, _ in run:
                mask |= 1 << slot
            self._slots[rel] = mask
            fits = self._index_segment(rel, mask)
            culled = self._take_culled()
            self._stores_since_rescan += len(run)
            # pages held, counted as whole segments: O(1) under the lock
            due = self._stores_since_rescan >= max(
                self._rescan_floor, len(self._index) * self.segment_pages // 8
            )
        self._unlink_culled(culled)
        if not fits:
            self._forget(rel)
            self.folder.remove(rel)
            raise ValueError(f"a segment does not fit disk_limit={self.limit}")
        if due and self._rescan_lock.acquire(blocking=False):
            try:  # see what other processes stored, and cull the folder as a whole
                self._rescan()
            finally:
                self._rescan_lock.release()

    def _write_run(self, rel: str, run: list[tuple[int, PageKey, PageBuffer]]) -> None:
        """The writes of ``_store_run``."""
        bs = self.block_size
        headers = [page_header(key, bs, data) for _, key, data in run]
        first = run[0][0]
        fd = self._create(rel, os.O_RDWR | os.O_CREAT)
        try:
            table = os.pread(fd, len(run) * HEADER_SIZE, first * HEADER_SIZE)
            # Written once: a slot holding a page (another process's, say) is left as it
            # is (a damaged page's header is cleared first, by the reader that found it).
            free = [i for i in range(len(run))
                    if table[i * HEADER_SIZE : i * HEADER_SIZE + len(MAGIC)] != MAGIC]  # fmt: skip
            whole = [len(data) == bs for _, _, data in run]
            for lo, hi in _spans(free, whole):
                # bytes first, header last: a reader never takes a page whose bytes are
                # not all there (and a crash in between leaves a slot that reads empty)
                at, pages = self._table + (first + lo) * bs, run[lo:hi]
                direct = len(pages) if whole[hi - 1] else len(pages) - 1
                if direct and self._write_direct(fd, pages[:direct], at):
                    at, pages = at + direct * bs, pages[direct:]
                if pages:
                    _pwrite_all(fd, [data for _, _, data in pages], at)
                _pwrite_all(fd, [b"".join(headers[lo:hi])], (first + lo) * HEADER_SIZE)
        finally:
            os.close(fd)

    def _cull_for(self, keep: str, nbytes: int) -> bool:
        """Cull least recently used segments (never ``keep``) until ``nbytes`` are freed;
        whether anything was."""
        culled: list[tuple[str, int]] = []
        with self._lock:
            freed = 0
            for rel in list(self._index):  # least recently used first
                if freed >= nbytes:
                    break
                if rel != keep:
                    size = self._index.cull(rel)
                    self._slots.pop(rel, None)
                    self._since_listing.pop(rel, None)
                    culled.append((rel, size))
                    freed += size
        self._unlink_culled(culled)
        return bool(culled)

    def _write_direct(self, fd: int, run: list[tuple[int, PageKey, PageBuffer]], at: int) -> bool:
        """Write whole pages' bytes at ``at`` around the OS page cache; False if that is
        off, if a buffer may not be aligned (only a mapping's start is), or if the
        filesystem refuses (then off for good): the caller writes them the usual way.

        ``O_DIRECT`` is set on ``fd`` for the write and cleared after (the headers that
        follow are not aligned), where opening the segment a second time with it took
        a path lookup per store: a tenth of a small file's write-back here."""
        if not self._direct or any(type(data) is not mmap.mmap for _, _, data in run):
            return False
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:  # EINVAL: the filesystem does not take O_DIRECT, at the switch or the write
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | self._direct)
            _pwrite_all(fd, [data for _, _, data in run], at)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._direct = 0
            return False
        finally:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        return True

    def discard_page(self, key: PageKey) -> None:
        rel, slot = self._locate(key)
        self._clear_slot(rel, slot)

    # -- metadata ------------------------------------------------------------------------

    def load_meta(self, file_id: str) -> dict[str, Any] | None:
        rel = f"{_file_folder(file_id)}/{META_NAME}"
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
        self._write_atomic(_file_folder(file_id), META_NAME, encode_meta(meta))

    # -- whole files and the folder --------------------------------------------------------

    def invalidate(self, file_id: str, keep_version: str | None = None) -> int:
        folder = _file_folder(file_id)
        try:
            dir_fd, _ = self.folder.open_folder(folder)
        except FileNotFoundError:
            return 0
        removed = 0
        try:
            for name in os.listdir(dir_fd):
                parsed = parse_segment_name(name)
                if parsed is None or parsed[0] == keep_version:
                    continue
                removed += _slots_at(self.folder, dir_fd, name, parsed[2]).bit_count()
                self._forget(f"{folder}/{name}")
                remove_at(dir_fd, name)
        finally:
            os.close(dir_fd)
        if keep_version is None:
            self.folder.remove(folder)
            with self._lock:
                self._folders.discard(folder)
                self._created.pop(folder, None)
        return removed

    def clear(self) -> None:
        with self._lock:
            self._index.forget_all()
            self._slots = {}
            self._since_listing = {}
            self._folders.clear()
            self._created.clear()
        for name in self.folder.listdir(""):
            self.folder.remove(name)

    def usage(self) -> DiskUsage:
        with self._lock:
            usage = self._index.usage()
            return DiskUsage(usage.used, usage.limit, self._pages(), usage.culls, usage.cbytes)

    # -- helpers ---------------------------------------------------------------------------

    def _pages(self) -> int:
        """Pages indexed (caller holds the lock)."""
        return sum(mask.bit_count() for mask in self._slots.values())

    def _segment_bytes(self, mask: int) -> int:
        """Disk space a segment of ours takes: its table and the pages it holds (a
        segment is sparse: slots never written take none)."""
        return self._table + mask.bit_count() * self.block_size

    def _index_segment(self, rel: str, mask: int) -> bool:
        """Record a segment of ours holding ``mask``'s pages as most recently used; False
        if it is larger than the whole limit (caller holds the lock)."""
        size = self._segment_bytes(mask)
        if size > self.limit:
            return False
        if rel in self._index:
            self._index[rel]  # most recently used first, so it is not its own victim
        self._index[rel] = size
        self._since_listing[rel] = (size, mask)
        return True

    def _clear_bit(self, rel: str, slot: int) -> None:
        with self._lock:
            if rel in self._slots:
                self._slots[rel] &= ~(1 << slot)

    def _clear_slot(self, rel: str, slot: int) -> None:
        """Make a slot read as empty (its page is fetched and stored again)."""
        self._clear_bit(rel, slot)
        try:
            fd, _ = self.folder.open_file(rel, os.O_WRONLY)
        except FileNotFoundError:
            return
        except OSError:  # not a file (a folder, a link, a FIFO): remove whatever it is
            self._forget(rel)
            self.folder.remove(rel)
            return
        try:
            _pwrite_all(fd, [bytes(HEADER_SIZE)], slot * HEADER_SIZE)
        except OSError:
            self._forget(rel)
            self.folder.remove(rel)
        finally:
            os.close(fd)

    def _folder_fd(self, folder: str) -> int:
        """A descriptor of ``folder`` (relative), made first if it is missing (never
        made, or removed since by a clear or a cull)."""
        if folder not in self._folders:
            self._made_folder(folder)
        try:
            return self.folder.open_folder(folder)[0]
        except FileNotFoundError:
            self._made_folder(folder)
            return self.folder.open_folder(folder)[0]

    def _create(self, rel: str, flags: int) -> int:
        """Open ``rel`` with ``flags`` (``O_CREAT`` among them), making its folder first
        if it is missing."""
        folder, name = rel.rsplit("/", 1)
        dir_fd = self._folder_fd(folder)
        try:
            return self.folder.open_in(dir_fd, name, flags, rel)
        finally:
            os.close(dir_fd)

    def _write_atomic(self, folder: str, name: str, blob: bytes) -> None:
        dir_fd = self._folder_fd(folder)
        tmp = self._tmp_name()
        try:
            fd = self.folder.open_in(dir_fd, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                _pwrite_all(fd, [blob], 0)
            finally:
                os.close(fd)
            self.folder.replace(dir_fd, tmp, name)
        except BaseException:
            remove_at(dir_fd, tmp)
            raise
        finally:
            os.close(dir_fd)

    def _made_folder(self, folder: str) -> None:
        """Make sure ``folder`` exists; remember it, and whether this process created it.

        Under the folder lock, and marked as created before it is marked as existing: a
        second write-back worker finding the folder made by the first must not put a
        segment in it while a reader could still take it for another process's folder
        (and look on disk for pages it cannot hold)."""
        with self._folder_lock:
            fd, created = self.folder.open_folder(folder, create=True)
            os.close(fd)
            if created and folder.count("/") == 1:  # a remote file's folder
                with self._lock:
                    self._created[folder] = None
                    if len(self._created) > _MAX_CREATED:
                        del self._created[next(iter(self._created))]
            self._folders.add(folder)

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
            self._slots.pop(rel, None)
            self._since_listing.pop(rel, None)

    def _take_culled(self) -> list[tuple[str, int]]:
        """Culled segments to unlink (caller holds the lock)."""
        culled = self._index.take_culled()
        for rel, _ in culled:
            self._slots.pop(rel, None)
            self._since_listing.pop(rel, None)
        return culled

    def _unlink_culled(self, culled: list[tuple[str, int]]) -> None:
        for rel, _ in culled:
            self.folder.remove(rel)

    def _listed(self, folder: str, name: str, dir_fd: int) -> tuple[float, str, int, int] | None:
        """A rescan's entry for file ``name`` of ``folder``: (mtime, segment, bytes,
        slots), or None for what is not a segment. Dead writers' temporaries go, and so
        does anything named like a segment that is not a regular file (a link, a FIFO)."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return None
        parsed = parse_segment_name(name)
        if name.startswith(_TMP_PREFIX):
            stale = time.time() - st.st_mtime > _STALE_TMP_SECONDS
            if _writer_gone(name) or stale or not stat.S_ISREG(st.st_mode):
                remove_at(dir_fd, name)
            return None
        if parsed is None:
            return None
        if not stat.S_ISREG(st.st_mode):
            remove_at(dir_fd, name)
            return None
        rel = f"{folder}/{name}" if folder else name
        # segments of another layout (block size, pages per segment) take room too
        # (their allocated blocks), but hold no page this process can read
        if parsed[1:3] != (self.block_size, self.segment_pages):
            return st.st_mtime, rel, st.st_blocks * 512, 0
        mask = _slots_at(self.folder, dir_fd, name, parsed[2])
        return st.st_mtime, rel, self._segment_bytes(mask), mask

    def _rescan(self) -> None:
        """Rebuild the index from the folder (least recently used first, by mtime), cull
        it to the limit, and remove temporaries of dead writers."""
        found: list[tuple[float, str, int, int]] = []
        with self._lock:
            self._since_listing = {}
        for folder, names, dir_fd in self.folder.walk():
            for name in names:
                entry = self._listed(folder, name, dir_fd)
                if entry is not None:
                    found.append(entry)
        found.sort()
        with self._lock:
            self._stores_since_rescan = 0
            self._index.forget_all()
            self._slots = {}
            for _, rel, size, mask in found:
                if size <= self.limit:
                    self._index[rel] = size
                    self._slots[rel] = mask
            for rel, (size, mask) in self._since_listing.items():  # newer than the listing
                self._index[rel] = size
                self._slots[rel] = self._slots.get(rel, 0) | mask
            culled = self._take_culled()
        self._unlink_culled(culled)


def _file_folder(file_id: str) -> str:
    """A remote file's folder, relative to ``files``."""
    return f"{file_id[:2]}/{file_id}"


def _slots_at(folder: CacheFolder, dir_fd: int, name: str, pages: int) -> int:
    """``stored_slots`` of segment ``name`` in the folder open at ``dir_fd``; 0 if it
    cannot be opened as a regular file of ours."""
    try:
        fd = folder.open_in(dir_fd, name, os.O_RDONLY)
    except OSError:
        return 0
    try:
        return stored_slots(fd, pages)
    finally:
        os.close(fd)


def _runs(
    items: list[_Slotted], ends_run: Callable[[_Slotted], bool] = lambda item: False
) -> Iterator[list[_Slotted]]:
    """Items (slot first, in order of slot) grouped into runs of adjacent slots; an item
    for which ``ends_run`` is true is the last of its run."""
    run: list[_Slotted] = []
    for item in items:
        if run and (item[0] != run[-1][0] + 1 or ends_run(run[-1])):
            yield run
            run = []
        run.append(item)
    if run:
        yield run


def _spans(free: list[int], whole: list[bool]) -> Iterator[tuple[int, int]]:
    """``[lo, hi)`` spans of consecutive positions in ``free`` that one write covers: a
    page that is not whole (a file's last) ends its span, as no slot's bytes follow it."""
    lo = prev = -1
    for i in free:
        if lo >= 0 and (i != prev + 1 or not whole[prev]):
            yield lo, prev + 1
            lo = -1
        if lo < 0:
            lo = i
        prev = i
    if lo >= 0:
        yield lo, prev + 1


def _pwrite_all(fd: int, buffers: Sequence[PageBuffer | bytes], offset: int) -> None:
    """Write ``buffers`` one after another from ``offset``, however many calls it takes."""
    if not _vectored_all(os.pwritev, fd, buffers, offset):
        raise OSError(errno.EIO, "a write made no progress")


def _vectored_all(
    call: Callable[[int, list[memoryview], int], int],
    fd: int,
    buffers: Sequence[PageBuffer | bytes],
    offset: int,
) -> bool:
    """Fill (``os.preadv``) or write (``os.pwritev``) ``buffers`` one after another from
    ``offset``, however many calls it takes; False if a call moved nothing (a read at
    the file's end)."""
    views = [memoryview(b).cast("B") for b in buffers]
    while views:
        done = call(fd, views, offset)
        if done <= 0:
            return False
        offset += done
        while views and done >= len(views[0]):
            done -= len(views.pop(0))
        if views and done:
            views[0] = views[0][done:]
    return True


def _writer_gone(tmp_name: str) -> bool:
    try:
        pid = int(tmp_name[len(_TMP_PREFIX) :].split(".", 1)[0])
    except ValueError:
        return True
    return pid != os.getpid() and not psutil.pid_exists(pid)
