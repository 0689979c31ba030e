"""Exceptions netcache raises of its own (remote errors reach readers unchanged)."""

from __future__ import annotations


class FileChangedError(OSError):
    """The remote file changed while a reader had it open at an older version.

    Raised rather than mixing bytes of two versions; reopen the file to read the new one.
    """


class ShortReadError(OSError):
    """The remote answered a ranged read with fewer (or other) bytes than asked."""


class CorruptPageError(OSError):
    """A page in the disk tier failed its header or checksum check."""


class CorruptMetadataError(OSError):
    """A file's metadata in the disk tier failed its checksum, type or size checks."""


class ReadaheadFailed(OSError):
    """A read-ahead fetch failed. Readers waiting for its pages fetch them themselves;
    it never reaches a reader (netcache internal)."""


class UntrustedFolderError(PermissionError):
    """A cache folder, or something in it, that this process must not trust: it belongs
    to another user, others can write it, or a link or special file stands where a
    folder or a regular file should."""
