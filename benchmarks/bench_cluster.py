"""Pages shared between Dask workers (``netcache.dask.share_pages``) against no sharing,
on the same job, in the same run.

A ``distributed`` cluster of 4 worker processes, each with a cache folder of its own (as
on separate machines), reads a 256 MiB dataset (8 Parquet files of 16 MB, and a 128 MiB
file read in ranges of 1 MiB) 4 times over, each pass's tasks on shuffled workers, from
the test HTTP server in the object-store model (30 ms a request, 64 MiB/s a connection,
in another process). Each job runs on a fresh cluster with empty folders. Reported,
medians of ``--repeat`` runs: the job's wall time, the bytes the remote sent, the peers'
counters (and so the messages' sizes and pages), and one more shared run in which a
worker is killed (SIGKILL) in the second pass.

    python benchmarks/bench_cluster.py              # about 3 minutes here
    python benchmarks/bench_cluster.py --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any

MiB = 1 << 20
WORKERS, PASSES, FILES, ROWS, BIG, RANGE = 4, 4, 8, 1_000_000, 128 * MiB, 1 * MiB


def make_dataset(folder: Path) -> dict[str, int]:
    """The files, and the CRC32 each task's answer must have."""
    import numpy as np
    import pandas as pd

    expected = {}
    for k in range(FILES):
        rng = np.random.default_rng(k)
        frame = pd.DataFrame({"a": rng.random(ROWS), "b": rng.random(ROWS)})
        path = folder / "ds" / f"part{k}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, compression=None)
        expected[f"ds/part{k}.parquet"] = zlib.crc32(frame.to_numpy().tobytes())
    (folder / "ds" / "big.bin").write_bytes(np.random.default_rng(99).bytes(BIG))
    return expected


def read_parquet(url: str) -> int:
    import pandas as pd

    frame = pd.read_parquet(url, storage_options={"netcache": {"check_interval": None}})
    return zlib.crc32(frame.to_numpy().tobytes())


def read_ranges(url: str, starts: list[int]) -> int:
    import netcache

    fs = netcache.NetCacheFileSystem(target_protocol="http", check_interval=None)
    crc = 0
    with fs.open(url) as f:
        for start in starts:
            f.seek(start)
            crc = zlib.crc32(f.read(RANGE), crc)
    return crc


def range_jobs(seed: int) -> list[list[int]]:
    starts = list(range(0, BIG, RANGE))
    random.Random(seed).shuffle(starts)
    return [starts[i::WORKERS] for i in range(WORKERS)]


def job(url: str, expected: dict[str, int], big: bytes, share: bool, kill: bool) -> dict[str, Any]:
    import distributed

    import netcache.dask

    class Home(distributed.WorkerPlugin):
        """Each worker its own default cache folder, as on a machine of its own."""

        def __init__(self, base: str) -> None:
            self.base = base

        def setup(self, worker: Any) -> None:
            os.environ["XDG_CACHE_HOME"] = os.path.join(self.base, str(worker.name))

    base = tempfile.mkdtemp(prefix="bench-cluster-")
    try:
        with (
            distributed.LocalCluster(n_workers=WORKERS, threads_per_worker=2, processes=True,
                                     memory_limit="2GiB", dashboard_address=None) as cluster,
            distributed.Client(cluster) as client,
        ):  # fmt: skip
            client.register_plugin(Home(base))
            if share:
                netcache.dask.share_pages(client)
            urllib.request.urlopen(f"{url}/_control/reset").read()
            started = time.perf_counter()
            passes = []
            for seed in range(PASSES):
                run_pass(client, url, expected, big, seed, kill and seed == 1)
                passes.append(time.perf_counter() - started - sum(passes))
            seconds = time.perf_counter() - started
            stats = netcache.dask.cluster_stats(client)["total"]
        sent = json.loads(urllib.request.urlopen(f"{url}/_control/stats").read())["bytes_sent"]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {
        "seconds": seconds,
        "passes": passes,
        "sent": sent,
        **{k: v for k, v in stats.items() if "peers" in k},
    }


