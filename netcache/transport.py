"""The remote, as one call: byte ranges of one pinned version of a file, from HTTP
(:mod:`netcache.http`), S3 (:mod:`netcache.s3`) or any other fsspec target, made again
after transient errors, and checked against the version they were asked for."""

from __future__ import annotations

from typing import Any

from fsspec import AbstractFileSystem

from netcache.answers import Pin
from netcache.buffers import PageFiller
from netcache.cookie import FileCookie, strong_etag, version_token
from netcache.errors import FileChangedError
from netcache.http import get_ranges as get_http_ranges
from netcache.http import if_match_headers, is_http, streams_pages
from netcache.identity import redact_url
from netcache.retry import Retries
from netcache.s3 import get_ranges as get_s3_ranges
from netcache.s3 import is_s3


class RemoteRanges:
    """Ranged reads of a target, pinned to a version.

    HTTP and S3 requests carry the version (``If-Match`` with the strong ETag; S3's
    ``IfMatch``): a changed file answers 412, raised as :class:`FileChangedError`, and
    their answers are copied into pages as they arrive. Other targets answer whole
    blobs, and their version is checked again after the fetch unless files never
    change (``verify=False``). Thread-safe: it holds no state but its settings.
    """

    def __init__(self, block_size: int, retries: Retries) -> None:
        self.block_size = block_size
        self.retries = retries

    def get_ranges(self, target: AbstractFileSystem, cookie: FileCookie, starts: list[int],
                   ends: list[int], verify: bool) -> list[PageFiller]:  # fmt: skip
        """The answers for ``[starts[i], ends[i])``, each in pages (fewer bytes than asked
        only where the remote says the file ends sooner, or ignored the range)."""
        ranges = list(zip(starts, ends, strict=True))
        etag = strong_etag(cookie.info)
        pin = Pin.of_info(cookie.info, cookie.size)
        bs = self.block_size
        s3 = is_s3(target)
        pinned = etag is not None and (s3 or is_http(target))

        def request() -> list[PageFiller]:
            if pinned and s3:
                return [a for _, a in get_s3_ranges(target, cookie.path, ranges, bs, pin, etag)]
            # HTTP is pinned by a header whoever makes the request: fsspec's own
            # HTTPFileSystem (streamed here), or a subclass with its own requests
            options = {"headers": if_match_headers(target, etag)} if pinned else {}
            if streams_pages(target):
                return get_http_ranges(target, cookie.path, ranges, bs, pin, **options)
            blobs = cat_ranges(target, cookie.path, starts, ends, **options)
            return [PageFiller.whole(bs, blob) for blob in blobs]

        try:  # a retry makes the same request: pinned to the same version
            answers = self.retries.for_target(target).call(request)
        except Exception as exc:
            if getattr(exc, "status", None) == 412:
                # from None: the client's error holds the URL whole, secrets and all
                raise FileChangedError(
                    f"{redact_url(cookie.path)} changed while open (412 to If-Match)"
                ) from None
            raise
        if not pinned and verify:
            self.check_version(target, cookie)
        return answers

    def check_version(self, target: AbstractFileSystem, cookie: FileCookie) -> None:
        """Raise :class:`FileChangedError` if ``cookie``'s file is no longer its version
        (asks the target's ``info``)."""
        info = self.retries.for_target(target).call(lambda: target.info(cookie.path))
        if version_token(info) != cookie.token:
            raise FileChangedError(f"{redact_url(cookie.path)} changed while open")

    def get_whole(self, target: AbstractFileSystem, path: str) -> bytes:
        """The whole file (for a remote that does not report sizes)."""
        return self.retries.for_target(target).call(lambda: target.cat_file(path))  # type: ignore[no-any-return]


def cat_ranges(
    target: AbstractFileSystem, path: str, starts: list[int], ends: list[int], **kwargs: Any
) -> list[bytes]:
    """Ranges of ``path`` through fsspec (several at once where the target can); the
    first failure is raised."""
    if len(starts) == 1:
        return [target.cat_file(path, start=starts[0], end=ends[0], **kwargs)]
    blobs = target.cat_ranges([path] * len(starts), starts, ends, on_error="return", **kwargs)
    for blob in blobs:
        if isinstance(blob, BaseException):
            raise blob
    return blobs  # type: ignore[no-any-return]
