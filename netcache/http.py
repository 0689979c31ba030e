"""Ranged GET requests to fsspec's HTTP filesystem, streamed straight into page buffers.

fsspec's ``cat_file`` joins an answer's network chunks into one ``bytes`` (a copy of
every byte into fresh memory) that netcache then copied again into pages. Here each
chunk is copied once, as it arrives, into the pages of a :class:`PageFiller`, on the
target's own event loop and session, with the request ``_cat_file`` would make (the
target's options and headers, its URL encoding, its error for a status), which saves
the client CPU on every cold read (``docs/measurements.md``).

fsspec's HTTP module is looked up in ``sys.modules``: a target that is an
``HTTPFileSystem`` has loaded it, and importing netcache does not load it (nor aiohttp)
for others.
"""

from __future__ import annotations

import sys
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.asyn import sync

from netcache._compat import has_fsspecs_http_requests, raise_not_found_for_status
from netcache.answers import Pin
from netcache.buffers import PageFiller
from netcache.concurrency import gather_bounded
from netcache.identity import redact_url


def is_http(target: AbstractFileSystem) -> bool:
    """Whether ``target`` is fsspec's HTTP filesystem, or a subclass of it."""
    http = sys.modules.get("fsspec.implementations.http")
    return http is not None and isinstance(target, http.HTTPFileSystem)


def streams_pages(target: AbstractFileSystem) -> bool:
    """Whether ``target`` is fsspec's HTTP filesystem with fsspec's own ``_cat_file``
    (a subclass that makes its requests otherwise keeps them: its ``cat_file`` is used)."""
    if not is_http(target):
        return False
    return has_fsspecs_http_requests(target)


def if_match_headers(target: AbstractFileSystem, etag: str) -> dict[str, str]:
    """The target's own headers with ``If-Match: etag``: headers given to fsspec's
    ``cat_file`` replace the target's, so they go together."""
    own = getattr(target, "kwargs", {}).get("headers") or {}
    return {**own, "If-Match": etag}


def get_ranges(
    target: AbstractFileSystem,
    path: str,
    ranges: list[tuple[int, int]],
    page_size: int,
    pin: Pin,
    headers: dict[str, str] | None = None,
) -> list[PageFiller]:
    """Each ``[start, end)`` of ``path`` in pages of ``page_size``, requested
    concurrently as fsspec's ``cat_ranges`` does (in the target's ``batch_size``, or
    fsspec's) with ``headers`` added. An answer's pages hold what the server sent, from
    the start of the range: ``received`` says how much (a server that ignores ranges
    sends the whole file, from 0). Each answer is checked against its request and
    ``pin`` (:mod:`netcache.answers`). Errors are fsspec's (a 404 is
    ``FileNotFoundError``, another status aiohttp's ``ClientResponseError`` with its
    ``status``), or netcache's for an answer that is not what was asked; every request
    ends before the first is raised."""
    return sync(target.loop, _get_ranges, target, path, ranges, page_size, pin, headers or {})  # type: ignore[no-any-return]


async def _get_ranges(
    target: Any,
    path: str,
    ranges: list[tuple[int, int]],
    page_size: int,
    pin: Pin,
    headers: dict[str, str],
) -> list[PageFiller]:
    where = redact_url(path)
    options = target.kwargs.copy()
    base = {**(options.pop("headers", None) or {}), **headers}
    session = await target.set_session()
    url = target.encode_url(path)

    async def one(start: int, end: int) -> PageFiller:
        ranged = {**base, "Range": f"bytes={start}-{end - 1}"}
        async with session.get(url, headers=ranged, **options) as answer:
            raise_not_found_for_status(target, answer, path)
            pin.check_version(
                where, answer.headers.get("ETag"), answer.headers.get("Last-Modified")
            )
            nbytes = answer.content_length
            if nbytes is None or answer.headers.get("Content-Encoding", "identity") != "identity":
                # its length is known at the end only (chunked, or decoded as it comes)
                pages = PageFiller.whole(page_size, await answer.read())
            else:
                # sized as the answer says (the caller compares it with what was asked): a
                # shorter answer, or the whole file for a server that ignores ranges, is
                # then in pages of its own length
                pages = PageFiller(page_size, nbytes)
                async for chunk in answer.content.iter_any():
                    pages.feed(chunk)
            content_range = answer.headers.get("Content-Range") if answer.status == 206 else None
            pin.check_range(where, start, end, content_range, pages.received)
            return pages

    # at most the target's batch of requests at once, as its _cat_ranges sends them
    answers = await gather_bounded([one(start, end) for start, end in ranges], target.batch_size)
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    return answers  # type: ignore[return-value]
