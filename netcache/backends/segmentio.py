"""File I/O of the directory backend: vectored reads and writes, writes around the OS
page cache (``O_DIRECT``), read hints, private folders made on demand, atomic writes
and the names of temporaries. Everything that makes a system call on a segment is here,
so a test counting system calls patches this module alone.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import mmap
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Sequence

import psutil

from netcache.backends.base import HEADER_SIZE, MAGIC, check_header, check_payload
from netcache.backends.folder import CacheFolder, remove_at
from netcache.backends.segments import (
    TMP_PREFIX,
    WHOLE_SUFFIX,
    Layout,
    parse_segment_name,
    runs,
    slots_in,
)
from netcache.buffers import PageBuffer, blank_page_buffer, empty_page_buffer
from netcache.errors import CorruptPageError
from netcache.page import PageKey

#: Bytes a hint copies at a time where it cannot use sendfile (into a buffer of each
#: read-ahead thread's).
HINT_READ_BYTES = 1 << 20
O_DIRECT: int = getattr(os, "O_DIRECT", 0)
#: What O_DIRECT asks of offsets and lengths (the logical block size of the devices in
#: use, 512 or 4096); page buffers are mappings, so their addresses are aligned too.
DIRECT_ALIGN = 4096
#: Seconds after which a temporary is removed by a rescan, whoever wrote it.
STALE_TMP_SECONDS = 3600.0
#: Folders a process remembers having created, at most (forgetting one only costs
#: opening files that are not there).
MAX_CREATED = 1 << 16

_hint_buffers = threading.local()
#: sendfile's errors where it cannot send a file to /dev/null (not Linux, say): hints
#: then copy into a buffer instead.
_NO_SENDFILE = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSOCK, errno.EOPNOTSUPP})
#: Whether hints may use sendfile: cleared, for good, the first time it is refused.
_sendfile_hints = hasattr(os, "sendfile")


def read_through(fd: int, start: int, length: int) -> None:
    """Read ``length`` bytes of ``fd`` from ``start`` into the OS page cache.

    ``sendfile`` to /dev/null reads them through the page cache, with the kernel's
    sequential read-ahead in large folios, and copies nothing out (measured against a
    copy into a buffer in docs/measurements.md). /dev/null is opened for
    each hint: a descriptor kept open could be closed and its number reused for another
    file (a daemon closing every descriptor after a fork), which the hint would then
    write into. Where sendfile is refused, the bytes are copied into a buffer."""
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
    copy_through(fd, start, end - start)


def copy_through(fd: int, start: int, length: int) -> None:
    """Read ``length`` bytes of ``fd`` from ``start`` into the OS page cache, through a
    buffer of the calling thread's (reused: fresh memory costs more than the read).

    The buffer is a mapping, so page-aligned like the page cache it is copied from: a
    large ``bytearray`` starts 16 bytes into a page (malloc's header), and the kernel's
    copy into it is several times slower, its loads and stores 16 bytes apart aliasing
    in the CPU's 4 KiB store-forwarding check."""
    buf = getattr(_hint_buffers, "buf", None)
    if buf is None:
        buf = _hint_buffers.buf = memoryview(empty_page_buffer(HINT_READ_BYTES))
    end = start + length
    while start < end:
        n = os.preadv(fd, [buf[: min(len(buf), end - start)]], start)
        if n <= 0:
            return  # the segment ends sooner (a page not stored): nothing more to read
        start += n


def pwrite_all(fd: int, buffers: Sequence[PageBuffer | bytes], offset: int) -> None:
    """Write ``buffers`` one after another from ``offset``, however many calls it takes."""
    if not vectored_all(os.pwritev, fd, buffers, offset):
        raise OSError(errno.EIO, "a write made no progress")


def vectored_all(
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


def stored_slots(fd: int, pages: int) -> int:
    """Bit ``i`` set for each slot of the segment open at ``fd`` whose header is written
    (checked in full only when the page is read); 0 if it cannot be read."""
    try:
        return slots_in(os.pread(fd, pages * HEADER_SIZE, 0), pages)
    except OSError:
        return 0


def slots_at(folder: CacheFolder, dir_fd: int, name: str, pages: int) -> int:
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


def clear_header(fd: int, slot: int) -> None:
    """Make ``slot`` of the segment open at ``fd`` read as empty."""
    pwrite_all(fd, [bytes(HEADER_SIZE)], slot * HEADER_SIZE)


class DirectWrites:
    """Writes of whole pages around the OS page cache, while the filesystem allows it.

    Thread-safe without a lock: the switch only ever turns from on to off (a write
    racing with the first refusal tries once more, and is written the usual way)."""

    def __init__(self, block_size: int) -> None:
        # offsets and lengths must be aligned
        self.flag = O_DIRECT if block_size % DIRECT_ALIGN == 0 else 0

    def write(self, fd: int, buffers: Sequence[PageBuffer], at: int) -> bool:
        """Write ``buffers`` at ``at`` around the OS page cache; False if that is off, if a
        buffer may not be aligned (only a mapping's start is), or if the filesystem
        refuses (then off for good): the caller writes them the usual way.

        ``O_DIRECT`` is set on ``fd`` for the write and cleared after (the headers that
        follow are not aligned), where opening the segment a second time with it took a
        path lookup per store."""
        if not self.flag or any(type(data) is not mmap.mmap for data in buffers):
            return False
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:  # EINVAL: the filesystem does not take O_DIRECT, at the switch or the write
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | self.flag)
            pwrite_all(fd, buffers, at)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.flag = 0
            return False
        finally:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        return True


class TempNames:
    """Names for temporaries: by pid (a rescan removes the temporaries of dead writers),
    a random token (pids are reused) and a counter; made again in a forked child.
    Thread-safe: ``itertools.count`` is atomic under the GIL, and a race on the prefix
    after a fork sets it twice to equally good values."""

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._seq = itertools.count()

    def next(self) -> str:
        if self._pid != os.getpid():
            self._prefix = f"{TMP_PREFIX}{os.getpid()}.{secrets.token_hex(4)}-"
            self._pid = os.getpid()
        return f"{self._prefix}{next(self._seq)}"


def writer_gone(tmp_name: str) -> bool:
    """Whether the process that wrote temporary ``tmp_name`` has ended."""
    try:
        pid = int(tmp_name[len(TMP_PREFIX) :].split(".", 1)[0])
    except ValueError:
        return True
    return pid != os.getpid() and not psutil.pid_exists(pid)


class Folders:
    """The file folders under a :class:`CacheFolder`, made on demand (private, as the
    folder makes them), and which of them this process created.

    A folder this process creates is reported (``on_created``) before any writer of this
    process may put a segment in it: a reader must not take it for another process's
    folder (and look on disk for pages it cannot hold).

    Locking: one lock guards the sets of folders known and being made, held for set
    operations only. Making a folder (I/O) and reporting it happen outside it; a second
    writer wanting the same folder meanwhile waits for the first to finish making it,
    which it always does (``finally``), and then makes sure of it itself.
    """

    def __init__(self, folder: CacheFolder, on_created: Callable[[str], None]) -> None:
        self.folder = folder
        self._on_created = on_created
        self._lock = threading.Lock()
        self._known: set[str] = set()  # known to exist (a write finding one gone remakes it)
        self._making: dict[str, threading.Event] = {}
        self._temps = TempNames()

    def forget(self, folder: str | None = None) -> None:
        """Forget that ``folder`` (every folder, if None) exists."""
        with self._lock:
            if folder is None:
                self._known.clear()
            else:
                self._known.discard(folder)

    def open(self, folder: str) -> int:
        """A descriptor of ``folder`` (relative), made first if it is missing (never made,
        or removed since by a clear or a cull)."""
        if folder not in self._known:
            self._make(folder)
        try:
            return self.folder.open_folder(folder)[0]
        except FileNotFoundError:
            self._make(folder)
            return self.folder.open_folder(folder)[0]

    def create(self, rel: str, flags: int) -> int:
        """Open ``rel`` with ``flags`` (``O_CREAT`` among them), making its folder first."""
        folder, name = rel.rsplit("/", 1)
        dir_fd = self.open(folder)
        try:
            return self.folder.open_in(dir_fd, name, flags, rel)
        finally:
            os.close(dir_fd)

    def temp_name(self) -> str:
        """A fresh name for a temporary (see :class:`TempNames`)."""
        return self._temps.next()

    def write_atomic(self, folder: str, name: str, blob: bytes) -> None:
        """Put ``blob`` at ``folder/name`` whole or not at all: written to a temporary,
        then renamed over it."""
        dir_fd = self.open(folder)
        tmp = self._temps.next()
        try:
            fd = self.folder.open_in(dir_fd, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                pwrite_all(fd, [blob], 0)
            finally:
                os.close(fd)
            self.folder.replace(dir_fd, tmp, name)
        except BaseException:
            remove_at(dir_fd, tmp)
            raise
        finally:
            os.close(dir_fd)

    def _make(self, folder: str) -> None:
        with self._lock:
            making = self._making.get(folder)
            if making is None:
                making = self._making[folder] = threading.Event()
                mine = True
            else:
                mine = False
        if not mine:
            making.wait()  # set by the maker in its finally, after one mkdir
        try:
            fd, created = self.folder.open_folder(folder, create=True)
            os.close(fd)
            if created and folder.count("/") == 1:  # a remote file's folder
                self._on_created(folder)
            with self._lock:
                self._known.add(folder)
        finally:
            if mine:
                with self._lock:
                    del self._making[folder]
                making.set()


def read_slots(
    fd: int, wanted: list[tuple[int, PageKey]], whole_table: bool, layout: Layout
) -> tuple[dict[int, PageBuffer | OSError], int, os.stat_result | None]:
    """The pages in ``wanted``'s slots (in order) of the segment open at ``fd``, each
    checked (or the error that makes it unusable; slots holding no page are left out);
    a mask of the slots the table says are written (the whole table, if asked); the
    segment's stat."""
    bs = layout.block_size
    first, last = (0, layout.pages - 1) if whole_table else (wanted[0][0], wanted[-1][0])
    try:
        table = os.pread(fd, (last - first + 1) * HEADER_SIZE, first * HEADER_SIZE)
    except OSError as exc:  # one error for the segment (clearing it removes it)
        return {wanted[0][0]: exc}, 0, None
    held = slots_in(table, layout.pages) if whole_table else 0
    headers: list[tuple[int, PageKey, bytes, int]] = []
    pages: dict[int, PageBuffer | OSError] = {}
    st: os.stat_result | None = None
    for slot, key in wanted:
        header = table[(slot - first) * HEADER_SIZE : (slot - first + 1) * HEADER_SIZE]
        if len(header) < HEADER_SIZE or not header.startswith(MAGIC):
            continue
        try:
            length = check_header(header, key, bs)
            if st is None:
                st = os.fstat(fd)
            if st.st_size < layout.table + slot * bs + length:
                raise CorruptPageError(f"page {key.index}: segment truncated")
        except OSError as exc:
            pages[slot] = exc
            continue
        headers.append((slot, key, header, length))
    for run in runs(headers, ends_run=lambda item: item[3] != bs):
        _read_run(fd, run, pages, layout)
    return pages, held, st


def _read_run(fd: int, run: list[tuple[int, PageKey, bytes, int]],
              pages: dict[int, PageBuffer | OSError], layout: Layout) -> None:  # fmt: skip
    """Pages of adjacent slots (whole pages but the last), read with one call into
    buffers of their own, each then checked against its header."""
    buffers = [blank_page_buffer(size) for *_, size in run]
    at = layout.table + run[0][0] * layout.block_size
    try:
        complete = vectored_all(os.preadv, fd, buffers, at)
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


def listed(folder: CacheFolder, rel_folder: str, name: str, dir_fd: int, layout: Layout,
           segment_bytes: Callable[[int], int]) -> tuple[float, str, int, int] | None:  # fmt: skip
    """A rescan's entry for file ``name`` of ``rel_folder``: (mtime, segment, bytes,
    slots), or None for what is not a segment. Dead writers' temporaries go, and so
    does anything named like a segment that is not a regular file (a link, a FIFO)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    parsed = parse_segment_name(name)
    if name.endswith(WHOLE_SUFFIX) and not name.startswith(TMP_PREFIX):
        if not stat.S_ISREG(st.st_mode):
            remove_at(dir_fd, name)
            return None
        rel = f"{rel_folder}/{name}" if rel_folder else name
        return st.st_mtime, rel, st.st_size, 0
    if name.startswith(TMP_PREFIX):
        stale = time.time() - st.st_mtime > STALE_TMP_SECONDS
        if writer_gone(name) or stale or not stat.S_ISREG(st.st_mode):
            remove_at(dir_fd, name)
        return None
    if parsed is None:
        return None
    if not stat.S_ISREG(st.st_mode):
        remove_at(dir_fd, name)
        return None
    rel = f"{rel_folder}/{name}" if rel_folder else name
    # segments of another layout (block size, pages per segment) take room too
    # (their allocated blocks), but hold no page this process can read
    if parsed[1:3] != (layout.block_size, layout.pages):
        return st.st_mtime, rel, st.st_blocks * 512, 0
    mask = slots_at(folder, dir_fd, name, parsed[2])
    return st.st_mtime, rel, segment_bytes(mask), mask
