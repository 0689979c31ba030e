"""FileCookie: one version of one remote file, as netcache pins it for reading.

Named after FS-Cache's cookie, the handle a network filesystem holds on a cached object.
A cookie is immutable: when the remote file changes, a new cookie with a new ``version``
is made and the pages of the old one are dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from netcache.identity import digest

# Fields of ``info()`` that change when a remote file's bytes change, in order of trust:
# an ETag or object version names the content itself; size and modification time are a
# fallback for filesystems that have nothing better (local, memory, ...).
_CONTENT_TAGS = ("ETag", "etag", "VersionId", "version_id", "generation", "md5Hash", "crc32c")
_CHANGE_FIELDS = (
    "size",
    "mtime",
    "LastModified",
    "last_modified",
    "Last-Modified",
    "modified",
    "updated",
    "created",
)


def version_token(info: dict[str, Any]) -> str:
    """A text that changes whenever the bytes behind ``info`` change."""
    tags = {k: info[k] for k in _CONTENT_TAGS if info.get(k) is not None}
    if not tags:
        tags = {k: info[k] for k in _CHANGE_FIELDS if info.get(k) is not None}
    return json.dumps(tags, sort_keys=True, default=str)


def strong_etag(info: dict[str, Any]) -> str | None:
    """The ETag usable for ``If-Match`` (strong comparison), or None."""
    etag = info.get("ETag") or info.get("etag")
    if isinstance(etag, str) and etag and not etag.startswith("W/"):
        return etag
    return None


@dataclass(frozen=True)
class FileCookie:
    """A remote file pinned at one version.

    ``file_id`` names the file in the cache (target and path), ``version`` its content;
    ``size`` is None only until a remote that reports no size has been read whole.
    """

    file_id: str
    path: str
    version: str
    token: str
    size: int | None
    info: dict[str, Any] = field(compare=False, hash=False, repr=False)

    @classmethod
    def from_info(cls, file_id: str, path: str, info: dict[str, Any]) -> FileCookie:
        token = version_token(info)
        size = info.get("size")
        return cls(
            file_id, path, digest(token), token, int(size) if size is not None else None, dict(info)
        )

    def with_size(self, size: int) -> FileCookie:
        return FileCookie(
            self.file_id, self.path, self.version, self.token, size, {**self.info, "size": size}
        )
