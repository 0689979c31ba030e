"""Whole-file local copies for ``open_local``: the file's bytes in order, resident pages
from memory and the rest straight from the remote, concurrently, written by the disk
tier's :class:`~netcache.backends.localcopies.LocalCopies`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from netcache.buffers import PageBuffer
from netcache.cookie import FileCookie
from netcache.errors import ShortReadError
from netcache.firstlook import Span
from netcache.identity import redact_url
from netcache.readahead import READAHEAD_CHUNK_BYTES


class PageReader(Protocol):
    """What a local copy needs of :class:`netcache.reader.Reader`."""

    context: Any
    target: Any
    block_size: int
    verify: bool

    def pin_version(self, tpath: str, refresh: bool = ..., reading: Any = ...,
                    looked: Any = ...) -> FileCookie: ...  # fmt: skip


#: Chunks of ``READAHEAD_CHUNK_BYTES`` a local copy asks the remote for at once (the
#: next group is fetched while one is written: two groups in memory at most).
_LOCAL_AHEAD = 4


def local_copy(reader: PageReader, tpath: str) -> str:
    """The path of a complete local copy of ``tpath``'s current version, in the disk
    tier's folder: one made before and checked, or made now from the pages held,
    the rest fetched ahead concurrently as a sequential reader's are."""
    backend = reader.context.backend
    copies = getattr(backend, "local_copies", None)
    if copies is None:
        raise ValueError(
            "open_local needs a disk tier in a folder: cache_dir=<a path> (not False, "
            "nor a Backend instance without local copies)"
        )
    cookie = reader.pin_version(tpath, reading=((None, None),))
    size = cookie.size or 0
    found = copies.find(cookie.file_id, cookie.version, size)
    if found is not None:
        reader.context.counters.add("disk.lhit")
        return found  # type: ignore[no-any-return]
    path = copies.write(cookie.file_id, cookie.version, size, _in_order(reader, cookie))
    reader.context.counters.add("disk.lmade")
    return path  # type: ignore[no-any-return]


def _in_order(reader: PageReader, cookie: FileCookie) -> Iterator[list[PageBuffer]]:
    """The file's bytes in order, in chunks of buffers: resident pages from memory,
    the rest straight from the remote, ``_LOCAL_AHEAD`` requests at once (a
    whole-file copy neither admits nor stores what it fetches: the copy is it)."""
    size = cookie.size or 0
    step = max(1, READAHEAD_CHUNK_BYTES // reader.block_size) * reader.block_size
    spans = [(lo, min(size, lo + step)) for lo in range(0, size, step)]
    groups = [spans[i : i + _LOCAL_AHEAD] for i in range(0, len(spans), _LOCAL_AHEAD)]
    workers = reader.context.file_workers
    # the next group's requests go out while this one is written (a worker never
    # waits for another: it claims no page)
    pending = workers.submit(_spans_now, reader, cookie, groups[0]) if groups else None
    for k, group in enumerate(groups):
        assert pending is not None
        held = pending.result()
        more = k + 1 < len(groups)
        pending = workers.submit(_spans_now, reader, cookie, groups[k + 1]) if more else None
        for span in group:
            yield held.pop(span)


def _spans_now(reader: PageReader, cookie: FileCookie,
           spans: list[Span]) -> dict[Span, list[PageBuffer]]:  # fmt: skip
    """Each span's bytes, as buffers in order: runs of resident pages from memory,
    the other runs from the remote (all of them at once)."""
    fetcher = reader.context.fetcher
    runs = {span: _runs_by_residence(reader, cookie, span) for span in spans}
    got: dict[Span, list[PageBuffer]] = {}
    for span_runs in runs.values():
        for lo, hi, resident in span_runs:
            data = fetcher.read_resident(cookie, lo, hi) if resident else None
            if data is not None:  # (None if evicted since: fetched with the rest)
                got[lo, hi] = [data]
    missing = [(lo, hi) for rs in runs.values() for lo, hi, _ in rs if (lo, hi) not in got]
    if missing:
        starts, ends = [lo for lo, _ in missing], [hi for _, hi in missing]
        answers = fetcher.remote_ranges(reader.target, cookie, starts, ends, reader.verify)
        for (lo, hi), answer in zip(missing, answers, strict=True):
            if answer.received != hi - lo:
                where = redact_url(cookie.path)
                raise ShortReadError(
                    f"{where}: asked for bytes {lo}-{hi}, the remote sent {answer.received}"
                )
            got[lo, hi] = list(answer.pages)
    return {span: [buf for lo, hi, _ in rs for buf in got[lo, hi]] for span, rs in runs.items()}


def _runs_by_residence(reader: PageReader, cookie: FileCookie,
                   span: Span) -> list[tuple[int, int, bool]]:  # fmt: skip
    """``span`` cut into runs of pages that are all resident, or all not."""
    bs = reader.block_size
    lo, hi = span
    indices = range(lo // bs, -(-hi // bs))
    page_cache = reader.context.page_cache
    absent = {key.index for key in page_cache.absent_pages(cookie.file_id, cookie.version, indices)}
    out: list[tuple[int, int, bool]] = []
    for index in indices:
        page_lo, page_hi, resident = index * bs, min(hi, (index + 1) * bs), index not in absent
        if out and out[-1][2] == resident:
            out[-1] = (out[-1][0], page_hi, resident)
        else:
            out.append((page_lo, page_hi, resident))
    return out
