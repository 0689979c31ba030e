"""Scaffolding for netcache's demo, tests and benchmarks, kept out of the runtime
surface: nothing in netcache's core imports this package."""

from netcache.testing.httpserver import RangeServer, random_bytes

__all__ = ["RangeServer", "random_bytes"]
