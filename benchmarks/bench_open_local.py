"""open_local: netcache against fsspec's simplecache, cold and warm, in the same run.

A local HTTP server runs in another process (``python -m netcache.testing.httpserver``)
serving one file, with a latency added to every request. Each (cache, latency) runs in a
fresh process with a fresh cache folder: ``fsspec.open_local`` of the file (cold: from
the remote), then again (warm: the copy kept). Reported: MiB/s, the median of
``--repeat`` runs, and netcache's ratio to simplecache from the same run.

    python benchmarks/bench_open_local.py                 # 128 MiB, 0 and 20 ms, 3 runs
    python benchmarks/bench_open_local.py --size-mib 32 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

MiB = 1 << 20
CACHES = ("netcache", "simplecache")


def child(cache: str, url: str, folder: str) -> None:
    import fsspec
    import fsspec.implementations.cached
    import fsspec.implementations.http

    import netcache.filesystem  # noqa: F401  # imported before the clock, as fsspec's are

    if cache == "netcache":
        options = {"netcache": {"cache_dir": folder, "memory_monitor": False}}
    else:
        options = {"simplecache": {"cache_storage": folder}}
    rates = []
    for _ in range(2):  # cold, then warm
        started = time.perf_counter()
        path = fsspec.open_local(f"{cache}::{url}", **options)
        seconds = time.perf_counter() - started
        with open(path, "rb") as f:  # the copy is whole: its size is the file's
            size = f.seek(0, 2)
        rates.append(size / MiB / seconds)
    print(json.dumps({"cold": rates[0], "warm": rates[1]}))


def run_once(cache: str, url: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        out = subprocess.run([sys.executable, __file__, "--child", cache, url, folder],
                             capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 20.0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "netcache.testing.httpserver",
                               "--size-mib", str(args.size_mib)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert server.stdout is not None
        base = server.stdout.readline().strip()
        url = f"{base}/big.bin"
        print(f"# open_local of a {args.size_mib} MiB file over HTTP on loopback, "
              f"median of {args.repeat} runs (MiB/s)\n")  # fmt: skip
        print("| latency | cache | cold | warm |")
        print("|---|---|---|---|")
        for latency in args.latency_ms:
            urllib.request.urlopen(f"{base}/_control/latency/{latency / 1000}").read()
            runs: dict[str, list[dict[str, float]]] = {c: [] for c in CACHES}
            for _ in range(args.repeat):
                for cache in CACHES:  # alternated, so noise hits both alike
                    runs[cache].append(run_once(cache, url))
            med = {c: {k: statistics.median(r[k] for r in runs[c]) for k in ("cold", "warm")}
                   for c in CACHES}  # fmt: skip
            for cache in CACHES:
                print(f"| {latency:g} ms | {cache} | {med[cache]['cold']:,.0f} | "
                      f"{med[cache]['warm']:,.0f} |")  # fmt: skip
            ratio = {k: med["netcache"][k] / med["simplecache"][k] for k in ("cold", "warm")}
            print(f"| {latency:g} ms | netcache / simplecache | {ratio['cold']:.2f}x | "
                  f"{ratio['warm']:.2f}x |")  # fmt: skip
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
    else:
        main()
