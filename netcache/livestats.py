"""Live stats of every process that uses a cache folder, for ``python -m netcache
stats``: each process writes its counters to ``<cache_dir>/netcache-v2/procs/<pid>.json``
(owner-only, replaced atomically) every ``PUBLISH_SECONDS`` and removes it when it
closes its caches; a reader ignores files whose process is gone."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

import psutil

from netcache.backends.folder import CacheFolder
from netcache.backends.segmentio import Folders
from netcache.backends.segments import LAYOUT
from netcache.context import CacheContext

#: Seconds between two publications of a process's counters.
PUBLISH_SECONDS = 2.0
PROCS = f"{LAYOUT}/procs"

logger = logging.getLogger("netcache")


def process_started(pid: int) -> float | None:
    """When process ``pid`` started (to tell it from a later one with its pid), or
    None if there is none."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


class LiveStats:
    """This process's publisher: one thread for all its caches that have a folder.

    Locking: one lock guards the list of caches and the thread's handle, held for list
    operations only; files are written by the thread, outside it, and the thread is
    started after the lock is let go.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._contexts: list[CacheContext] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._started = process_started(os.getpid()) or time.time()
        self._last: dict[str, str] = {}  # folder -> the counters written last

    def watch(self, context: CacheContext) -> None:
        """Publish ``context``'s counters from now on (if it has a folder that opened)."""
        if not isinstance(context.config.cache_dir, str) or context.backend is None:
            return
        with self._lock:
            self._contexts.append(context)
            start = self._thread is None
            if start:  # the thread keeps the event it was started with
                self._thread = threading.Thread(target=self._run, args=(self._stop,),
                                                daemon=True, name="netcache-livestats")  # fmt: skip
        if start:
            assert self._thread is not None
            self._thread.start()
        self.publish()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(PUBLISH_SECONDS):
            self.publish()

    def publish(self) -> None:
        """Write each folder's file now."""
        with self._lock:
            contexts = [c for c in self._contexts if c.is_current]
            self._contexts = contexts
        by_folder: dict[str, list[CacheContext]] = {}
        for context in contexts:
            by_folder.setdefault(str(context.config.cache_dir), []).append(context)
        for folder, members in by_folder.items():
            try:
                self._write(folder, members)
            except OSError as exc:  # counted as a failed write, said once
                for context in members:
                    context.counters.add("disk.werr")
                    context.warn("livestats", "netcache: live stats could not be written "
                                 "to %s (%r)", folder, exc)  # fmt: skip

    def _write(self, cache_dir: str, contexts: list[CacheContext]) -> None:
        caches = []
        for context in contexts:
            snap = context.stats()
            caches.append({"target": context.target_id, "stats": snap.as_dict()})
        counters = json.dumps(caches)
        if self._last.get(cache_dir) == counters:
            return  # nothing moved: an idle process does not rewrite its file
        self._last[cache_dir] = counters
        blob = json.dumps({
            "pid": os.getpid(), "started": self._started, "updated": time.time(),
            "rss": psutil.Process().memory_info().rss, "caches": caches,
        }).encode()  # fmt: skip
        folder = CacheFolder(cache_dir, PROCS, contexts[0].config.trusted_gid)
        Folders(folder, lambda _: None).write_atomic("", f"{os.getpid()}.json", blob)

    def stop(self) -> None:
        """Stop publishing and remove this process's files (a clean end)."""
        with self._lock:
            contexts, self._contexts = self._contexts, []
            thread, self._thread = self._thread, None
            stop, self._stop = self._stop, threading.Event()  # the next thread's
            self._last = {}
        stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(PUBLISH_SECONDS * 2)
        for cache_dir in {str(c.config.cache_dir) for c in contexts}:
            try:
                folder = CacheFolder(cache_dir, PROCS, contexts[0].config.trusted_gid)
                folder.remove(f"{os.getpid()}.json")
            except OSError as exc:  # left behind: readers ignore it once this pid is gone
                logger.warning("netcache: could not remove live stats in %s (%r)",
                               cache_dir, exc)  # fmt: skip

    def reset_after_fork(self) -> None:
        """In a forked child: nothing published yet, no thread."""
        self._lock = threading.Lock()
        self._contexts = []
        self._thread = None
        self._stop = threading.Event()
        self._started = time.time()
        self._last = {}


def read_live(cache_dir: str) -> list[dict[str, Any]]:
    """The live processes' files in ``cache_dir``, newest first; files of processes
    that are gone (or whose pid another process took) are left out."""
    try:
        folder = CacheFolder(cache_dir, PROCS, create=False)
    except FileNotFoundError:
        return []
    out = []
    for name in folder.listdir(""):
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            blob = folder.read_small(name, 1 << 20)
            entry = json.loads(blob or b"{}")
            pid, started = int(entry["pid"]), float(entry["started"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours to read, or half a file from a crashed writer
        alive = process_started(pid)
        if alive is None or abs(alive - started) > 1.0:
            continue
        out.append(entry)
    return sorted(out, key=lambda e: -e["updated"])
