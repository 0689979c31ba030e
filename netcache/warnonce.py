"""Log each kind of trouble once, as a warning; the stats count every occurrence."""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger("netcache")

#: A kind of trouble that comes back after this long is logged again.
QUIET_SECONDS = 600.0


class WarnOnce:
    """Logs a kind of trouble at most once per ``QUIET_SECONDS``, so a disk that fails
    on and off cannot flood the log. Thread-safe (one lock)."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < QUIET_SECONDS:
                return
            self._last[kind] = now
        logger.warning(message + " (further such problems are counted, not logged)", *args)
