"""Ranged GetObject requests to an s3fs target, with the answer's headers.

fsspec's ``cat_file`` returns an S3 object's bytes only, and takes no condition: reading
a range of one version took a GET and then a HEAD (to see that the version had not
changed meanwhile), and opening a file a HEAD before the first GET. A GetObject answer
carries the object's size (``ContentRange``) and version (``ETag``, ``VersionId``), and
the request takes ``IfMatch``: one request does each.

s3fs is looked up in ``sys.modules``: a target that is an ``S3FileSystem`` has loaded it,
and importing netcache does not load it (nor botocore) for others.
"""

from __future__ import annotations

import sys
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.asyn import sync

from netcache._compat import call_s3, s3_error_wrapper
from netcache.answers import Pin
from netcache.buffers import PageFiller
from netcache.concurrency import MAX_CONCURRENT_REQUESTS, gather_bounded
from netcache.errors import FileChangedError
from netcache.identity import redact_url


def is_s3(target: AbstractFileSystem) -> bool:
    """Whether ``target`` is s3fs's filesystem (and its requests can be made here)."""
    core = sys.modules.get("s3fs.core")
    return core is not None and isinstance(target, core.S3FileSystem)


def get_ranges(
    target: AbstractFileSystem,
    path: str,
    ranges: list[tuple[int, int]],
    page_size: int,
    pin: Pin,
    if_match: str | None = None,
) -> list[tuple[dict[str, Any], PageFiller]]:
    """``(answer headers, pages)`` of each ``[start, end)`` of ``path``, requested
    concurrently on the target's event loop (``MAX_CONCURRENT_REQUESTS`` at a time, or
    the target's ``batch_size``). Each body is read a page at a time into pages of
    ``page_size`` as it arrives, not joined into one ``bytes`` first (see
    :mod:`netcache.http`). With ``if_match``, an object whose ETag is another raises
    :class:`FileChangedError`; other errors are s3fs's own (a missing object is
    ``FileNotFoundError``). Each answer is checked against its request and ``pin``
    (:mod:`netcache.answers`)."""
    return sync(target.loop, get_ranges_async, target, path, ranges, page_size, if_match, pin)  # type: ignore[no-any-return]


async def get_ranges_async(
    target: Any,
    path: str,
    ranges: list[tuple[int, int]],
    page_size: int,
    if_match: str | None,
    pin: Pin | None = None,
) -> list[tuple[dict[str, Any], PageFiller]]:
    """``get_ranges`` on the target's loop; ``pin`` None (a first look, which learns
    the version from the answers) checks nothing."""
    bucket, key, version = target.split_path(path)
    where = redact_url(path)
    condition: dict[str, str] = {}
    if version:
        condition["VersionId"] = version
    if if_match is not None:
        condition["IfMatch"] = if_match

    async def request(start: int, end: int) -> tuple[dict[str, Any], PageFiller]:
        # s3fs's own request path: its options, retries and error translation
        answer = await call_s3(
            target,
            "get_object",
            Bucket=bucket,
            Key=key,
            Range=f"bytes={start}-{end - 1}",
            **condition,
        )
        body = answer.pop("Body")
        try:
            # sized as the answer says: S3 answers a range beyond the end with fewer bytes
            pages = PageFiller(page_size, answer.get("ContentLength", end - start))
            while chunk := await body.read(page_size):  # the body checks its length at the end
                pages.feed(chunk)
        finally:
            body.close()
        if pin is not None:
            pin.check_version(where, answer.get("ETag"), None)
            pin.check_range(where, start, end, answer.get("ContentRange"), pages.received)
        return answer, pages

    # and, as s3fs's cat_file does, the request made again when the body breaks off
    retry = s3_error_wrapper()

    async def one(start: int, end: int) -> tuple[dict[str, Any], PageFiller]:
        try:
            if retry is None:
                return await request(start, end)
            return await retry(request, args=(start, end), retries=target.retries)  # type: ignore[no-any-return]
        except OSError as exc:
            if _precondition_failed(exc):
                # from None: the client's error holds the URL whole
                raise FileChangedError(f"{redact_url(path)} changed while open") from None
            raise

    # every request runs to its end (bodies closed) before the first error is raised
    limit = getattr(target, "batch_size", None) or MAX_CONCURRENT_REQUESTS
    answers = await gather_bounded([one(start, end) for start, end in ranges], limit)
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    return answers  # type: ignore[return-value]


def _precondition_failed(exc: BaseException) -> bool:
    """Whether s3fs's error, or the botocore error under it, is S3's 412."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            error = response.get("Error") or {}
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if error.get("Code") == "PreconditionFailed" or status == 412:
                return True
        seen = seen.__cause__
    return False
