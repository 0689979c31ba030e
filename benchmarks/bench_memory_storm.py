"""Memory storm: readers stream from a local HTTP server while ballast pushes the process's
RSS across the pressure thresholds again and again; netcache (with its monitor) next to
fsspec's blockcache (which has no pressure response), in the same run.

Each run is a fresh process: a pressure-free pass measures throughput, then ballast of
``--ballast-mib`` is allocated every 1.5 s (held 0.8 s). The limit is set just above the
RSS after the calm pass. Reported: peak RSS over the limit, reclaim latency (first RSS
sample over the moderate threshold to first sample under target, while the ballast is
still held), throughput under pressure against without, VmScan counts, and hangs.

    python benchmarks/bench_memory_storm.py            # 3 runs each
    python benchmarks/bench_memory_storm.py --repeat 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MiB = 1 << 20


def _make_fs(opts: argparse.Namespace) -> tuple[Any, Any]:
    """The cache under test, and netcache's monitor (None for blockcache)."""
    import fsspec

    if opts.cache != "netcache":
        fs = fsspec.filesystem("blockcache", target_protocol="http", cache_storage=opts.folder)
        return fs, None
    import netcache

    monitor = netcache.MemoryPressureMonitor(1 << 40, interval=0.05, autostart=False)
    fs = netcache.NetCacheFileSystem(target_protocol="http", cache_dir=opts.folder,
                                     memory_limit="2GiB", check_interval=None,
                                     memory_monitor=monitor)  # fmt: skip
    return fs, monitor


