"""netcache against fsspec's caches on the same workloads, in the same run.

A local HTTP server runs in another process (``python -m netcache.testing.httpserver``) with a
256 MiB file and 200 files of 1 MiB, adding latency to every request (0 and 20 ms). Each
(cache, workload, latency) runs in a fresh process that reads cold, then warm; the cache
folder's files are then pushed out of the OS page cache (``fsync`` and
``posix_fadvise(DONTNEED)`` on each, nothing machine-wide), their raw read speed is
measured, and a second fresh process reads again ("new process from disk"). Workloads:
sequential 1 MiB reads of the big file, random 64 KiB reads of it, the small files
opened and read one after the other, the small files in one ``cat`` call (as zarr's
``getitems`` asks), and ``cat_ranges`` of many ranges of the big file.

Peers: plain fsspec HTTP, ``blockcache``, ``simplecache``, and the ``background`` and
``adaptive`` read-ahead caches of fsspec's HTTP files. netcache also runs without a disk
tier (the cost of write-back) and with ``memory_limit="64MiB"`` (peak RSS while
streaming). Reported: MiB/s, requests, bytes on the wire, peak RSS over the interpreter's
baseline, each the median of ``--repeat`` runs, and netcache's ratio to each peer and to
the best peer, measured in the same run. Charts go to ``benchmarks/results/`` when
matplotlib is installed (``pip install netcache[plot]``).

    python benchmarks/bench_read.py              # full run (about half an hour here)
    python benchmarks/bench_read.py --quick      # 64 MiB file, 1 repeat, a few minutes
"""

from __future__ import annotations

import argparse
import json
import mmap
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
from pathlib import Path
from typing import Any

MiB = 1 << 20
ALL = ("seq", "random", "small", "catmany", "ranges")
# cache -> the workloads it runs. background/adaptive are file read-ahead modes: they do
# nothing for cat and cat_ranges, so they are not asked.
CACHES: dict[str, tuple[str, ...]] = {
    "netcache": ALL,
    "netcache (no disk tier)": ("seq", "small"),
    "netcache (64 MiB)": ("seq",),
    "plain": ALL,
    "blockcache": ALL,
    "simplecache": ALL,
    "background": ("seq", "random", "small"),
    "adaptive": ("seq", "random", "small"),
    # with --before DIR: netcache as a checkout of an earlier commit (git worktree) has it,
    # in the same run, for before/after tables
    "netcache (before)": ALL,
}
PEERS = ("plain", "blockcache", "simplecache", "background", "adaptive")
LABELS = {
    "seq": "sequential 1 MiB reads",
    "random": "{random} random 64 KiB reads",
    "small": "{small} files of 1 MiB",
    "catmany": "cat of {small} files of 1 MiB",
    "ranges": "cat_ranges: {ranges} ranges of 256 KiB",
}
RESULTS = Path(__file__).resolve().parent / "results"


def make_fs(cache: str, folder: str) -> tuple[Any, dict[str, Any]]:
    """The filesystem, and the arguments its ``open`` takes."""
    import fsspec

    if cache in ("plain", "background", "adaptive"):
        fs = fsspec.filesystem("http", skip_instance_cache=True)
        return fs, ({} if cache == "plain" else {"cache_type": cache})
    if cache in ("blockcache", "simplecache"):
        return fsspec.filesystem(cache, target_protocol="http", cache_storage=folder,
                                 skip_instance_cache=True), {}  # fmt: skip
    import netcache

    options: dict[str, Any] = {"cache_dir": folder, "check_interval": None}
    if cache == "netcache (no disk tier)":
        options["cache_dir"] = False
    if cache == "netcache (64 MiB)":
        options["memory_limit"] = "64MiB"
    return netcache.NetCacheFileSystem(target_protocol="http", **options), {}


