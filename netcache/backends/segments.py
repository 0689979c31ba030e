"""The segment format of the directory backend, as pure functions: names, sizes, slot
masks, runs. No I/O here (the command line reads a cache folder with these alone).

A segment file holds up to ``pages`` consecutive pages of one version of one remote
file: a table of page headers (see :mod:`netcache.backends.base`), padded to an
allocation boundary, then one slot per page at a fixed offset.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeVar

from netcache.backends.base import HEADER_SIZE, MAGIC

LAYOUT = "netcache-v2"  # v2: segment files (v1 held one file per page)
SEGMENT_SUFFIX = ".seg"
META_NAME = "meta.json"
#: Suffix of whole-file copies (``open_local``): ``<version>.<CRC32C>.whole``.
WHOLE_SUFFIX = ".whole"
#: Prefix of files being written, renamed into place once whole.
TMP_PREFIX = ".tmp."
#: Pages a segment file holds at most (8 MiB of 128 KiB pages); fewer under small disk
#: limits, so that culling (a whole segment at a time) stays fine-grained.
MAX_SEGMENT_PAGES = 64

_Slotted = TypeVar("_Slotted", bound=tuple[Any, ...])  # an item whose first field is a slot


class Layout(NamedTuple):
    """The shape of a folder's segments: page size, pages per segment, and the bytes of
    the header table before the first page."""

    block_size: int
    pages: int
    table: int


def segment_pages(block_size: int, limit: int) -> int:
    """Pages per segment file for a disk tier of ``limit`` bytes: a segment is at most
    1/16 of the limit."""
    return max(1, min(MAX_SEGMENT_PAGES, limit // (16 * block_size)))


def table_size(pages: int) -> int:
    """Bytes of a segment's header table: page headers, padded so that page data starts
    on an allocation boundary (aligned as ``O_DIRECT`` writes need)."""
    grain = mmap.ALLOCATIONGRANULARITY
    return -(-pages * HEADER_SIZE // grain) * grain


def segment_suffix(block_size: int, pages: int) -> str:
    """What follows the version in the names of segments of this layout."""
    return f".{block_size:x}.{pages:x}."


def file_folder(file_id: str) -> str:
    """A remote file's folder, relative to the ``files`` folder."""
    return f"{file_id[:2]}/{file_id}"


def segment_path(file_id: str, version: str, suffix: str, segment: int) -> str:
    """A segment's path relative to the ``files`` folder."""
    return f"{file_folder(file_id)}/{version}{suffix}{segment:x}{SEGMENT_SUFFIX}"


def whole_name(version: str, crc: int) -> str:
    """The name of a whole-file copy of ``version`` whose bytes' CRC32C is ``crc``."""
    return f"{version}.{crc:08x}{WHOLE_SUFFIX}"


def whole_version(name: str) -> str | None:
    """The version a whole-file copy's name says, or None if it is not one."""
    if not name.endswith(WHOLE_SUFFIX) or name.count(".") != 2:
        return None
    return name.split(".", 1)[0]


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


def slots_in(table: bytes, pages: int) -> int:
    """Bit ``i`` set for each header in ``table`` that starts as a page header does."""
    mask = 0
    for slot in range(min(pages, len(table) // HEADER_SIZE)):
        if table[slot * HEADER_SIZE : slot * HEADER_SIZE + len(MAGIC)] == MAGIC:
            mask |= 1 << slot
    return mask


def free_slots(table: bytes, count: int) -> list[int]:
    """Positions among the first ``count`` headers of ``table`` that hold no page."""
    return [i for i in range(count)
            if table[i * HEADER_SIZE : i * HEADER_SIZE + len(MAGIC)] != MAGIC]  # fmt: skip


def runs(
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


def spans(free: list[int], whole: list[bool]) -> Iterator[tuple[int, int]]:
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
