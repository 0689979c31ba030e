"""First look: a remote file's version, size and first bytes from one request.

Opening a file needs its size and version before the first read. fsspec asks HTTP and
S3 for them with a HEAD, and the first read then sends a GET: two round trips for a
small file. The headers of a ranged GET carry the same facts (``Content-Range`` says the
size, ``ETag`` and ``Last-Modified``, or S3's ``VersionId``, the version), so a cold open
over HTTP or S3 asks once for the file's first bytes instead and the first read is
served from them.

A missing file raises ``FileNotFoundError`` at once, as ``info()`` would. Anything else
unusual (another status than 200 or 206, an encoded body, no size in the headers, a
short body) answers None, and the caller asks ``info()`` as before: errors keep the form
fsspec gives them, at the cost of a second request on that path only.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

from fsspec import AbstractFileSystem
from fsspec.asyn import sync

from netcache.buffers import PageFiller
from netcache.http import is_http
from netcache.s3 import get_ranges, is_s3

if TYPE_CHECKING:
    from fsspec.implementations.http import HTTPFileSystem

#: Bytes a first look asks for: whole small files, and the first read of most others
#: (bytes that a file's first read does not use are the price of the saved round trip).
FIRST_LOOK_BYTES = 1 << 20

_CONTENT_RANGE = re.compile(r"bytes 0-(\d+)/(\d+)")


def first_look(
    target: AbstractFileSystem, path: str, nbytes: int, page_size: int
) -> tuple[dict[str, Any], PageFiller] | None:
    """``(info, first bytes)`` of ``path`` (at most ``nbytes``, all of a smaller file, in
    pages of ``page_size`` as they arrive), or None where the target offers no such
    request or the answer is not plain; raises ``FileNotFoundError`` if there is no
    such file."""
    if nbytes <= 0:
        return None
    try:
        if is_http(target):
            return sync(target.loop, _http_first_look, target, path, nbytes, page_size)  # type: ignore[no-any-return]
        if is_s3(target):
            return _s3_first_look(target, path, nbytes, page_size)
    except FileNotFoundError:  # as info() would say it: asking again costs a request
        raise
    except Exception:  # the caller's info() raises the error in fsspec's own form
        return None
    return None


def _s3_first_look(
    target: Any, path: str, nbytes: int, page_size: int
) -> tuple[dict[str, Any], PageFiller] | None:
    """A GetObject of the first bytes: its answer says what s3fs's HEAD-based ``info()``
    does (an empty object answers a range with an error: ``info()`` then)."""
    try:
        answer, body = get_ranges(target, path, [(0, nbytes)], page_size)[0]
    except FileNotFoundError:
        # no such object: a prefix of others is a folder, as info() would find by listing
        if target.isdir(path):
            return {"name": path, "size": 0, "type": "directory"}, PageFiller(page_size, 0)
        raise
    match = _CONTENT_RANGE.fullmatch(answer.get("ContentRange") or "")
    if match is None or body.received != min(int(match[1]) + 1, nbytes):
        return None
    bucket, key, _ = target.split_path(path)
    # the fields s3fs's info() takes from a HEAD, so that a recheck finds this version
    info = {
        "ETag": answer.get("ETag", ""),
        "LastModified": answer.get("LastModified", ""),
        "size": int(match[2]),
        "name": f"{bucket}/{key}",
        "type": "file",
        "StorageClass": answer.get("StorageClass", "STANDARD"),
        "VersionId": answer.get("VersionId"),
        "ContentType": answer.get("ContentType"),
    }
    return info, body


async def _http_first_look(
    target: HTTPFileSystem, path: str, nbytes: int, page_size: int
) -> tuple[dict[str, Any], PageFiller] | None:
    session = await target.set_session()
    kwargs = dict(target.kwargs)
    headers = dict(kwargs.pop("headers", None) or {})
    headers["Range"] = f"bytes=0-{nbytes - 1}"
    headers["Accept-Encoding"] = "identity"  # as fsspec's HEAD: the size of the bytes
    async with session.get(target.encode_url(path), headers=headers, **kwargs) as r:
        if r.status == 404:
            raise FileNotFoundError(path)  # as fsspec's info() raises it
        if r.headers.get("Content-Encoding", "identity") not in ("identity", ""):
            return None
        if r.status == 206:
            match = _CONTENT_RANGE.fullmatch(r.headers.get("Content-Range", ""))
            if match is None:
                return None
            size, want = int(match[2]), min(int(match[1]) + 1, nbytes)
        elif r.status == 200 and "Content-Length" in r.headers:  # ranges ignored
            size = int(r.headers["Content-Length"])
            want = min(size, nbytes)
        else:
            return None
        # reading stops at ``want``: the rest of an unranged answer is left unread (leaving
        # the block closes the connection instead of draining it)
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
        # the fields fsspec's info() takes from a HEAD that name the whole file's version
        # (a range's Content-MD5 or Digest would name the range's bytes only)
        for field in ("ETag", "Last-Modified"):
            if r.headers.get(field):
                info[field] = r.headers[field]
        return info, body