def run_workload(fs: Any, open_args: dict[str, Any], workload: str, url: str,
                 opts: argparse.Namespace) -> int:  # fmt: skip
    """Do the reads; return the bytes read."""
    total = 0
    big = f"{url}/big.bin"
    if workload == "seq":
        with fs.open(big, "rb", **open_args) as f:
            while chunk := f.read(MiB):
                total += len(chunk)
    elif workload == "random":
        rng = random.Random(42)
        size = fs.size(big)
        with fs.open(big, "rb", **open_args) as f:
            for _ in range(opts.random):
                f.seek(rng.randrange(size - 65536))
                total += len(f.read(65536))
    elif workload == "catmany":  # one call for many files, as zarr's getitems makes
        urls = [f"{url}/small/{i}.bin" for i in range(opts.small)]
        total = sum(map(len, fs.cat(urls).values()))
    elif workload == "ranges":
        rng = random.Random(7)
        size = fs.size(big)
        starts = sorted(rng.randrange(size - 256 * 1024) for _ in range(opts.ranges))
        ends = [s + 256 * 1024 for s in starts]
        total = sum(map(len, fs.cat_ranges([big] * len(starts), starts, ends)))
    else:
        for i in range(opts.small):
            with fs.open(f"{url}/small/{i}.bin", "rb", **open_args) as f:
                total += len(f.read())
    return total


def control(url: str, what: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/_control/{what}") as r:
        return json.loads(r.read())


def child(opts: argparse.Namespace) -> None:
    """One process: the passes asked for, each measured on its own."""
    fs, open_args = make_fs(opts.cache, opts.folder)
    # the baseline includes the libraries (fsspec, aiohttp, ...) every peer imports too
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = []
    for phase in opts.phases.split(","):
        control(opts.url, "reset")
        started = time.perf_counter()
        nbytes = run_workload(fs, open_args, opts.workload, opts.url, opts)
        seconds = time.perf_counter() - started
        counts = control(opts.url, "stats")
        out.append({"phase": phase, "seconds": seconds, "bytes": nbytes, **counts})
    if opts.cache.startswith("netcache"):
        fs.flush(timeout=300)
        out[-1]["nbf"] = fs.stats().stores.nbf
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"passes": out, "peak_rss": peak, "baseline_rss": baseline}))


def spawn(cache: str, workload: str, url: str, folder: str, phases: str,
          opts: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    cmd = [sys.executable, __file__, "--child", "--cache", cache, "--workload", workload,
           "--url", url, "--folder", folder, "--phases", phases, "--small", str(opts.small),
           "--random", str(opts.random), "--ranges", str(opts.ranges)]  # fmt: skip
    env = dict(os.environ)
    if cache == "netcache (before)":  # the earlier checkout's package comes first
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [opts.before, env.get("PYTHONPATH")]))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{cache} {workload} {phases}: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def evict(folder: str) -> None:
    """Push the folder's files out of the OS page cache (theirs only, nothing else)."""
    for path in Path(folder).rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def raw_read(folder: str) -> float:
    """MiB/s of reading every file of the folder once, from disk (then evicted again)."""
    evict(folder)
    # page-aligned, as the page cache: a bytearray starts 16 bytes into a page, and the
    # kernel's copy into it runs 5-8x slower here (bench_floors.py: "Reading a file from
    # the OS page cache")
    buf = mmap.mmap(-1, MiB)
    total, started = 0, time.perf_counter()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    total += n
    seconds = time.perf_counter() - started
    evict(folder)
    return total / MiB / seconds if total else 0.0


def measure(opts: argparse.Namespace, url: str, latency: float) -> dict[tuple, list]:
    control(url, f"latency/{latency}")
    results: dict[tuple, list] = {}
    for _ in range(opts.repeat):
        for workload in opts.workloads:
            for cache, workloads in CACHES.items():
                if workload not in workloads or (opts.only and cache not in opts.only):
                    continue
                if cache == "netcache (before)" and not opts.before:
                    continue
                folder = tempfile.mkdtemp(prefix="bench-")
                try:
                    first = spawn(cache, workload, url, folder, "cold,warm", opts)
                    raw = raw_read(folder)
                    second = spawn(cache, workload, url, folder, "new process from disk", opts)
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
                for run in (first, second):
                    for p in run["passes"]:
                        p["rss_over_baseline"] = run["peak_rss"] - run["baseline_rss"]
                        p["raw_disk"] = raw
                        results.setdefault((workload, p["phase"], cache), []).append(p)
    return results


