"""Requests sent together on an event loop, a bounded number at a time (what fsspec's
private ``_run_coros_in_chunks`` did): the HTTP and S3 transports and first looks."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: Requests in flight at once for one call, where the target sets no batch size.
MAX_CONCURRENT_REQUESTS = 32


async def gather_bounded(
    coros: list[Coroutine[Any, Any, T]], limit: int | None
) -> list[T | BaseException]:
    """Run ``coros``, at most ``limit`` (default ``MAX_CONCURRENT_REQUESTS``) at once;
    each one's result or exception, in order (every one runs to its end)."""
    gate = asyncio.Semaphore(limit or MAX_CONCURRENT_REQUESTS)

    async def gated(coro: Coroutine[Any, Any, T]) -> T:
        async with gate:
            return await coro

    return await asyncio.gather(*(gated(c) for c in coros), return_exceptions=True)
