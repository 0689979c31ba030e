"""WritebackQueue: pages fetched from the remote, and files' metadata, stored into the
disk tier in the background."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from typing import Any

from netcache.backends.base import Backend
from netcache.page import Page, PageKey, StoreState
from netcache.stats import Counters
from netcache.warnonce import WarnOnce

logger = logging.getLogger("netcache")
#: Runs a producer stores itself per ``throttle`` call at most (each one shrinks the
#: backlog, so this is a bound that a live queue never reaches).
_MAX_OWN_RUNS = 64

#: Niceness of the worker threads (on Linux each thread has its own): stores are
#: background work and yield the CPU to readers, fetches and the event loop (what it
#: gave readers: docs/measurements.md).
WORKER_NICENESS = 19


class WritebackQueue:
    """A FIFO of pages to store, served by worker threads, that never drops a page it
    was given but for memory pressure.

    A page moves NONE -> PENDING (``submit``) -> STORING (a worker took it) -> STORED, or
    back to NONE when its store is cancelled under memory pressure, fails, or its file
    is invalidated; every page that so never reaches the disk is counted by why
    (``Unstored``). A worker takes the first queued page with the pages queued right
    behind it that follow it in its file, up to the backend's ``store_batch_pages``,
    and stores them in one call; it never waits for more to come.

    ``submit`` always queues. A page pending storage is never evicted by routine
    eviction (as FS-Cache keeps a page until its store ends), so the queue is what memory
    holds beyond ``memory_limit``; it is bounded as Linux bounds dirty pages
    (``balance_dirty_pages``): a producer that finds more than ``max_pending_bytes``
    queued or being stored stores the oldest run itself, on its own thread, before it
    goes on (``throttle``, counted as ``Stores: nbf`` and ``own``). So a reader that
    outruns the disk is slowed to the disk's pace, and loses nothing: only reclaim
    under memory pressure (``maybe_release_page``, counted ``can``) gives a store up.

    A file's metadata (``submit_meta``) is queued too, ahead of pages, the latest per
    file replacing one not yet written, and written one at a time: opening a new file
    does not wait for the disk tier's folders and renames. ``cancel_file`` drops a
    file's queued metadata and waits for a write of it under way, so that an
    invalidation has the last word on disk.

    Locking: one condition variable guards the queues, every page's ``state`` and the
    pending byte count. Workers hold it only to take a job and to finish one, never
    across the backend's I/O, so readers, reclaim and workers never wait on a store.

    Workers: one from the first store; another (up to ``workers``) each time a producer
    finds the queue over its share, that is when the disk tier falls behind (a worker is
    started after the lock is let go). Two from the start cost readers CPU where one
    keeps up.

    Workers run at the lowest CPU priority (``WORKER_NICENESS``, Linux): when the CPUs
    are busy, readers run first and stores wait (the queue fills, and producers then
    store runs themselves, at their own priority). A worker preempted while it holds the
    GIL delays Python threads until it runs again; measured, the trade is still a gain
    for readers (``docs/measurements.md``).

    Implements :class:`~netcache.policies.release.StoreControl` for release policies.
    """

    def __init__(
        self,
        backend: Backend,
        workers: int,
        max_pending_bytes: int,
        counters: Counters,
        warn: WarnOnce,
    ) -> None:
        self.backend = backend
        self.workers = workers
        self.max_pending_bytes = max_pending_bytes
        self._counters = counters
        self._warn = warn
        self._cond = threading.Condition(threading.Lock())
        # Keyed by the page itself, not its key: after an invalidation a page with the
        # same key may be queued while the old one is still being stored.
        self._queue: OrderedDict[Page, None] = OrderedDict()
        self._pending_bytes = 0
        self._storing: set[Page] = set()
        self._doomed: set[Page] = set()  # being stored, but their file was invalidated
        self._metas: OrderedDict[str, dict[str, Any]] = OrderedDict()  # by file id
        self._meta_running: str | None = None  # the file whose metadata is being written
        self._threads: list[threading.Thread] = []
        self._closed = False

    # -- producers -----------------------------------------------------------------------

    def submit(self, page: Page) -> bool:
        """Queue ``page`` for storing; False if it is queued or stored already, or the
        queue is closed (counted as unstored). Never blocks: see ``throttle``."""
        with self._cond:
            if page.state is not StoreState.NONE:
                self._counters.add_many({"stores.n": 1, "stores.agn": 1})
                return False
            if self._closed:
                self._counters.add_many({"stores.n": 1, "unstored.closed": 1})
                return False
            self._enqueue(page)
            self._counters.add("stores.n")
            worker = self._new_worker() if not self._threads else None
            self._cond.notify()
        if worker is not None:
            worker.start()
        return True

    def throttle(self) -> None:
        """Called by a producer after its submits: while more than ``max_pending_bytes``
        are queued or being stored, store the oldest run on this thread. Each run
        stored (or failed) shrinks the backlog, and every producer does the same, so
        this ends; it waits for no other thread."""
        for _ in range(_MAX_OWN_RUNS):
            with self._cond:
                if self._pending_bytes <= self.max_pending_bytes or self._closed:
                    return
                self._counters.add("stores.nbf")
                # the disk tier falls behind: another worker
                worker = self._new_worker() if len(self._threads) < self.workers else None
                batch = self._take_pages()
            if worker is not None:
                worker.start()
            if batch is None:  # all of it is being stored already
                return
            self._counters.add("stores.own")
            self._run_store(batch)

    def submit_meta(self, file_id: str, meta: dict[str, Any]) -> None:
        """Queue ``meta`` to be written as ``file_id``'s metadata. Never blocks; dropped
        once the queue is closed (the next process asks the remote instead)."""
        with self._cond:
            if self._closed:
                return
            self._metas[file_id] = meta
            worker = self._new_worker() if not self._threads else None
            self._cond.notify()
        if worker is not None:
            worker.start()

    def _enqueue(self, page: Page) -> None:
        """Queue a page in state NONE. Caller holds the lock."""
        page.state = StoreState.PENDING
        self._queue[page] = None
        self._pending_bytes += page.nbytes
        self._counters.add("stores.ok")

    def _new_worker(self) -> threading.Thread:
        """A worker thread, counted among the workers; the caller starts it once it has
        let go of the lock (a thread start is not done under a lock others share).
        Caller holds the lock."""
        thread = threading.Thread(
            target=self._work, name=f"netcache-writeback-{len(self._threads)}", daemon=True
        )
        self._threads.append(thread)
        return thread

    # -- StoreControl --------------------------------------------------------------------

    def cancel_if_pending(self, page: Page) -> StoreState:
        with self._cond:
            state = page.state
            if state is StoreState.PENDING:
                self._dequeue(page)
                page.state = StoreState.NONE
                self._counters.add("unstored.pressure")
                self._cond.notify_all()
            return state

    def wait_until_stored(self, page: Page, timeout: float | None) -> bool:
        self._counters.add("vmscan.wt")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while page.store_pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    # -- whole queue ---------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def cancel_file(self, file_id: str | None, keep_version: str | None = None) -> None:
        """Cancel the queued stores of one file (all, or all but one version's; every
        file's if ``file_id`` is None), its metadata included. A page store already
        running is undone (its page discarded from the disk tier) as soon as it
        finishes; a metadata write under way is waited for."""

        def doomed(key: PageKey) -> bool:
            return (file_id is None or key.file_id == file_id) and key.version != keep_version

        with self._cond:
            dropped = [p for p in self._queue if doomed(p.key)]
            for page in dropped:
                self._dequeue(page)
                page.state = StoreState.NONE
            if dropped:
                self._counters.add("unstored.invalidated", len(dropped))
            self._doomed.update(p for p in self._storing if doomed(p.key))
            # Queued metadata goes whatever version it names: a version kept is on disk
            # already or written again by the caller (one missing only costs another
            # process a check with the remote).
            for fid in [f for f in self._metas if file_id in (None, f)]:
                del self._metas[fid]
            self._cond.notify_all()
            # A metadata write under way ends soon (one small file): the caller's
            # removal of the file's folder must come after it, not before.
            while self._meta_running is not None and file_id in (None, self._meta_running):
                self._cond.wait()

    def wait_below(self, nbytes: int, timeout: float) -> bool:
        """Wait until at most ``nbytes`` are queued or being stored (each store ends, so
        the backlog shrinks); False if ``timeout`` ran out first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending_bytes > nbytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or being stored; False if ``timeout`` ran out.

        Each store ends (stored, failed or cancelled), so with ``timeout=None`` this
        returns once the backlog present and arriving is done.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while (self._queue or self._storing or self._metas
                   or self._meta_running is not None):  # fmt: skip
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, drain_timeout: float) -> bool:
        """Stop accepting stores, let workers drain for ``drain_timeout`` seconds, then
        drop what is left (those pages stay memory-only, counted ``Unstored: closed``).
        Returns whether all was stored."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        drained = self.flush(drain_timeout)
        with self._cond:
            self._metas.clear()
            if self._queue:
                self._counters.add("unstored.closed", len(self._queue))
            for page in list(self._queue):
                self._dequeue(page)
                page.state = StoreState.NONE
            self._cond.notify_all()
        return drained

    # -- workers -------------------------------------------------------------------------

    def _dequeue(self, page: Page) -> None:
        """Remove a queued page. Caller holds the lock."""
        del self._queue[page]
        self._pending_bytes -= page.nbytes

    def _next_job(self) -> list[Page] | tuple[str, dict[str, Any]] | None:
        """Take the next job: a file's metadata (one written at a time), else pages to
        store in one call, else None. Caller holds the lock."""
        if self._metas and self._meta_running is None:
            file_id, meta = self._metas.popitem(last=False)
            self._meta_running = file_id
            return file_id, meta
        return self._take_pages()

    def _take_pages(self) -> list[Page] | None:
        """Take the first queued page and those right behind it that follow it in its
        file, marked STORING; None if nothing is queued. Caller holds the lock."""
        if not self._queue:
            return None
        page, _ = self._queue.popitem(last=False)
        batch = [page]
        # the pages right behind it, if they follow it in its file: one store call
        while len(batch) < self.backend.store_batch_pages and self._queue:
            key, follower = page.key, next(iter(self._queue))
            if follower.key != (key.file_id, key.version, key.index + 1):
                break
            del self._queue[follower]
            batch.append(page := follower)
        for page in batch:
            page.state = StoreState.STORING
        self._storing.update(batch)
        return batch

    def _work(self) -> None:
        _lower_priority()
        cond = self._cond
        while True:
            with cond:
                while (job := self._next_job()) is None:
                    if self._closed:
                        return
                    cond.wait()
            if isinstance(job, list):
                self._run_store(job)
            else:
                try:
                    self._store_meta(*job)
                finally:  # an invalidation may be waiting for this write to end
                    with cond:
                        self._meta_running = None
                        cond.notify_all()

    def _run_store(self, pages: list[Page]) -> None:
        stored = self._store(pages)
        with self._cond:
            for page in pages:
                page.state = StoreState.STORED if stored else StoreState.NONE
                self._pending_bytes -= page.nbytes
                self._storing.discard(page)
            doomed = [page for page in pages if page in self._doomed]
            self._doomed.difference_update(doomed)
            if doomed:
                self._counters.add("unstored.invalidated", len(doomed))
            self._cond.notify_all()
        # also after a failure: a call that failed part-way may have stored some of them
        for page in doomed:
            self._discard(page.key)

    def _discard(self, key: PageKey) -> None:
        try:
            self.backend.discard_page(key)
        except Exception as exc:
            self._counters.add("disk.werr")
            self._warn("discard", "netcache: removing an invalidated page failed: %r", exc)

    def _store_meta(self, file_id: str, meta: dict[str, Any]) -> None:
        """Write one file's metadata; never raises, so a worker never dies."""
        try:
            self.backend.store_meta(file_id, meta)
        except Exception as exc:
            self._counters.add("disk.werr")
            self._warn("meta", "netcache: writing a file's metadata failed: %r", exc)

    def _store(self, pages: list[Page]) -> bool:
        """Store pages in one call; never raises, so a worker never dies. On a failure
        none counts as stored (some may be: storing one again leaves it as it is)."""
        n = len(pages)
        self._counters.add("stores.run", n)
        try:
            self.backend.store_pages([(page.key, page.data) for page in pages])
        except MemoryError:
            self._counters.add_many({"stores.oom": n, "unstored.error": n})
            return False
        except Exception as exc:
            full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
            self._counters.add_many(
                {"stores.err": n, "disk.werr": n, f"unstored.{'full' if full else 'error'}": n}
            )
            self._warn("store", "netcache: storing a page in the disk tier failed: %r", exc)
            return False
        self._counters.add("stores.pgs", n)
        return True


def _lower_priority() -> None:
    """Give the calling thread the workers' niceness, where threads have their own."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)
