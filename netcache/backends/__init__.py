"""Disk tiers: where pages go after memory, and where a later process finds them."""

from netcache.backends.base import Backend, DiskUsage, PageIndex
from netcache.backends.directory import DirectoryBackend
from netcache.backends.mapping import MappingBackend

__all__ = ["Backend", "DirectoryBackend", "DiskUsage", "MappingBackend", "PageIndex"]
