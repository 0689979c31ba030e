"""How many read-ahead requests a cache keeps in flight: grown from the throughput it
measures, as BBR's start-up and mountpoint-s3's doubling window grow theirs.

An object store gives each connection a limited stream (S3: about 60-90 MB/s after
20-50 ms to the first byte), so one reader needs several requests at once to fill its
own pipe: about its bandwidth times a request's time. Neither is known in advance, and
on a fast remote more requests only cost CPU, so the number is found by measure: it
doubles while doing so still buys throughput.
"""

from __future__ import annotations

import threading
import time

#: Requests in flight at once to start with. An object store's pipe needs about 16 (a
#: request's time over its share of the stream), and a file read in the first rounds
#: gains nothing from a gauge that starts lower; on loopback 16 cost nothing more than 8
#: (docs/measurements.md).
INITIAL_REQUESTS = 16
#: Requests in flight at once, at most.
MAX_REQUESTS = 32
#: A round must deliver this much more than the best round so far for the number of
#: requests to double again (BBR's start-up uses the same 25%).
GROWTH = 1.25
#: Rounds in a row that do not grow before the number stops growing.
STALLS = 2


class PipeGauge:
    """The number of requests a cache keeps in flight (``limit``), from measure.

    Callers report each request as it ends (:meth:`finished`: its bytes, and whether
    other requests were waiting for a slot). A *round* is ``limit`` requests that ended
    while others waited: the pipe, not the reader, was the bound. At each round's end its
    delivery rate (bytes ÷ the round's time) is compared with the best so far: at least
    ``GROWTH`` times it, and ``limit`` doubles (up to ``ceiling``); short of it
    ``STALLS`` times in a row, and ``limit`` goes back to the best round's and stays (the
    remote's total bandwidth, or the CPU, is the bound now). Rounds where nothing waited
    measure the reader and are not counted.

    Thread-safe: one lock, held for arithmetic only.
    """

    __slots__ = ("_best_limit", "_best_rate", "_bytes", "_ended", "_full", "_lock",
                 "_stalls", "_started", "ceiling", "limit")  # fmt: skip

    def __init__(self, initial: int = INITIAL_REQUESTS, ceiling: int = MAX_REQUESTS) -> None:
        if not 1 <= initial <= ceiling:
            raise ValueError(f"initial={initial} must be between 1 and ceiling={ceiling}")
        self.limit = initial
        self.ceiling = ceiling
        self._lock = threading.Lock()
        self._best_rate = 0.0
        self._best_limit = initial
        self._stalls = 0
        self._full = False
        self._started: float | None = None
        self._ended = 0
        self._bytes = 0

    @property
    def full(self) -> bool:
        """Whether the number stopped growing (more requests bought nothing)."""
        return self._full

    def finished(self, nbytes: int, waiting: bool, now: float | None = None) -> None:
        """One request of ``nbytes`` ended; ``waiting``: others were waiting for a slot."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._full:
                return
            if not waiting:  # the reader is the bound: start the round again
                self._started, self._ended, self._bytes = None, 0, 0
                return
            if self._started is None:  # the round starts when its first request ends
                self._started, self._ended, self._bytes = now, 0, 0
                return
            self._ended += 1
            self._bytes += nbytes
            if self._ended < self.limit:
                return
            rate = self._bytes / max(now - self._started, 1e-6)
            self._started, self._ended, self._bytes = now, 0, 0
            self._end_round(rate)

    def _end_round(self, rate: float) -> None:
        if rate >= GROWTH * self._best_rate:
            self._best_rate, self._best_limit, self._stalls = rate, self.limit, 0
            if self.limit < self.ceiling:
                self.limit = min(self.ceiling, self.limit * 2)
                return
        else:
            self._stalls += 1
            if self._stalls < STALLS:
                return
        self.limit = self._best_limit
        self._full = True