class _Readers:
    """``opts.readers`` threads reading random MiB of ``url`` until stopped."""

    def __init__(self, fs: Any, url: str, count: int) -> None:
        self.fs, self.url, self.count = fs, url, count
        self.stop = threading.Event()
        self.done = 0

    def _read(self, seed: int) -> None:
        import random

        rng = random.Random(seed)
        with self.fs.open(self.url, "rb") as f:
            size = self.fs.size(self.url)
            while not self.stop.is_set():
                f.seek(rng.randrange(0, size - MiB))
                self.done += len(f.read(MiB))

    def run(self, seconds: float, during: Any = None) -> tuple[float, int]:
        """MiB/s read over ``seconds`` (while ``during(seconds)`` runs), and threads hung."""
        self.stop.clear()
        self.done = 0
        threads = [threading.Thread(target=self._read, args=(i,)) for i in range(self.count)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        if during is not None:
            during(seconds)
        else:
            time.sleep(seconds)
        self.stop.set()
        hung = 0
        for t in threads:
            t.join(timeout=30)
            hung += t.is_alive()
        return self.done / MiB / (time.perf_counter() - started), hung


def _storm(opts: argparse.Namespace, readers: _Readers, monitor: Any, proc: Any,
           samples: list[tuple[float, int, bool]], reclaimed: list[int]) -> Any:  # fmt: skip
    """The storm: ballast held and let go in turns, RSS sampled every 10 ms."""
    holding = [False]

    def sampler() -> None:
        while not readers.stop.is_set():
            samples.append((time.perf_counter(), proc.memory_info().rss, holding[0]))
            if monitor is not None:
                reclaimed.append(monitor.gauges().get("pressure.rbytes", 0))
            time.sleep(0.01)

    def storm(seconds: float) -> None:
        s = threading.Thread(target=sampler)
        s.start()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            ballast = b"\x01" * (opts.ballast_mib * MiB)
            holding[0] = True
            time.sleep(0.8)
            holding[0] = False
            del ballast
            time.sleep(0.7)
        readers.stop.set()
        s.join()

    return storm


def _latencies(
    samples: list[tuple[float, int, bool]], moderate: float, target: float
) -> list[float]:
    """Per ballast episode, ms from RSS crossing ``moderate`` to falling under ``target``."""
    latencies: list[float] = []
    over, settled = None, False  # one latency per ballast episode at most
    for t, rss, held in samples:
        if not held:
            over, settled = None, False
        elif rss >= moderate and over is None and not settled:
            over = t
        elif over is not None and rss < target:
            latencies.append((t - over) * 1000)
            over, settled = None, True
    return latencies


def child(opts: argparse.Namespace) -> None:
    import psutil

    proc = psutil.Process()
    url = f"{opts.url}/big.bin"
    fs, monitor = _make_fs(opts)
    readers = _Readers(fs, url, opts.readers)
    # warm the cache (the file lands in memory / in blockcache's mmap), then a calm pass
    with fs.open(url, "rb") as f:
        while f.read(8 * MiB):
            pass
    calm, hung_calm = readers.run(opts.seconds)
    limit = proc.memory_info().rss + opts.headroom_mib * MiB
    fractions = {"moderate": 0.80, "high": 0.90, "critical": 0.95, "target": 0.70}
    if monitor is not None:
        monitor.limit = limit
        monitor.start()
    samples: list[tuple[float, int, bool]] = []
    reclaimed: list[int] = []  # netcache's bytes reclaimed under pressure, per sample
    storm = _storm(opts, readers, monitor, proc, samples, reclaimed)
    stormy, hung_storm = readers.run(opts.seconds, storm)
    stats = fs.stats().as_dict() if opts.cache == "netcache" else {}
    t0 = samples[0][0] if samples else 0.0
    reclaims = [samples[i][0] - t0 for i in range(1, len(reclaimed))
                if reclaimed[i] > reclaimed[i - 1]]  # fmt: skip
    print(json.dumps({
        "calm": calm, "storm": stormy, "hangs": hung_calm + hung_storm,
        "peak_over_mib": max(0, max(r for _, r, _ in samples) - limit) / MiB,
        "latencies": _latencies(samples, 0.80 * limit, 0.70 * limit),
        "episodes": sum(1 for i, (_, _, held) in enumerate(samples)
                        if held and (i == 0 or not samples[i - 1][2])),
        "vmscan": {k.split(".")[1]: v for k, v in stats.items() if k.startswith("vmscan.")},
        "rbytes_mib": stats.get("pressure.rbytes", 0) / MiB,
        "timeline": [(t - t0, rss, held) for t, rss, held in samples],
        "thresholds": {"limit": limit, **{k: f * limit for k, f in fractions.items()}},
        "reclaims": reclaims,
    }))  # fmt: skip
    if monitor is not None:
        monitor.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", default="netcache")
    parser.add_argument("--url")
    parser.add_argument("--folder")
    parser.add_argument("--size-mib", type=int, default=192)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--ballast-mib", type=int, default=96)
    parser.add_argument("--headroom-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()
    if opts.child:
        return child(opts)
    server = subprocess.Popen([sys.executable, "-m", "netcache.testing.httpserver", "--size-mib",
                               str(opts.size_mib)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        runs: dict[str, list[dict[str, Any]]] = {"netcache": [], "blockcache": []}
        for _ in range(opts.repeat):
            for cache in runs:
                with tempfile.TemporaryDirectory() as folder:
                    cmd = [sys.executable, __file__, "--child", "--cache", cache, "--url", url,
                           "--folder", folder, "--seconds", str(opts.seconds), "--readers",
                           str(opts.readers), "--ballast-mib", str(opts.ballast_mib),
                           "--headroom-mib", str(opts.headroom_mib)]  # fmt: skip
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
                    runs[cache].append(json.loads(out.stdout))
    finally:
        server.terminate()
    print(f"# memory storm: {opts.size_mib} MiB file, {opts.readers} readers, "
          f"{opts.ballast_mib} MiB ballast, limit = calm RSS + {opts.headroom_mib} MiB, "
          f"median of {opts.repeat} run(s)\n")  # fmt: skip
    print("| cache | MiB/s calm | MiB/s storm | storm / calm | peak RSS over limit MiB | "
          "reclaim ms p50 | reclaim ms max | episodes brought under target | hangs | "
          "reclaimed MiB | VmScan |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for cache, rs in runs.items():

        def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return statistics.median(r[key] for r in rs)

        lat = [x for r in rs for x in r["latencies"]]
        p50 = f"{statistics.median(lat):.0f}" if lat else "never"
        mx = f"{max(lat):.0f}" if lat else "never"
        under = f"{sum(len(r['latencies']) for r in rs)}/{sum(r['episodes'] for r in rs)}"
        vm = rs[-1]["vmscan"]
        vms = " ".join(f"{k}={v}" for k, v in vm.items()) if vm else "-"
        hangs = sum(r["hangs"] for r in rs)
        print(f"| {cache} | {med('calm'):,.0f} | {med('storm'):,.0f} | "
              f"{med('storm') / med('calm'):.2f} | {med('peak_over_mib'):,.0f} | {p50} | "
              f"{mx} | {under} | {hangs} | {med('rbytes_mib'):,.0f} | {vms} |")  # fmt: skip
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from charts import storm_chart

    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    written = storm_chart({c: rs[-1] for c, rs in runs.items()}, results / "memory_storm.png")
    print(f"\nchart: {written}" if written else "\nchart skipped: pip install netcache[plot]")


if __name__ == "__main__":
    main()