def run_pass(client: Any, url: str, expected: dict[str, int], big: bytes, seed: int,
             kill: bool) -> None:  # fmt: skip
    import distributed

    workers = sorted(client.scheduler_info()["workers"])
    rng = random.Random(seed)
    names = sorted(expected)
    futures = [client.submit(read_parquet, f"netcache::{url}/{name}", pure=False,
                             workers=[rng.choice(workers)], allow_other_workers=True)
               for name in names]  # fmt: skip
    jobs = range_jobs(seed)
    futures += [client.submit(read_ranges, f"{url}/ds/big.bin", starts, pure=False,
                              workers=[rng.choice(workers)], allow_other_workers=True)
                for starts in jobs]  # fmt: skip
    if kill:  # mid-pass: some tasks done, most to come
        distributed.wait(futures[:2])
        victim = workers[0]
        os.kill(client.run(os.getpid, workers=[victim])[victim], signal.SIGKILL)
    results = client.gather(futures)
    assert results[: len(names)] == [expected[n] for n in names], "a Parquet file read wrong"
    for starts, got in zip(jobs, results[len(names) :], strict=True):
        crc = 0
        for start in starts:
            crc = zlib.crc32(big[start : start + RANGE], crc)
        assert got == crc, "a range of the big file read wrong"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-cluster-data-"))
    expected = make_dataset(folder)
    big = (folder / "ds" / "big.bin").read_bytes()
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    server = subprocess.Popen(
        [sys.executable, "-m", "netcache.testing.httpserver", "--folder", str(folder),
         "--latency-ms", "30", "--bandwidth-mib", "64"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {"shared": [], "alone": []}
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        for _ in range(opts.repeat):
            for mode in runs:
                runs[mode].append(job(url, expected, big, mode == "shared", kill=False))
        killed = job(url, expected, big, share=True, kill=True)
    finally:
        server.terminate()
        shutil.rmtree(folder, ignore_errors=True)
    report(runs, killed, size, opts.repeat)


def report(runs: dict[str, list[dict[str, Any]]], killed: dict[str, Any], size: int,
           repeat: int) -> None:  # fmt: skip
    med = statistics.median
    print(
        f"\n### {WORKERS} workers, {PASSES} passes over {size / MiB:.0f} MiB, 30 ms and "
        f"64 MiB/s per connection; median of {repeat}, {os.cpu_count()} cores\n"
    )
    print(
        "| | wall, s | remote sent, MiB | ÷ dataset | pages from peers | requests to "
        "peers | MiB a request | pages a request | fallbacks | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode, rs in [*runs.items(), ("shared, a worker killed in pass 2", [killed])]:
        req = med(r["peers.req"] for r in rs)
        got = med(r["peers.got"] for r in rs)
        mib = med(r["peers.gbytes"] for r in rs) / MiB
        sent = med(r["sent"] for r in rs)
        print(f"| {mode} | {med(r['seconds'] for r in rs):.1f} | "
              f"{sent / MiB:,.0f} | {sent / size:.2f} | "
              f"{got:,.0f} | {req:,.0f} | {mib / req if req else 0:.2f} | "
              f"{got / req if req else 0:.1f} | {med(r['peers.fallback'] for r in rs):,.0f} | "
              f"{med(r['peers.err'] for r in rs):,.0f} |")  # fmt: skip
    ratio = med(a["seconds"] / s["seconds"] for a, s in zip(runs["alone"], runs["shared"],
                                                              strict=True))  # fmt: skip
    print(f"\nwall time without sharing ÷ with it (same runs): {ratio:.2f}")
    for mode, rs in runs.items():
        each = [statistics.median(r["passes"][i] for r in rs) for i in range(PASSES)]
        print(f"- {mode}, seconds per pass: " + ", ".join(f"{s:.2f}" for s in each))


if __name__ == "__main__":
    main()
