"""netcache's cold sequential read with its HTTP transport swapped for obstore, end to end.

``bench_transport.py`` measures the transports alone; this measures what swapping
netcache's (fsspec's aiohttp session, answers streamed into pages) for obstore's
(``get_async`` with a range and ``if_match``, its stream fed into the same pages) would
buy a whole read: a 256 MiB file read 1 MiB at a time, memory only, on loopback, in a
fresh process per client, three reads each. Needs ``pip install obstore``.

    python benchmarks/obstore_probe.py aiohttp
    python benchmarks/obstore_probe.py obstore
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

from fsspec.asyn import sync

import netcache
import netcache.transport
from netcache.buffers import PageFiller

MiB = 1 << 20


def obstore_ranges(chunk: int) -> Any:
    """A stand-in for ``netcache.http.get_ranges`` that fetches with obstore."""
    import obstore
    from obstore.store import HTTPStore

    stores: dict[str, Any] = {}

    def get_ranges(
        target: Any,
        path: str,
        ranges: list[tuple[int, int]],
        page_size: int,
        pin: Any,
        headers: dict[str, str] | None = None,
    ) -> list[PageFiller]:
        base, name = path.rsplit("/", 1)
        if base not in stores:
            stores[base] = HTTPStore.from_url(base, client_options={"allow_http": True})
        store, etag = stores[base], (headers or {}).get("If-Match")

        async def one(start: int, end: int) -> PageFiller:
            got = await obstore.get_async(store, name, options={"range": (start, end),
                                                                "if_match": etag})  # fmt: skip
            pages = PageFiller(page_size, end - start)
            async for part in got.stream(min_chunk_size=chunk):
                pages.feed(memoryview(part))
            return pages

        async def every() -> list[PageFiller]:
            return list(await asyncio.gather(*(one(s, e) for s, e in ranges)))

        return sync(target.loop, every)  # type: ignore[no-any-return]

    return get_ranges


def main() -> None:
    client = sys.argv[1] if len(sys.argv) > 1 else "aiohttp"
    if client == "obstore":
        netcache.transport.get_http_ranges = obstore_ranges(1 << 20)  # type: ignore[assignment]
    server = subprocess.Popen(
        [sys.executable, "-m", "netcache.testing.httpserver", "--size-mib", "256"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip() + "/big.bin"
        for i in range(3):
            fs = netcache.NetCacheFileSystem(target_protocol="http", cache_dir=False,
                                             check_interval=None, skip_instance_cache=True,
                                             memory_limit=f"{512 + i}MiB")  # fmt: skip
            cpu, wall, nbytes = time.process_time(), time.perf_counter(), 0
            with fs.open(url) as f:
                while chunk := f.read(MiB):
                    nbytes += len(chunk)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"{client}: {nbytes / MiB / wall:,.0f} MiB/s, CPU ÷ wall {cpu / wall:.2f}, "
                  f"CPU per GiB {cpu / (nbytes / MiB) * 1024:.2f} s", flush=True)  # fmt: skip
            netcache.process.reset()
    finally:
        server.terminate()
    os._exit(0)  # obstore 0.12.1 sometimes aborts as the interpreter tears down


if __name__ == "__main__":
    main()
