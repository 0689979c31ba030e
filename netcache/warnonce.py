"""Log each kind of trouble once per cache, as a warning, and count it always."""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger("netcache")


class WarnOnce:
    """Remembers which kinds of trouble were already logged. Thread-safe (one lock)."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, kind: str, message: str, *args: object) -> None:
        with self._lock:
            if kind in self._seen:
                return
            self._seen.add(kind)
        logger.warning(message + " (further such problems are counted, not logged)", *args)

    def reset(self, kind: str) -> None:
        """Allow ``kind`` to be logged again (the trouble went away and came back)."""
        with self._lock:
            self._seen.discard(kind)
