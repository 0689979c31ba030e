"""``python -m netcache demo``: netcache against a built-in local HTTP remote.

Reads one generated file cold (from the remote), warm (from memory), and from a second
process (from the disk tier), and prints what each pass cost and the stats.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time

from netcache.filesystem import NetCacheFileSystem
from netcache.process import close_all
from netcache.sizes import format_size
from netcache.testing.httpserver import RangeServer, random_bytes

CHUNK = 1 << 20


def read_all(fs: NetCacheFileSystem, url: str, seed: int) -> str:
    """Read ``url`` sequentially in 1 MiB chunks, then 50 random 64 KiB pieces; return a
    digest of everything read so passes can be compared."""
    h = hashlib.sha256()
    with fs.open(url, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
        rng = random.Random(seed)
        for _ in range(50):
            f.seek(rng.randrange(f.size))
            h.update(f.read(64 << 10))
    return h.hexdigest()


def second_process(url: str, cache_dir: str) -> None:
    """The second process: read through the same cache folder, report as JSON."""
    fs = NetCacheFileSystem(target_protocol="http", cache_dir=cache_dir, check_interval=None)
    started = time.perf_counter()
    digest = read_all(fs, url, seed=1)
    elapsed = time.perf_counter() - started
    print(json.dumps({"digest": digest, "seconds": elapsed, "stats": fs.stats().as_dict()}))


#: Printed under the FS-Cache lines: what their short names mean.
LEGEND = (
    "(Retrvls: pages served by tier, mem/disk/remote; Stores: pages written to disk, "
    "pgs stored, pend bytes queued; VmScan: reclaim's outcomes, nos released with no "
    "store, gon store done, bsy being stored, can store cancelled; Unstord: stores "
    "given up, by why. Every field: README, Stats.)"
)


def run(size_mib: int = 32, cache_dir: str | None = None) -> int:
    data = random_bytes(size_mib << 20)
    expected = hashlib.sha256(data).hexdigest()
    folder = cache_dir or tempfile.mkdtemp(prefix="netcache-demo-")
    with RangeServer({"data/big.bin": data}) as server:
        url = f"{server.url}/data/big.bin"
        print(f"remote: {url} ({format_size(len(data))}), cache folder: {folder}\n")
        fs = NetCacheFileSystem(target_protocol="http", cache_dir=folder, check_interval=None)
        rows = []
        for name in ("cold", "warm"):
            server.reset_counts()
            started = time.perf_counter()
            digest = read_all(fs, url, seed=1)
            elapsed = time.perf_counter() - started
            assert hashlib.sha256(data).hexdigest() == expected
            rows.append((name, elapsed, server.gets, server.bytes_sent, digest))
        fs.flush(timeout=30)
        server.reset_counts()
        out = subprocess.run(
            [sys.executable, "-m", "netcache.demo", url, folder],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        report = json.loads(out.stdout)
        rows.append(("2nd process", report["seconds"], server.gets, server.bytes_sent,
                     report["digest"]))  # fmt: skip
        print(f"{'pass':<12} {'seconds':>8} {'MiB/s':>8} {'GETs':>5} {'from remote':>12}")
        for name, elapsed, gets, sent, _ in rows:
            rate = (size_mib + 50 / 16) / elapsed
            print(f"{name:<12} {elapsed:8.3f} {rate:8.0f} {gets:5d} {format_size(sent):>12}")
        same = len({row[4] for row in rows}) == 1
        print(f"\nall passes read the same bytes: {same}")
        print(f"\nstats of this process:\n{fs.stats()}")
        print(LEGEND)
        disk = report["stats"]
        print(f"\nsecond process: pages from disk={disk['retrievals.disk']}, "
              f"from remote={disk['retrievals.remote']}")  # fmt: skip
        ok = same and rows[2][2] == 0
    if cache_dir is None:  # a folder of its own: nothing is left behind
        close_all()
        shutil.rmtree(folder)
    return 0 if ok else 1


if __name__ == "__main__":  # the demo's second process: python -m netcache.demo URL DIR
    second_process(sys.argv[1], sys.argv[2])
