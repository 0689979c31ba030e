"""Answers from the remote, checked against what was asked before a byte is kept.

A ranged GET is asked for ``[start, end)`` of one version of a file. An answer is kept
only if it is that: a 206 whose ``Content-Range`` starts at ``start``, ends within the
range, spans the bytes it carries, and names the file's size; or a 200 with the whole
file. Its ``ETag`` and ``Last-Modified``, where it has them, must be the pinned
version's, and so must the size: a server that ignores ``If-Match`` would otherwise
hand one read two versions, stored under the old one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from netcache.cookie import strong_etag
from netcache.errors import FileChangedError, ShortReadError

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class Pin:
    """The version a read is pinned to, as the remote names it: its strong ETag, its
    ``Last-Modified`` and its size (each None where unknown)."""

    etag: str | None = None
    modified: str | None = None
    size: int | None = None

    @classmethod
    def of_info(cls, info: Mapping[str, Any], size: int | None) -> Pin:
        """The pin of a version as ``info`` describes it. ``Last-Modified`` counts only
        where there is no ETag, the stronger name (and the one the remote is asked to
        match): some servers date each answer anew."""
        etag = strong_etag(info)
        modified = info.get("Last-Modified") if etag is None else None
        return cls(etag, modified if isinstance(modified, str) else None, size)

    def check_version(self, where: str, etag: str | None, modified: str | None) -> None:
        """Raise :class:`FileChangedError` if an answer names another version."""
        if self.etag is not None and etag is not None and etag != self.etag:
            raise FileChangedError(f"{where} changed while open (ETag {etag}, pinned {self.etag})")
        if self.modified is not None and modified is not None and modified != self.modified:
            raise FileChangedError(f"{where} changed while open (Last-Modified {modified})")

    def check_range(
        self, where: str, start: int, end: int, content_range: str | None, nbytes: int
    ) -> None:
        """Raise unless a 206 answer's ``Content-Range`` is the bytes asked for (or
        fewer, from the same start) and agrees with the ``nbytes`` it carries and with
        the pinned size. ``content_range`` None is a 200: the whole file, from 0."""
        if content_range is None:
            if self.size is not None and nbytes != self.size:
                raise ShortReadError(
                    f"{where}: a whole-file answer of {nbytes} bytes, the file has {self.size}"
                )
            return
        match = _CONTENT_RANGE.fullmatch(content_range.strip())
        if match is None:
            raise ShortReadError(f"{where}: an answer with Content-Range {content_range!r}")
        first, last, total = int(match[1]), int(match[2]), match[3]
        if first != start or last < first or last >= end or last - first + 1 != nbytes:
            raise ShortReadError(
                f"{where}: asked for bytes {start}-{end - 1}, the remote answered "
                f"{content_range} with {nbytes} bytes"
            )
        if total != "*" and self.size is not None and int(total) != self.size:
            raise FileChangedError(f"{where} changed while open (size {total}, pinned {self.size})")
