"""Pages shared between the workers of a Dask cluster, over Dask's own comms.

:func:`netcache.dask.share_pages` registers :class:`PageSharing` on every worker, current
and future. On each worker it registers the handler ``netcache_pages`` (how a peer asks
this worker, the home of some pages, for them; :class:`PageServer`) and installs a
:class:`PeerClient` as the process's :mod:`netcache.peers` source (how this worker asks
the homes of the pages it misses). The live workers come from the scheduler
(``identity()``), asked every ``REFRESH_SECONDS``; a peer that fails is left out for
``SUSPECT_SECONDS``, so its pages' homes move to the next worker in the rendezvous order.

A request is one message per (home, file version) of a fetch: the target filesystem (its
pickle, as a task's arguments carry it), the pinned version and the page numbers. The
answer carries each page's bytes with its CRC32C, and the version.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin
from fsspec import AbstractFileSystem

from netcache import peers
from netcache.config import CacheConfig
from netcache.context import CacheContext
from netcache.cookie import FileCookie
from netcache.identity import describe_error
from netcache.page import PageKey
from netcache.peers import PeerAnswerError, PeerResult, check_answer, homes_of, page_crc
from netcache.policies.release import PressureLevel
from netcache.process import default_monitor, registry
from netcache.warnonce import WarnOnce

#: Seconds between asks of the scheduler for the live workers.
REFRESH_SECONDS = 1.0
#: Seconds a peer that failed is left out of the homes.
SUSPECT_SECONDS = 10.0
#: Threads per worker that serve peers (each a fetch: memory, disk, or the remote).
SERVE_THREADS = 16
#: The handler's name on every worker.
HANDLER = "netcache_pages"


class PageServer:
    """Serves this worker's pages to peers: from memory, the disk tier, or the remote
    (once: the page cache's claims make it single flight), never from other peers, and
    nothing under HIGH memory pressure or above (the asker goes to the remote).

    Thread-safe: the handler runs on the worker's event loop and hands each request to a
    pool of threads; the lock guards the dictionary of targets only.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(SERVE_THREADS, "netcache-peers")
        self._targets: dict[str, AbstractFileSystem] = {}
        self._lock = threading.Lock()

    async def handle(self, payload: bytes) -> dict[str, Any]:
        """The ``netcache_pages`` handler."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self.serve, payload)
        except Exception as exc:  # the asker counts it and asks the remote
            return {"status": "error", "error": describe_error(exc)}

    def serve(self, payload: bytes) -> dict[str, Any]:
        """The answer to one request (on a serving thread)."""
        target_id, block_size, target_blob, cookie, indices = pickle.loads(payload)
        target = self._target(target_id, target_blob)
        context = serving_context(target, target_id, block_size)
        monitor = context.config.memory_monitor
        if monitor is not None and monitor.level >= PressureLevel.HIGH:
            return {"status": "busy"}
        wanted = {PageKey(cookie.file_id, cookie.version, i): cookie for i in indices}
        with peers.serving():
            pages = context.fetcher.gather_pages(target, wanted, verify=True)
        out = []
        for key, page in pages.items():
            data = bytes(page.data)
            out.append([key.index, page_crc(data), data])
        nbytes = sum(len(entry[2]) for entry in out)
        context.counters.add_many({"peers.served": len(out), "peers.sbytes": nbytes})
        return {"status": "OK", "version": cookie.version, "pages": out}

    def _target(self, target_id: str, blob: bytes) -> AbstractFileSystem:
        with self._lock:
            target = self._targets.get(target_id)
        if target is None:
            target = pickle.loads(blob)
            with self._lock:
                target = self._targets.setdefault(target_id, target)
        return target

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def serving_context(target: AbstractFileSystem, target_id: str, block_size: int) -> CacheContext:
    """The cache that serves peers pages of ``target``: one in use in this process with
    the same target and page size (the one this worker's own tasks read through), else
    one with the defaults and that page size."""
    for context in registry.in_use():
        if context.target_id == target_id and context.config.block_size == block_size:
            return context
    config = CacheConfig.build(block_size=block_size, default_monitor=default_monitor)
    protocol = target.protocol if isinstance(target.protocol, str) else target.protocol[0]
    return registry.acquire(config, target_id, protocol)


class PeerClient:
    """Asks the homes of pages for them, for every cache of this worker process.

    Thread-safe: readers' threads call :meth:`fetch`, which sends its requests on the
    worker's event loop and waits for them at most ``timeout`` seconds; the lock guards
    the live workers and the suspects, held for dictionary operations only (the pickles
    of targets are kept in a dictionary whose single assignments need none).
    """

    def __init__(self, worker: Any, timeout: float) -> None:
        self.worker = worker
        self.address: str = worker.address
        self.timeout = timeout
        self._live: tuple[str, ...] = (self.address,)
        self._suspects: dict[str, float] = {}
        self._lock = threading.Lock()
        self._blobs: dict[str, bytes] = {}
        self._warn = WarnOnce()

    def set_live(self, addresses: Sequence[str]) -> None:
        """The workers the scheduler says are running."""
        with self._lock:
            self._live = tuple(sorted(set(addresses) | {self.address}))

    def homes(self) -> tuple[str, ...]:
        """The workers that may be homes now: the live ones, less those that failed."""
        now = time.monotonic()
        with self._lock:
            self._suspects = {a: t for a, t in self._suspects.items() if t > now}
            return tuple(a for a in self._live if a not in self._suspects)

    def suspect(self, address: str) -> None:
        with self._lock:
            self._suspects[address] = time.monotonic() + SUSPECT_SECONDS

    def elsewhere(self, keys: Sequence[PageKey]) -> list[PageKey]:
        """Those of ``keys`` whose home is another worker now (no I/O)."""
        return [key for key, home in homes_of(keys, self.homes()).items()
                if home != self.address]  # fmt: skip

    def fetch(
        self,
        target: AbstractFileSystem,
        target_id: str,
        block_size: int,
        keys: Sequence[PageKey],
        cookies: dict[PageKey, FileCookie],
    ) -> PeerResult:
        """Pages of ``keys`` whose home is another worker, from their homes."""
        result = PeerResult()
        loop = self.worker.loop.asyncio_loop
        if _running_loop() is loop:  # a wait here would stop the loop the answers need
            return result
        homes = self.homes()
        requests: dict[tuple[str, FileCookie], list[int]] = {}
        for key, home in homes_of(keys, homes).items():
            if home != self.address:
                requests.setdefault((home, cookies[key]), []).append(key.index)
        if not requests:
            return result
        result.asked = sum(map(len, requests.values()))
        result.requests = len(requests)
        payloads = [(home, self._payload(target, target_id, block_size, cookie, indices))
                    for (home, cookie), indices in requests.items()]  # fmt: skip
        future = asyncio.run_coroutine_threadsafe(self._ask_all(payloads), loop)
        try:  # each request ends within timeout; the margin is the loop's own delay
            answers = future.result(self.timeout + 5)
        except Exception as exc:
            future.cancel()
            answers = [exc] * len(payloads)
        for ((home, cookie), indices), answer in zip(requests.items(), answers, strict=True):
            self._take(result, home, cookie, indices, block_size, answer)
        return result

    def _take(self, result: PeerResult, home: str, cookie: FileCookie, indices: list[int],
              block_size: int, answer: Any) -> None:  # fmt: skip
        """Add one home's answer to ``result`` (checked), or count why not."""
        try:
            if isinstance(answer, BaseException):
                raise answer
            if isinstance(answer, dict) and answer.get("status") == "busy":
                result.fallback += len(indices)  # under memory pressure: not an error
                return
            if not isinstance(answer, dict) or answer.get("status") != "OK":
                said = answer.get("error") if isinstance(answer, dict) else type(answer).__name__
                raise PeerAnswerError(f"the peer said: {said}")
            pages = check_answer(answer, cookie, indices, block_size)
        except Exception as exc:
            result.errors += 1
            result.fallback += len(indices)
            self.suspect(home)
            self._warn("peer", "netcache: peer %s failed (%s); its pages come from the remote",
                       home, describe_error(exc))  # fmt: skip
            return
        for index, data in pages.items():
            result.pages[PageKey(cookie.file_id, cookie.version, index)] = data
        result.fallback += len(indices) - len(pages)

    def _payload(self, target: AbstractFileSystem, target_id: str, block_size: int,
                 cookie: FileCookie, indices: list[int]) -> bytes:  # fmt: skip
        blob = self._blobs.get(target_id)
        if blob is None:
            blob = self._blobs[target_id] = pickle.dumps(target)
        return pickle.dumps((target_id, block_size, blob, cookie, indices))

    async def _ask_all(self, payloads: list[tuple[str, bytes]]) -> list[Any]:
        async def ask(home: str, payload: bytes) -> Any:
            call = getattr(self.worker.rpc(home), HANDLER)
            return await asyncio.wait_for(call(payload=payload), self.timeout)

        return await asyncio.gather(*(ask(h, p) for h, p in payloads), return_exceptions=True)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class PageSharing(WorkerPlugin):
    """The worker plugin :func:`netcache.dask.share_pages` registers: on each worker, the
    handler that serves peers, the peer source every cache of the process asks, and the
    task that keeps the live workers up to date."""

    name = "netcache-share-pages"

    def __init__(self, timeout: float = 2.0) -> None:
        # pickled to every worker: only settings here, the rest is made in setup
        self.timeout = timeout
        self._server: PageServer | None = None
        self._client: PeerClient | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._warn: WarnOnce | None = None

    async def setup(self, worker: Any) -> None:
        self._warn = WarnOnce()
        self._server = PageServer()
        self._client = PeerClient(worker, self.timeout)
        worker.handlers[HANDLER] = self._server.handle
        await self._update(worker)
        self._refresh = asyncio.ensure_future(self._keep_updated(worker))
        peers.install(self._client)

    async def _update(self, worker: Any) -> None:
        assert self._client is not None
        try:
            info = await worker.scheduler.identity()
        except Exception as exc:  # the scheduler is away: keep the last list, say so once
            assert self._warn is not None
            self._warn("refresh", "netcache: the live workers could not be asked (%s); "
                       "the last list stands", describe_error(exc))  # fmt: skip
            return
        running = [a for a, w in info.get("workers", {}).items() if w.get("status") == "running"]
        self._client.set_live(running)

    async def _keep_updated(self, worker: Any) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            await self._update(worker)

    def teardown(self, worker: Any) -> None:
        peers.uninstall(self._client)
        worker.handlers.pop(HANDLER, None)
        if self._refresh is not None:
            self._refresh.cancel()
        if self._server is not None:
            self._server.close()
