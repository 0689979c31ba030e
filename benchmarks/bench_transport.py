"""The transport alone: the same ranged GETs of one file, by three clients, in one run.

A local HTTP server (``python -m netcache.testing.httpserver``, in another process) serves
a file; each client fetches ``--ranges`` ranges of ``--range-mib`` MiB, ``--concurrency``
at a time, pinned to the file's ETag (``If-Match``), in a fresh process:

- ``aiohttp``: fsspec's HTTP session, each answer read whole (``bytes``), as fsspec's
  ``cat_file`` does;
- ``netcache``: netcache's own HTTP transport, each answer streamed into page buffers
  (what a cold netcache read costs before the page cache);
- ``obstore`` (if installed: ``pip install obstore``): the Rust ``object_store``
  bindings, ``get_async`` with a range and ``if_match``, each answer read whole.

Reported: MiB/s and CPU ÷ wall (the client process's CPU time over its wall time; above
1 means more than one core), medians of ``--repeat`` runs, and each client against
aiohttp within the same run. With ``--latency-ms`` and ``--bandwidth-mib`` the server is
the object-store model instead of loopback.

    python benchmarks/bench_transport.py                    # loopback, about 30 s
    python benchmarks/bench_transport.py --latency-ms 30 --bandwidth-mib 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from typing import Any

MiB = 1 << 20
CLIENTS = ("aiohttp", "netcache", "obstore")


async def _bounded(coros: list[Any], limit: int) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with gate:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


def fetch(client: str, url: str, ranges: list[tuple[int, int]], limit: int) -> int:
    """Fetch every range with ``client``; the bytes received."""
    if client == "obstore":
        from obstore.store import HTTPStore

        base, name = url.rsplit("/", 1)
        store = HTTPStore.from_url(base, client_options={"allow_http": True})
        import obstore

        etag = obstore.head(store, name)["e_tag"]

        async def one(start: int, end: int) -> int:
            got = await obstore.get_async(store, name, options={"range": (start, end),
                                                                "if_match": etag})  # fmt: skip
            return len(await got.bytes_async())

        return sum(asyncio.run(_bounded([one(s, e) for s, e in ranges], limit)))
    import fsspec
    from fsspec.asyn import sync

    fs = fsspec.filesystem("http", skip_instance_cache=True)
    etag = fs.info(url)["ETag"]
    if client == "netcache":
        from netcache.answers import Pin
        from netcache.http import get_ranges

        fs.batch_size = limit
        pin = Pin.of_info(fs.info(url), fs.size(url))
        answers = get_ranges(fs, url, ranges, 128 << 10, pin, {"If-Match": etag})
        return sum(a.received for a in answers)

    async def aio(start: int, end: int) -> int:
        session = await fs.set_session()
        headers = {"Range": f"bytes={start}-{end - 1}", "If-Match": etag}
        async with session.get(url, headers=headers) as answer:
            answer.raise_for_status()
            return len(await answer.read())

    async def every() -> list[int]:
        return await _bounded([aio(s, e) for s, e in ranges], limit)

    return sum(sync(fs.loop, every))


def child(opts: argparse.Namespace) -> None:
    size = opts.ranges * opts.range_mib * MiB
    ranges = [(i, i + opts.range_mib * MiB) for i in range(0, size, opts.range_mib * MiB)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    nbytes = fetch(opts.client, f"{opts.url}/big.bin", ranges, opts.concurrency)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    assert nbytes == size, (nbytes, size)
    print(json.dumps({"rate": nbytes / MiB / wall, "cpu_per_wall": cpu / wall}), flush=True)
    if opts.client == "obstore":
        # obstore 0.12.1 sometimes aborts (SIGABRT) as the interpreter exits, its runtime
        # torn down under it: the figures are printed, so leave without the teardown
        os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client")
    parser.add_argument("--url")
    parser.add_argument("--ranges", type=int, default=64)
    parser.add_argument("--range-mib", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--bandwidth-mib", type=float, default=0.0)
    opts = parser.parse_args()
    if opts.child:
        return child(opts)
    try:
        import obstore  # noqa: F401

        clients = CLIENTS
    except ImportError:
        clients = CLIENTS[:2]
        print("obstore is not installed: pip install obstore")
    size_mib = opts.ranges * opts.range_mib
    server = subprocess.Popen(
        [sys.executable, "-m", "netcache.testing.httpserver", "--size-mib", str(size_mib),
         "--latency-ms", str(opts.latency_ms), "--bandwidth-mib", str(opts.bandwidth_mib)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    runs: dict[str, list[dict[str, float]]] = {c: [] for c in clients}
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        urllib.request.urlopen(f"{url}/_control/stats").read()
        for _ in range(opts.repeat):
            for client in clients:
                cmd = [sys.executable, __file__, "--child", "--client", client, "--url", url,
                       "--ranges", str(opts.ranges), "--range-mib", str(opts.range_mib),
                       "--concurrency", str(opts.concurrency)]  # fmt: skip
                done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
                if done.returncode:
                    raise RuntimeError(f"{client} (exit {done.returncode}): {done.stderr[-2000:]}")
                runs[client].append(json.loads(done.stdout))
    finally:
        server.terminate()
    model = (f"{opts.latency_ms:g} ms, {opts.bandwidth_mib:g} MiB/s per connection"
             if opts.bandwidth_mib or opts.latency_ms else "loopback")  # fmt: skip
    print(
        f"\n### {opts.ranges} ranges of {opts.range_mib} MiB, {opts.concurrency} at a time, "
        f"{model}; median of {opts.repeat}, {os.cpu_count()} cores\n"
    )
    print("| client | MiB/s | CPU ÷ wall | CPU per GiB, s | MiB/s ÷ aiohttp (same run) |")
    print("|---|---|---|---|---|")
    for client in clients:
        rate = statistics.median(r["rate"] for r in runs[client])
        cpw = statistics.median(r["cpu_per_wall"] for r in runs[client])
        per_gib = statistics.median(r["cpu_per_wall"] / r["rate"] * 1024 for r in runs[client])
        ratio = statistics.median(
            a["rate"] / b["rate"] for a, b in zip(runs[client], runs["aiohttp"], strict=True)
        )
        print(f"| {client} | {rate:,.0f} | {cpw:.2f} | {per_gib:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
