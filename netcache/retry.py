"""Transient remote errors retried the same way on every path: bounded exponential
backoff with full jitter, as the AWS SDKs retry.

Transient: a 5xx answer, a connection reset or refused, a timeout. Anything else (a 4xx,
a missing file, an answer that is not what was asked, a changed file) is raised at
once. A target that retries for itself (s3fs, and any filesystem with an integer
``retries`` of its own) is not retried again on top. Retried fetches are pinned to the
version of the first try by their callers, who make the same request again.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from fsspec import AbstractFileSystem

from netcache.s3 import is_s3

T = TypeVar("T")
#: Seconds before the first retry, at most (each later one doubles, up to ``CAP``).
BASE_DELAY = 0.05
CAP_DELAY = 2.0


@dataclass(frozen=True)
class Retries:
    """How often to try a request again, and what to tell of each retry.

    Thread-safe: immutable; ``on_retry`` must be thread-safe (it counts).
    """

    attempts: int
    on_retry: Callable[[BaseException], None]

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0 first): full jitter."""
        return random.uniform(0, min(CAP_DELAY, BASE_DELAY * 2**retry))

    def for_target(self, target: AbstractFileSystem) -> Retries:
        """These retries, or none for a target that retries for itself."""
        if self.attempts and retries_itself(target):
            return Retries(0, self.on_retry)
        return self

    def call(self, request: Callable[[], T]) -> T:
        """``request()``, tried again after each transient error, ``attempts`` times at
        most; the last error is raised."""
        for retry in range(self.attempts + 1):
            try:
                return request()
            except Exception as exc:
                if retry == self.attempts or not is_transient(exc):
                    raise
                self.on_retry(exc)
            time.sleep(self.delay(retry))
        raise AssertionError("unreachable")  # the loop returns or raises

    async def call_async(self, request: Callable[[], Awaitable[T]]) -> T:
        """``call`` on an event loop."""
        for retry in range(self.attempts + 1):
            try:
                return await request()
            except Exception as exc:
                if retry == self.attempts or not is_transient(exc):
                    raise
                self.on_retry(exc)
            await asyncio.sleep(self.delay(retry))
        raise AssertionError("unreachable")


def retries_itself(target: AbstractFileSystem) -> bool:
    """Whether ``target`` retries its own requests (s3fs does; fsspec's HTTP does not)."""
    own = getattr(target, "retries", None)
    return is_s3(target) or (isinstance(own, int) and not isinstance(own, bool))


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may go away if the same request is made again."""
    seen = 0
    while exc is not None and seen < 8:  # fsspec wraps errors in FileNotFoundError
        status = getattr(exc, "status", None)
        if isinstance(status, int):
            return status >= 500
        if isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
            return True
        aiohttp = sys.modules.get("aiohttp")
        if aiohttp is not None and isinstance(
            exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)
        ):
            return True
        exc = exc.__cause__  # type: ignore[assignment]
        seen += 1
    return False
