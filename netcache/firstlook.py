"""First look: a remote file's version, size and the bytes of its first read, in the
first read's own requests.

Opening a file needs its size and version before the first read. fsspec asks HTTP and
S3 for them with a HEAD, and the first read then sends a GET: two round trips. The
headers of a ranged GET carry the same facts (``Content-Range`` says the size, ``ETag``
and ``Last-Modified``, or S3's ``VersionId``, the version), so a cold read over HTTP or
S3 asks for the pages it needs at once (an open, for the file's first bytes; a
``cat_ranges``, for the pages of all its ranges, concurrently), and takes the version
from the answers: they must all name the same one.

A missing file raises ``FileNotFoundError`` at once, as ``info()`` would. Anything else
unusual (another status than 200 or 206, an encoded body, no size in the headers, a
short body, answers naming different versions) answers None, and the caller asks
``info()`` as before: errors keep the form fsspec gives them, at the cost of a second
request on that path only.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from fsspec import AbstractFileSystem
from fsspec.asyn import sync

from netcache.buffers import PageFiller
from netcache.concurrency import gather_bounded
from netcache.http import streams_pages
from netcache.identity import redact_url
from netcache.retry import Retries, is_transient
from netcache.s3 import get_ranges_async as get_s3_ranges
from netcache.s3 import is_s3

if TYPE_CHECKING:
    from fsspec.implementations.http import HTTPFileSystem

#: Told of a first look that fell back to ``info()``: the path, and the error if any.
FellBack = Callable[[str, "BaseException | None"], None]

#: Bytes a first look asks for when a file is opened or read whole: whole small files,
#: and the first read of most others (bytes that a file's first read does not use are
#: the price of the saved round trip).
FIRST_LOOK_BYTES = 1 << 20

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
#: What names a version in an answer's info: every answer of one look must agree.
_HTTP_VERSION = ("size", "ETag", "Last-Modified")
_S3_VERSION = ("size", "ETag", "VersionId")

#: ``[start, end)``, in bytes.
Span = tuple[int, int]
#: One answer: the info it gives, and its bytes in pages.
Answer = tuple[dict[str, Any], PageFiller]
#: What a first look found: the file's info, and the bytes of each span from its start.
Found = tuple[dict[str, Any], list[tuple[int, PageFiller]]]


def look_spans(
    ranges: Iterable[tuple[int | None, int | None]], page_size: int, limit: int
) -> list[Span]:
    """The pages that reads of ``ranges`` of a file of unknown size need, as spans of
    whole pages in order, apart (adjacent ones joined: one request each). A range is
    ``(start, end)``; ``None`` is the start, or the end, of the file, and a read from the
    start to the end asks for ``FIRST_LOOK_BYTES``. No spans (ask ``info()`` first) if
    a range counts from the end of the file or reads to it from elsewhere (the size is
    needed), or if the spans come to more than ``limit`` bytes."""
    spans = []
    for start, end in ranges:
        start = start or 0
        if end is None:
            if start:
                return []
            end = FIRST_LOOK_BYTES
        if start < 0 or end < 0:
            return []
        if start < end:
            spans.append((start // page_size * page_size, -(-end // page_size) * page_size))
    joined: list[Span] = []
    for lo, hi in sorted(spans):
        if joined and lo <= joined[-1][1]:
            joined[-1] = (joined[-1][0], max(hi, joined[-1][1]))
        else:
            joined.append((lo, hi))
    return joined if sum(hi - lo for lo, hi in joined) <= limit else []


#: What a first look at one file found: its info and each span's bytes; None where the
#: target offers no such request or an answer was not plain (ask ``info()``); or the
#: ``FileNotFoundError`` that ``info()`` would raise.
Looked = Found | FileNotFoundError | None


def first_look(
    target: AbstractFileSystem,
    path: str,
    spans: list[Span],
    page_size: int,
    retries: Retries | None = None,
    fell_back: FellBack | None = None,
) -> Found | None:
    """``(info, [(start, bytes) of each span])`` of ``path`` (a span's bytes in pages of
    ``page_size``, as they arrive, and cut short by the end of the file), or None where
    the target offers no such request or an answer is not plain; raises
    ``FileNotFoundError`` if there is no such file."""
    if not spans:
        return None
    looked = first_looks(target, {path: spans}, page_size, retries, fell_back)[path]
    if isinstance(looked, FileNotFoundError):  # as info() would say it
        raise looked
    return looked


def first_looks(
    target: AbstractFileSystem,
    spans: dict[str, list[Span]],
    page_size: int,
    retries: Retries | None = None,
    fell_back: FellBack | None = None,
) -> dict[str, Looked]:
    """A first look at each file of ``spans`` (path -> its spans), all of them at once
    on the target's event loop, as fsspec's ``cat`` of many files sends its requests.
    Each file's look is made again after a transient error, as ``retries`` says. A look
    that could be taken but answers None (an error, an answer that is not plain) is
    reported to ``fell_back`` with its error, if any: the caller then asks ``info()``."""
    if streams_pages(target):  # a subclass with requests of its own is asked info()
        look = _http_first_look
    elif is_s3(target):
        look = _s3_first_look
    else:
        return dict.fromkeys(spans)

    async def one_file(path: str, file_spans: list[Span]) -> Found | None:
        if retries is None:
            return await look(target, path, file_spans, page_size)
        return await retries.call_async(lambda: look(target, path, file_spans, page_size))

    async def all_files() -> list[Any]:
        return await asyncio.gather(*(one_file(path, file_spans)
                                      for path, file_spans in spans.items()),
                                    return_exceptions=True)  # fmt: skip

    try:
        found = sync(target.loop, all_files)
    except Exception as exc:  # the caller's info() raises the error in fsspec's own form
        found = [exc] * len(spans)
    out: dict[str, Looked] = {}
    for path, looked in zip(spans, found, strict=True):
        # anything else than no such file: info() says it in fsspec's own form
        failed = isinstance(looked, BaseException) and not isinstance(looked, FileNotFoundError)
        out[path] = None if failed else looked
        if (failed or looked is None) and fell_back is not None:
            fell_back(path, looked if failed else None)
    return out


def _agreed(
    spans: list[Span], answers: Sequence[Answer | BaseException | None], version: tuple[str, ...]
) -> Found | None:
    """The first answer's info and every span's bytes, if all came and all name one
    version (a file changed between two of the requests does not)."""
    if not answers or any(a is None or isinstance(a, BaseException) for a in answers):
        return None
    looked: list[Answer] = answers  # type: ignore[assignment]
    info = looked[0][0]
    if any([i.get(f) for f in version] != [info.get(f) for f in version] for i, _ in looked):
        return None
    return info, [(start, body) for (start, _), (_, body) in zip(spans, looked, strict=True)]


async def _s3_first_look(target: Any, path: str, spans: list[Span], page_size: int) -> Found | None:
    """GetObjects of the spans: each answer says what s3fs's HEAD-based ``info()`` does
    (an empty object, or a span beyond the end, answers a range with an error:
    ``info()`` then)."""
    try:
        answers = await get_s3_ranges(target, path, spans, page_size, None)
    except FileNotFoundError:
        # no such object: a prefix of others is a folder, as info() would find by listing
        if await target._isdir(path):
            return {"name": path, "size": 0, "type": "directory"}, []
        raise
    bucket, key, _ = target.split_path(path)
    looked: list[Answer | None] = []
    for (start, end), (answer, body) in zip(spans, answers, strict=True):
        match = _CONTENT_RANGE.fullmatch(answer.get("ContentRange") or "")
        if (match is None or int(match[1]) != start
                or body.received != min(int(match[2]) + 1, end) - start):  # fmt: skip
            return None
        # the fields s3fs's info() takes from a HEAD, so that a recheck finds this version
        info = {
            "ETag": answer.get("ETag", ""),
            "LastModified": answer.get("LastModified", ""),
            "size": int(match[3]),
            "name": f"{bucket}/{key}",
            "type": "file",
            "StorageClass": answer.get("StorageClass", "STANDARD"),
            "VersionId": answer.get("VersionId"),
            "ContentType": answer.get("ContentType"),
        }
        looked.append((info, body))
    return _agreed(spans, looked, _S3_VERSION)


async def _http_first_look(
    target: HTTPFileSystem, path: str, spans: list[Span], page_size: int
) -> Found | None:
    session = await target.set_session()
    kwargs = dict(target.kwargs)
    headers = dict(kwargs.pop("headers", None) or {})
    headers["Accept-Encoding"] = "identity"  # as fsspec's HEAD: the size of the bytes
    url = target.encode_url(path)

    async def look(start: int, end: int) -> Answer | None:
        ranged = {**headers, "Range": f"bytes={start}-{end - 1}"}
        async with session.get(url, headers=ranged, **kwargs) as r:
            if r.status == 404:
                raise FileNotFoundError(redact_url(path))  # as fsspec's info(), but redacted
            if r.status >= 500:
                r.raise_for_status()  # transient: the look is made again (netcache.retry)
            if r.headers.get("Content-Encoding", "identity") not in ("identity", ""):
                return None
            if r.status == 206:
                match = _CONTENT_RANGE.fullmatch(r.headers.get("Content-Range", ""))
                if match is None or int(match[1]) != start:
                    return None
                size, want = int(match[3]), min(int(match[2]) + 1, end) - start
            elif r.status == 200 and start == 0 and "Content-Length" in r.headers:
                size = int(r.headers["Content-Length"])  # ranges ignored: the whole file
                want = min(size, end)
            else:
                return None
            # reading stops at ``want``: the rest of an unranged answer is left unread
            # (leaving the block closes the connection instead of draining it)
            body = PageFiller(page_size, want)
            while body.received < want:
                chunk = await r.content.readany()
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", want)  # a short body: info() then
                body.feed(memoryview(chunk)[: want - body.received])
            info: dict[str, Any] = {"name": path, "size": size, "type": "file", "url": str(r.url)}
            if "Content-Type" in r.headers:
                info["mimetype"] = r.headers["Content-Type"].partition(";")[0]
            if r.headers.get("Accept-Ranges") == "none":
                info["partial"] = False
            # the fields fsspec's info() takes from a HEAD that name the whole file's
            # version (a range's Content-MD5 or Digest would name the range's bytes only)
            for field in ("ETag", "Last-Modified"):
                if r.headers.get(field):
                    info[field] = r.headers[field]
            return info, body

    # concurrently, at most the target's batch at once, as its _cat_ranges sends them
    answers = await gather_bounded([look(*span) for span in spans], target.batch_size)
    for answer in answers:
        if isinstance(answer, FileNotFoundError):
            raise answer
    for answer in answers:
        if isinstance(answer, Exception) and is_transient(answer):
            raise answer  # the whole look is made again, as any request is
    return _agreed(spans, answers, _HTTP_VERSION)
