"""netcache against fsspec's caches on the same workloads, in the same run.

A local HTTP server runs in another process (``python -m netcache.httpserver``) with a
256 MiB file and 200 files of 1 MiB, optionally adding latency to every request. Each
(cache, workload, latency) runs in a fresh process that reads cold, then warm; a second
fresh process then reads again through the same cache folder ("new process"). Reported:
MiB/s, server requests, bytes on the wire, and the process's peak RSS, each the median
of ``--repeat`` runs, with ratios against netcache in the same run.

    python benchmarks/bench_read.py              # full run (several minutes)
    python benchmarks/bench_read.py --quick      # 64 MiB file, 1 repeat, a minute
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

CACHES = ["netcache", "plain", "blockcache", "simplecache"]
MiB = 1 << 20


def make_fs(cache: str, folder: str) -> Any:
    import fsspec

    if cache == "plain":
        return fsspec.filesystem("http", skip_instance_cache=True)
    if cache in ("blockcache", "simplecache"):
        return fsspec.filesystem(cache, target_protocol="http", cache_storage=folder,
                                 skip_instance_cache=True)  # fmt: skip
    import netcache

    return netcache.NetCacheFileSystem(target_protocol="http", cache_dir=folder,
                                       check_interval=None)  # fmt: skip


def run_workload(fs: Any, workload: str, url: str, nsmall: int, nrandom: int) -> int:
    """Do the reads; return the bytes read."""
    total = 0
    if workload == "seq":
        with fs.open(f"{url}/big.bin", "rb") as f:
            while chunk := f.read(MiB):
                total += len(chunk)
    elif workload == "random":
        rng = random.Random(42)
        size = fs.size(f"{url}/big.bin")
        with fs.open(f"{url}/big.bin", "rb") as f:
            for _ in range(nrandom):
                f.seek(rng.randrange(size - 65536))
                total += len(f.read(65536))
    else:
        for i in range(nsmall):
            with fs.open(f"{url}/small/{i}.bin", "rb") as f:
                total += len(f.read())
    return total


def control(url: str, what: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/_control/{what}") as r:
        return json.loads(r.read())


def child(args: argparse.Namespace) -> None:
    """One process: the passes asked for, each measured on its own."""
    fs = make_fs(args.cache, args.folder)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = []
    for phase in args.phases.split(","):
        control(args.url, "reset")
        started = time.perf_counter()
        nbytes = run_workload(fs, args.workload, args.url, args.small, args.random)
        seconds = time.perf_counter() - started
        counts = control(args.url, "stats")
        out.append({"phase": phase, "seconds": seconds, "bytes": nbytes, **counts})
    if args.cache == "netcache":
        fs.flush(timeout=120)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"passes": out, "peak_rss": peak, "baseline_rss": baseline}))


def spawn(cache: str, workload: str, url: str, folder: str, phases: str,
          opts: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    cmd = [sys.executable, __file__, "--child", "--cache", cache, "--workload", workload,
           "--url", url, "--folder", folder, "--phases", phases, "--small", str(opts.small),
           "--random", str(opts.random)]  # fmt: skip
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def measure(opts: argparse.Namespace, url: str, latency: float) -> dict[tuple, list]:
    control(url, f"latency/{latency}")
    results: dict[tuple, list] = {}
    workloads = ["seq", "random", "small"]
    for _ in range(opts.repeat):
        for workload in workloads:
            for cache in CACHES:
                folder = tempfile.mkdtemp(prefix=f"bench-{cache}-")
                try:
                    first = spawn(cache, workload, url, folder, "cold,warm", opts)
                    second = spawn(cache, workload, url, folder, "new process", opts)
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
                for p in first["passes"] + second["passes"]:
                    p["peak_rss"] = (first if p in first["passes"] else second)["peak_rss"]
                    p["baseline_rss"] = first["baseline_rss"]
                    results.setdefault((workload, p["phase"], cache), []).append(p)
    return results


def report(results: dict[tuple, list], latency: float, opts: argparse.Namespace) -> None:
    print(f"\n### latency {latency * 1000:.0f} ms per request, median of {opts.repeat} run(s)\n")
    print(
        "| workload | pass | cache | MiB/s | netcache ÷ this | requests | MiB on wire "
        "| peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (workload, phase, cache), runs in results.items():
        rate = statistics.median(r["bytes"] / MiB / r["seconds"] for r in runs)
        ours = statistics.median(
            r["bytes"] / MiB / r["seconds"] for r in results[(workload, phase, "netcache")]
        )
        gets = statistics.median(r["gets"] + r["heads"] for r in runs)
        wire = statistics.median(r["bytes_sent"] for r in runs) / MiB
        rss = statistics.median(r["peak_rss"] for r in runs) / MiB
        label = {"seq": "sequential 1 MiB reads", "random": f"{opts.random} random 64 KiB",
                 "small": f"{opts.small} files of 1 MiB"}[workload]  # fmt: skip
        ratio = "" if cache == "netcache" else f"{ours / rate:.2f}"
        print(f"| {label} | {phase} | {cache} | {rate:,.0f} | {ratio} | {gets:.0f} | "
              f"{wire:,.1f} | {rss:,.0f} |")  # fmt: skip
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", default="netcache")
    parser.add_argument("--workload", default="seq")
    parser.add_argument("--url")
    parser.add_argument("--folder")
    parser.add_argument("--phases", default="cold,warm")
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--random", type=int, default=2000)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-ms", default="0,20", help="comma-separated")
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args()
    if opts.child:
        return child(opts)
    if opts.quick:
        opts.size_mib, opts.repeat, opts.small = 64, 1, 50
    server = subprocess.Popen(
        [sys.executable, "-m", "netcache.httpserver", "--size-mib", str(opts.size_mib),
         "--small-files", str(opts.small)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        print(f"# netcache read benchmark: {opts.size_mib} MiB file, {os.cpu_count()} cores, "
              f"server {url} in another process")  # fmt: skip
        for latency_ms in opts.latency_ms.split(","):
            latency = float(latency_ms) / 1000
            saved = opts.random
            if latency > 0:  # plain http would take minutes over 2,000 random reads
                opts.random = min(opts.random, 200)
            report(measure(opts, url, latency), latency, opts)
            opts.random = saved
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
