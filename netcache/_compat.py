"""Every private name of a third-party library that netcache uses, in one place.

Each is reached through a function here, and ``tests/test_compat.py`` checks every one
against the installed releases, so a release that renames or removes one fails that
test by name instead of breaking a read somewhere. The version bounds in
``pyproject.toml`` are the releases tested.

Modules are looked up, or imported, when a function is called: importing this module
imports none of fsspec's HTTP stack, s3fs or distributed.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Awaitable, Callable
from typing import Any

#: (module, attribute) of every private name used, for the test that checks them.
PRIVATE_NAMES: tuple[tuple[str, str], ...] = (
    ("fsspec.implementations.http", "HTTPFileSystem._cat_file"),
    ("fsspec.implementations.http", "HTTPFileSystem._raise_not_found_for_status"),
    ("s3fs.core", "S3FileSystem._call_s3"),
    ("s3fs.core", "_error_wrapper"),
    ("distributed.worker", "Worker._instances"),
)


def resolve(module: str, dotted: str) -> Any:
    """``module``'s attribute ``dotted`` (``"Class.name"``), importing ``module``."""
    value: Any = importlib.import_module(module)
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def has_fsspecs_http_requests(target: Any) -> bool:
    """Whether ``target`` (an fsspec ``HTTPFileSystem``) reads with fsspec's own
    ``_cat_file``: a subclass that overrides it makes its requests its own way."""
    own = sys.modules["fsspec.implementations.http"].HTTPFileSystem._cat_file
    return type(target)._cat_file is own


def raise_not_found_for_status(target: Any, answer: Any, path: str) -> None:
    """fsspec's HTTP error for ``answer`` (``FileNotFoundError`` for a 404), as its own
    reads raise it."""
    target._raise_not_found_for_status(answer, path)


def call_s3(target: Any, method: str, **kwargs: Any) -> Awaitable[dict[str, Any]]:
    """s3fs's own request path (its options, retries and error translation)."""
    return target._call_s3(method, **kwargs)  # type: ignore[no-any-return]


def s3_error_wrapper() -> Callable[..., Awaitable[Any]] | None:
    """s3fs's wrapper that makes a request again when its body breaks off, or None in a
    release without it (a request is then made once)."""
    return getattr(sys.modules["s3fs.core"], "_error_wrapper", None)


def dask_workers_in_process() -> list[Any]:
    """The Dask workers alive in this process (``distributed`` must be importable)."""
    from distributed.worker import Worker

    return list(Worker._instances)
