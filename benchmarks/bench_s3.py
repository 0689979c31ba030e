"""netcache against fsspec's caches over S3 (s3fs), on the same workloads in the same run.

An S3 API server (moto's, on 127.0.0.1) runs in another process, holding 100 objects of
256 KiB and one of 64 MiB. Each (cache, workload) runs in a fresh process and reads
cold, then warm: the small objects one after the other, whole; the big one sequentially
in 1 MiB reads. Requests are counted at the client (each S3 API call s3fs makes). Peers:
plain s3fs, ``blockcache``, ``simplecache``. Reported: MiB/s, GetObject and HeadObject
calls, the median of ``--repeat`` runs, and netcache's ratio to each peer measured in
the same run. moto answers from Python, so rates are those of a slow server with no
network latency: the requests a read takes show what a real S3 (tens of ms each) adds.

Needs the test extra (``pip install netcache[test]``: s3fs, moto).

    python benchmarks/bench_s3.py                # about 2 minutes here
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

MiB = 1 << 20
CACHES = ("netcache", "plain", "blockcache", "simplecache")
WORKLOADS = {"small": "100 objects of 256 KiB", "seq": "64 MiB object, 1 MiB reads"}
BUCKET = "ncbench"


def options(endpoint: str) -> dict[str, Any]:
    return {"key": "bench", "secret": "bench", "endpoint_url": endpoint,
            "client_kwargs": {"region_name": "eu-west-1"}}  # fmt: skip


def make_fs(cache: str, endpoint: str, folder: str) -> Any:
    import fsspec

    opts = options(endpoint)
    if cache == "plain":
        return fsspec.filesystem("s3", skip_instance_cache=True, **opts)
    if cache in ("blockcache", "simplecache"):
        return fsspec.filesystem(cache, target_protocol="s3", target_options=opts,
                                 cache_storage=folder, skip_instance_cache=True)  # fmt: skip
    import netcache

    return netcache.NetCacheFileSystem(target_protocol="s3", target_options=opts,
                                       cache_dir=folder)  # fmt: skip


def child(cache: str, workload: str, endpoint: str) -> None:
    """One process: a cold pass and a warm one, each timed and its S3 calls counted."""
    import s3fs

    calls: list[str] = []
    call = s3fs.S3FileSystem._call_s3

    async def counting(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(method)
        return await call(self, method, *args, **kwargs)

    s3fs.S3FileSystem._call_s3 = counting  # type: ignore[method-assign]
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as folder:
        fs = make_fs(cache, endpoint, folder)
        for phase in ("cold", "warm"):
            calls.clear()
            started, nbytes = time.perf_counter(), 0
            if workload == "small":
                for i in range(100):
                    with fs.open(f"{BUCKET}/small/{i}.bin", "rb") as f:
                        nbytes += len(f.read())
            else:
                with fs.open(f"{BUCKET}/big.bin", "rb") as f:
                    while chunk := f.read(MiB):
                        nbytes += len(chunk)
            seconds = time.perf_counter() - started
            gets, heads = calls.count("get_object"), calls.count("head_object")
            out.append({"phase": phase, "rate": nbytes / MiB / seconds, "gets": gets,
                        "heads": heads})  # fmt: skip
        if cache == "netcache":  # its write-back ends before the folder goes
            import netcache

            netcache.close_all()
    print(json.dumps(out))


def start_server() -> tuple[subprocess.Popen[str], str]:
    code = ("import moto.server, sys, time\n"
            "s = moto.server.ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)\n"
            "s.start(); h, p = s.get_host_and_port(); print(f'http://{h}:{p}', flush=True)\n"
            "sys.stdin.read()")  # fmt: skip
    server = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)  # fmt: skip
    assert server.stdout is not None
    return server, server.stdout.readline().strip()


def fill(endpoint: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options(endpoint))
    fs.mkdir(BUCKET)
    for i in range(100):
        fs.pipe_file(f"{BUCKET}/small/{i}.bin", os.urandom(256 << 10))
    fs.pipe_file(f"{BUCKET}/big.bin", os.urandom(64 * MiB))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", nargs=3, metavar=("CACHE", "WORKLOAD", "ENDPOINT"),
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()
    if opts.child:
        return child(*opts.child)
    server, endpoint = start_server()
    runs: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    try:
        fill(endpoint)
        for _ in range(opts.repeat):
            for workload in WORKLOADS:
                for cache in CACHES:
                    cmd = [sys.executable, __file__, "--child", cache, workload, endpoint]
                    done = subprocess.run(cmd, capture_output=True, text=True)
                    if done.returncode:
                        raise RuntimeError(f"{cache} {workload}: {done.stderr[-2000:]}")
                    for p in json.loads(done.stdout.splitlines()[-1]):
                        runs.setdefault((workload, p["phase"], cache), []).append(p)
    finally:
        server.kill()
    print(f"# netcache over S3: moto on 127.0.0.1 in another process, {os.cpu_count()} cores, "
          f"median of {opts.repeat} run(s)\n")  # fmt: skip
    print("| workload | pass | cache | MiB/s | netcache ÷ this | GetObject | HeadObject |")
    print("|---|---|---|---|---|---|---|")
    for (workload, phase, cache) in [(w, p, c) for w in WORKLOADS for p in ("cold", "warm")
                                     for c in CACHES]:  # fmt: skip
        mine, ours = runs[(workload, phase, cache)], runs[(workload, phase, "netcache")]
        ratio = statistics.median(a["rate"] / b["rate"] for a, b in zip(ours, mine, strict=True))
        print(f"| {WORKLOADS[workload]} | {phase} | {cache} "
              f"| {statistics.median(r['rate'] for r in mine):,.1f} "
              f"| {'' if cache == 'netcache' else f'{ratio:.2f}'} "
              f"| {mine[0]['gets']} | {mine[0]['heads']} |")  # fmt: skip


if __name__ == "__main__":
    main()