def rate(run: dict[str, Any]) -> float:
    return run["bytes"] / MiB / run["seconds"]


def report(results: dict[tuple, list], latency: float, opts: argparse.Namespace) -> list[dict]:
    """Print the tables; return the rows (for the charts and the summary)."""
    ms = f"{latency * 1000:.0f} ms"
    print(f"\n### {ms} per request, median of {opts.repeat} run(s)\n")
    print("| workload | pass | cache | MiB/s | netcache ÷ this | requests | MiB on wire "
          "| peak RSS over baseline, MiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for (workload, phase, cache), runs in results.items():
        mine = results.get((workload, phase, "netcache"), runs)
        row = {
            "latency": ms, "workload": workload, "phase": phase, "cache": cache,
            "rate": statistics.median(map(rate, runs)),
            "requests": statistics.median(r["gets"] + r["heads"] for r in runs),
            "wire": statistics.median(r["bytes_sent"] for r in runs) / MiB,
            "read": statistics.median(r["bytes"] for r in runs) / MiB,
            "rss": statistics.median(r["rss_over_baseline"] for r in runs) / MiB,
            "raw_disk": statistics.median(r["raw_disk"] for r in runs),
            # ratios run by run (same run), then the median
            "ratio": statistics.median(rate(a) / rate(b) for a, b in zip(mine, runs, strict=False)),
        }  # fmt: skip
        label = row["label"] = LABELS[workload].format(**vars(opts))
        rows.append(row)
        ratio = "" if cache == "netcache" else f"{row['ratio']:.2f}"
        print(f"| {label} | {phase} | {cache} | {row['rate']:,.0f} | {ratio} | "
              f"{row['requests']:.0f} | {row['wire']:,.1f} | {row['rss']:,.0f} |")  # fmt: skip
    summary(results, rows, ms, opts)
    sys.stdout.flush()
    return rows


def summary(results: dict[tuple, list], rows: list[dict], ms: str,
            opts: argparse.Namespace) -> None:  # fmt: skip
    """netcache against the best peer of each (workload, pass), ratios from the same runs."""
    print(f"\n#### netcache against the best peer, {ms}\n")
    print("| workload | pass | netcache MiB/s | best peer | its MiB/s | netcache ÷ best "
          "| wire ÷ read (netcache) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        if row["cache"] != "netcache":
            continue
        peers = [r for r in rows if r["cache"] in PEERS and r["workload"] == row["workload"]
                 and r["phase"] == row["phase"]]  # fmt: skip
        if not peers:
            continue
        best = max(peers, key=lambda r: r["rate"])
        label = LABELS[row["workload"]].format(**vars(opts))
        amp = row["wire"] / row["read"] if row["read"] else 0
        print(f"| {label} | {row['phase']} | {row['rate']:,.0f} | {best['cache']} | "
              f"{best['rate']:,.0f} | {best['ratio']:.2f} | {amp:.2f} |")  # fmt: skip
    by = {(r["workload"], r["phase"], r["cache"]): r for r in rows}
    extra = []
    if ("seq", "cold", "netcache (no disk tier)") in by:
        mine = results[("seq", "cold", "netcache")]
        mem = results[("seq", "cold", "netcache (no disk tier)")]
        cost = statistics.median(rate(a) / rate(b) for a, b in zip(mine, mem, strict=False))
        extra.append(f"- write-back cost: cold sequential with the disk tier = {cost:.2f} x "
                     "without it (same runs)")  # fmt: skip
    if ("seq", "cold", "netcache (64 MiB)") in by:
        rss = max(by[("seq", p, "netcache (64 MiB)")]["rss"] for p in ("cold", "warm"))
        extra.append(f"- peak RSS streaming with memory_limit=64MiB: baseline + {rss:.0f} MiB")
    disk = by.get(("seq", "new process from disk", "netcache"))
    if disk is not None:
        extra.append(f"- new process from disk: {disk['rate']:,.0f} MiB/s, raw read of the "
                     f"same folder {disk['raw_disk']:,.0f} MiB/s "
                     f"({disk['rate'] / max(disk['raw_disk'], 1e-9):.0%})")  # fmt: skip
    print("\n" + "\n".join(extra))


def wide_table(rows: list[dict], opts: dict[str, Any]) -> str:
    """One line per (latency, workload, pass): MiB/s of netcache and every peer, and
    netcache against the best peer (ratio of the same runs); the README's table."""
    caches = ["netcache", *PEERS]
    out = ["| latency | workload | pass | " + " | ".join(caches) + " | netcache ÷ best peer |",
           "|---" * (len(caches) + 4) + "|"]  # fmt: skip
    by = {(r["latency"], r["workload"], r["phase"], r["cache"]): r for r in rows}
    for r in rows:
        if r["cache"] != "netcache":
            continue
        key = (r["latency"], r["workload"], r["phase"])
        peers = [by[(*key, c)] for c in PEERS if (*key, c) in by]
        best = max(peers, key=lambda p: p["rate"])
        cells = [f"{by[(*key, c)]['rate']:,.0f}" if (*key, c) in by else "-" for c in caches]
        label = r.get("label") or LABELS[r["workload"]].format(**opts)
        out.append(f"| {key[0]} | {label} | {key[2]} | " + " | ".join(cells)
                   + f" | {best['ratio']:.2f} ({best['cache']}) |")  # fmt: skip
    return "\n".join(out)


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
    parser.add_argument("--ranges", type=int, default=100)
    parser.add_argument("--size-mib", type=int, default=None, help="default 256 (--quick: 64)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-ms", default="0,20", help="comma-separated")
    parser.add_argument("--bandwidth-mib", type=float, default=0.0,
                        help="the object-store model: MiB/s each connection gets at most "
                             "(0: loopback speed; S3 gives about 64)")  # fmt: skip
    parser.add_argument("--only", type=lambda s: s.split(","), default=None,
                        help="comma-separated caches to run (default: all)")  # fmt: skip
    parser.add_argument("--workloads", type=lambda s: s.split(","), default=list(ALL),
                        help=f"comma-separated, of {','.join(ALL)} (default: all)")  # fmt: skip
    parser.add_argument(
        "--before",
        help="a checkout of an earlier netcache (git worktree "
        "add DIR REV): also run it, as 'netcache (before)'",
    )
    parser.add_argument(
        "--out",
        default="bench_read",
        help="results file name in benchmarks/results/ (default bench_read)",
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--table-from", help="print the README table of a results JSON")
    opts = parser.parse_args()
    if opts.child:
        return child(opts)
    if opts.table_from:  # the README table, and the chart drawn again, from saved rows
        saved = json.loads(Path(opts.table_from).read_text())
        print(wide_table(saved, vars(opts)))
        return draw(saved)
    if opts.quick:
        opts.size_mib, opts.repeat, opts.small, opts.random = opts.size_mib or 64, 1, 50, 500
    opts.size_mib = opts.size_mib or 256
    server = subprocess.Popen(
        [sys.executable, "-m", "netcache.testing.httpserver", "--size-mib", str(opts.size_mib),
         "--small-files", str(opts.small)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    rows: list[dict] = []
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        control(url, f"bandwidth/{opts.bandwidth_mib * MiB}")
        cap = f", {opts.bandwidth_mib:g} MiB/s per connection" if opts.bandwidth_mib else ""
        print(f"# netcache read benchmark: {opts.size_mib} MiB file, {os.cpu_count()} cores, "
              f"server {url} in another process{cap}")  # fmt: skip
        for latency_ms in opts.latency_ms.split(","):
            latency = float(latency_ms) / 1000
            saved = opts.random
            if latency > 0:  # plain http would take minutes over 2,000 random reads
                opts.random = min(opts.random, 200)
            rows += report(measure(opts, url, latency), latency, opts)
            opts.random = saved
    finally:
        server.terminate()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{opts.out}.json").write_text(json.dumps(rows, indent=1))
    print()
    print(wide_table(rows, vars(opts)))
    draw(rows)


def draw(rows: list[dict]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from charts import throughput_chart

    written = throughput_chart(rows, RESULTS / "bench_read.png")
    print(f"\nchart: {written}" if written else "\nchart skipped: pip install netcache[plot]")


if __name__ == "__main__":
    main()
