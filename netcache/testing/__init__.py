"""Scaffolding for netcache's demo, tests and benchmarks, kept out of the runtime
surface: nothing in netcache's core imports this package. ``RangeServer`` and
``random_bytes`` load :mod:`netcache.testing.httpserver` on first use, so that
``python -m netcache.testing.httpserver`` runs it as a fresh module."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["RangeServer", "random_bytes"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'netcache.testing' has no attribute {name!r}")
    return getattr(importlib.import_module("netcache.testing.httpserver"), name)


if TYPE_CHECKING:
    from netcache.testing.httpserver import RangeServer, random_bytes
