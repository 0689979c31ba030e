"""Where netcache's time goes, next to the floors it cannot go below, in one run.

``bench_read.py`` says how fast netcache is against fsspec's caches; this says why, on
the machine it runs on, for the targets it misses. Four parts, each the median of
``--repeat`` rounds, every ratio taken within one round:

1. **Warm reads.** netcache's whole read (``seek`` and ``read``) against its two parts:
   finding the pages (``PageCache.lookup_resident``) and copying them into the answer
   (the one copy a ``bytes`` answer needs), and against the peers' reads and their
   copies (a slice of blockcache's file mapping; a ``pread`` from simplecache's file in
   the OS page cache). What is left is the Python around the copy.
2. **Fresh memory.** 256 MiB copied into new 128 KiB page buffers (what a cold read
   does for every page), into the same buffers again (reused memory), and written into
   a file's OS page cache (what blockcache and simplecache do).
3. **Copies out of the OS page cache** into a page-aligned buffer and into buffers that
   start 16 or 64 bytes into a page (a large ``bytearray`` starts 16 bytes in).
4. **Cold reads, CPU per thread.** A 256 MiB sequential read, a ``cat_ranges`` of 100
   ranges of 256 KiB, 200 files of 1 MiB opened and read one by one, and a ``cat`` of
   them, each in a fresh process, for netcache (most with and without its disk tier)
   and plain fsspec; and the sequential read and 2000 random 64 KiB reads by a new
   process from netcache's disk tier and from blockcache's file, once they have left
   the OS page cache: wall time and the CPU time of each thread (fsspec's event loop,
   the reader, netcache's read-ahead and write-back workers), and the memory each
   thread touched for the first time (minor faults). CPU summed over threads close to
   the wall time, with CPUs to spare, means the threads take turns: they wait for
   Python's GIL.

    python benchmarks/bench_floors.py              # about a minute here (Linux only)
    python benchmarks/bench_floors.py --repeat 5   # about two minutes
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import mmap
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MiB = 1 << 20
RESULTS = Path(__file__).resolve().parent / "results"


def per_op_us(fn: Callable[[], object], ops: int) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) / ops * 1e6


def warm_reads(url: str, size: int, repeat: int, folder: str) -> list[tuple[str, list[float]]]:
    """Per-read microseconds of each way of answering warm reads, one list per row."""
    import fsspec

    import netcache
    from netcache.page import join_pages as _join

    big = f"{url}/big.bin"
    nc = netcache.NetCacheFileSystem(target_protocol="http", check_interval=None,
                                     cache_dir=os.path.join(folder, "nc"))  # fmt: skip
    f = nc.open(big, "rb")
    while f.read(MiB):
        pass
    nc.flush(timeout=300)
    bc = fsspec.filesystem("blockcache", target_protocol="http", skip_instance_cache=True,
                           cache_storage=os.path.join(folder, "bc"))  # fmt: skip
    g = bc.open(big, "rb")
    while g.read(MiB):
        pass
    sc = fsspec.filesystem("simplecache", target_protocol="http", skip_instance_cache=True,
                           cache_storage=os.path.join(folder, "sc"))  # fmt: skip
    with sc.open(big, "rb") as h0:
        h0.read(1)
    h = sc.open(big, "rb")
    # the peers' copies, from the files they keep
    [bc_file] = [p for p in Path(folder, "bc").iterdir() if p.name != "cache"]
    [sc_file] = [p for p in Path(folder, "sc").iterdir() if p.name != "cache"]
    bc_fd, sc_fd = os.open(bc_file, os.O_RDONLY), os.open(sc_file, os.O_RDONLY)
    bc_map = mmap.mmap(bc_fd, size, prot=mmap.PROT_READ)
    page_cache, cookie, bs = nc.context.page_cache, f.cookie, nc.config.block_size

    rng = random.Random(42)
    offsets = [rng.randrange(size - 65536) for _ in range(2000)]
    rows: dict[str, list[float]] = {}
    for name, length, offs in (("64 KiB random", 65536, offsets),
                               ("1 MiB sequential", MiB, range(0, size, MiB))):  # fmt: skip
        spans = [(o // bs, (o + length - 1) // bs) for o in offs]
        pages = [page_cache.lookup_resident(cookie.file_id, cookie.version, a, b)
                 for a, b in spans]  # fmt: skip

        def reads(fh: Any, offs: Any = offs, length: int = length) -> None:
            for o in offs:
                fh.seek(o)
                fh.read(length)

        def lookups(spans: list[tuple[int, int]] = spans) -> None:
            for a, b in spans:
                page_cache.lookup_resident(cookie.file_id, cookie.version, a, b)

        def copies(pages: list[Any] = pages, offs: Any = offs, length: int = length) -> None:
            for p, o in zip(pages, offs, strict=True):
                _join(p, o % bs, o % bs + length)

        def mapped(offs: Any = offs, length: int = length) -> None:
            for o in offs:
                bc_map[o : o + length]

        def preads(offs: Any = offs, length: int = length) -> None:
            for o in offs:
                os.pread(sc_fd, length, o)

        cases = {
            "netcache: read": lambda r=reads: r(f),
            "netcache: page lookup only": lookups,
            "netcache: copy only": copies,
            "blockcache: read": lambda r=reads: r(g),
            "blockcache: copy only (slice of its file mapping)": mapped,
            "simplecache: read": lambda r=reads: r(h),
            "simplecache: copy only (pread, OS page cache)": preads,
        }
        for _ in range(repeat * 5):  # short rounds: more of them
            for case, fn in cases.items():
                rows.setdefault(f"{name} | {case}", []).append(per_op_us(fn, len(offs)))
    bc_map.close()
    os.close(bc_fd)
    os.close(sc_fd)
    for fh in (f, g, h):
        fh.close()
    netcache.close_all()
    return list(rows.items())


def page_cache_reads(repeat: int, folder: str) -> dict[str, list[float]]:
    """Microseconds per MiB read from a file in the OS page cache into a buffer that is
    page-aligned, or 16 bytes into a page as a large ``bytearray`` is (malloc's header):
    the kernel's copy slows down when its loads and stores are 16 bytes apart in their
    pages (4 KiB aliasing), which is why netcache's disk read-through, where it copies
    (no ``sendfile``), reads into a mapping."""
    path = os.path.join(folder, "cached")
    with open(path, "wb") as f:
        f.write(os.urandom(64 * MiB))
    fd = os.open(path, os.O_RDONLY)
    aligned = mmap.mmap(-1, MiB + 4096)
    buffers = {"a mapping (page-aligned)": memoryview(aligned)[:MiB],
               "a mapping, 16 bytes in (as a bytearray)": memoryview(aligned)[16 : 16 + MiB],
               "a mapping, 64 bytes in": memoryview(aligned)[64 : 64 + MiB]}  # fmt: skip
    out: dict[str, list[float]] = {}
    try:
        for i in range(64):  # into the page cache
            os.pread(fd, MiB, i * MiB)
        for _ in range(repeat):
            for name, buf in buffers.items():

                def read_all(buf: memoryview = buf) -> None:
                    for i in range(64):
                        os.preadv(fd, [buf], i * MiB)

                out.setdefault(name, []).append(per_op_us(read_all, 64))
    finally:
        for buf in buffers.values():
            buf.release()
        aligned.close()
        os.close(fd)
        os.unlink(path)
    return out


def fresh_memory(repeat: int, folder: str) -> dict[str, list[float]]:
    """Milliseconds to put 256 MiB into fresh page buffers, reused ones, a file."""
    from netcache.buffers import drop_recycled, page_buffer

    block = os.urandom(128 << 10)
    n = 256 * MiB // len(block)
    out: dict[str, list[float]] = {}
    for _ in range(repeat):
        drop_recycled()
        started = time.perf_counter()
        bufs = [page_buffer(block) for _ in range(n)]
        out.setdefault("new 128 KiB page buffers (cold read)", []).append(
            (time.perf_counter() - started) * 1e3)  # fmt: skip
        started = time.perf_counter()
        for buf in bufs:
            buf[:] = block
        out.setdefault("the same buffers again (reused memory)", []).append(
            (time.perf_counter() - started) * 1e3)  # fmt: skip
        del bufs
        path = os.path.join(folder, "fill")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        started = time.perf_counter()
        for i in range(n):
            os.pwrite(fd, block, i * len(block))
        out.setdefault("a file's OS page cache (blockcache, simplecache)", []).append(
            (time.perf_counter() - started) * 1e3)  # fmt: skip
        os.fsync(fd)  # so that the next round's writes are not held back by these
        os.close(fd)
        os.unlink(path)
    return out


CHILD = r"""
import json, os, random, shutil, sys, tempfile, threading, time
import fsspec
cache, url, folder, workload = sys.argv[1:5]
if cache == "plain":
    fs = fsspec.filesystem("http", skip_instance_cache=True)
elif cache == "blockcache":
    fs = fsspec.filesystem("blockcache", target_protocol="http", cache_storage=folder,
                           skip_instance_cache=True)
else:
    import netcache
    fs = netcache.NetCacheFileSystem(target_protocol="http", check_interval=None,
                                     cache_dir=folder if cache == "netcache" else False)
with fs.open(url + "/small/0.bin", "rb") as f:  # start the event loop and the session
    f.read()

def by_thread():
    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), "other")
        group = ("reader" if name == "MainThread" else "fsspec event loop" if name == "fsspecIO"
                 else name.rstrip("_0123456789-").replace("_", "") or "other")
        ticks = int(fields[11]) + int(fields[12])
        cpu, faults = out.get(group, (0.0, 0))
        out[group] = (cpu + ticks * 1000 / os.sysconf("SC_CLK_TCK"), faults + int(fields[7]))
    return out

before, started = by_thread(), time.perf_counter()
small = [f"{url}/small/{i}.bin" for i in range(1, 201)]
size = 256 << 20
if workload == "seq":
    with fs.open(url + "/big.bin", "rb") as f:
        while f.read(1 << 20):
            pass
elif workload == "random":  # as bench_read.py's
    rng = random.Random(42)
    with fs.open(url + "/big.bin", "rb") as f:
        for _ in range(2000):
            f.seek(rng.randrange(size - 65536))
            f.read(65536)
elif workload == "ranges":  # as bench_read.py's
    rng = random.Random(7)
    starts = sorted(rng.randrange(size - 256 * 1024) for _ in range(100))
    fs.cat_ranges([url + "/big.bin"] * 100, starts, [s + 256 * 1024 for s in starts])
elif workload == "small":
    for path in small:
        with fs.open(path, "rb") as f:
            f.read()
elif workload == "catmany":
    fs.cat(small)
else:
    raise SystemExit(f"no such workload: {workload}")
wall = (time.perf_counter() - started) * 1e3
if cache.startswith("netcache"):
    fs.flush(timeout=300)  # the write-back's CPU counts too
after = by_thread()
zero = (0.0, 0)
print(json.dumps({"wall": wall,
                  "cpu": {k: v[0] - before.get(k, zero)[0] for k, v in after.items()},
                  # first touches of memory (minor faults), in MiB: fresh memory
                  "fresh": {k: (v[1] - before.get(k, zero)[1]) * 4096 / 2**20
                            for k, v in after.items()}}))
"""


#: The cold reads whose CPU is counted thread by thread: their title, the MiB each reads,
#: the caches compared. "disk ...": the read by a new process from the cache that the same
#: read filled in another one, once its files have left the OS page cache.
COLD_WORKLOADS = {
    "seq": ("sequential read of 256 MiB", 256, ("netcache", "netcache (no disk tier)", "plain")),
    "ranges": ("cat_ranges of 100 ranges of 256 KiB", 25, ("netcache", "plain")),
    "small": ("200 files of 1 MiB, opened and read one by one", 200,
              ("netcache", "netcache (no disk tier)", "plain")),
    "catmany": ("cat of 200 files of 1 MiB", 200, ("netcache", "netcache (no disk tier)", "plain")),
    "disk": ("sequential read of 256 MiB by a new process from disk", 256,
             ("netcache", "blockcache")),
    "disk random": ("2000 random 64 KiB reads by a new process from disk", 125,
                    ("netcache", "blockcache")),
}  # fmt: skip


def cold_cpu(url: str, repeat: int, folder: str) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """workload -> cache -> one measure a round."""
    evict = _bench_read().evict

    def child(cache: str, workload: str, sub: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-c", CHILD, cache, url, sub, workload],
                              capture_output=True, text=True, check=True)  # fmt: skip
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for _ in range(repeat):
        for workload, (_, _, caches) in COLD_WORKLOADS.items():
            for cache in caches:
                sub = tempfile.mkdtemp(dir=folder)
                try:
                    reads = {"disk": "seq", "disk random": "random"}.get(workload, workload)
                    if reads != workload:
                        child(cache, reads, sub)  # fills the cache
                        evict(sub)
                    measured = child(cache, reads, sub)
                finally:
                    shutil.rmtree(sub, ignore_errors=True)
                out.setdefault(workload, {}).setdefault(cache, []).append(measured)
    return out


def _bench_read() -> Any:
    """``bench_read.py``, for its ``evict`` (a script beside this one, not a package)."""
    path = Path(__file__).resolve().parent / "bench_read.py"
    spec = importlib.util.spec_from_file_location("bench_read", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: A table of one measure for several ways: its title, the column's name, the way the
#: others are divided by, and each way's values (one per round).
Table = tuple[str, str, str, dict[str, list[float]]]


def report(warm: list[tuple[str, list[float]]], tables: list[Table],
           cold: dict[str, dict[str, list[dict[str, Any]]]], repeat: int) -> str:  # fmt: skip
    med = statistics.median
    lines = [f"# Where the time goes: {os.cpu_count()} cores, median of {repeat} rounds "
             f"({5 * repeat} shorter ones for the warm reads)", "",
             "## Warm reads, microseconds per read", "",
             "| reads | how | us per read | ÷ netcache's read |", "|---|---|---|---|"]  # fmt: skip
    by = dict(warm)
    for key, values in warm:
        reads, how = key.split(" | ")
        mine = by[f"{reads} | netcache: read"]
        ratio = med(a / b for a, b in zip(values, mine, strict=True))
        lines.append(f"| {reads} | {how} | {med(values):.2f} | {ratio:.2f} |")
    for reads in ("64 KiB random", "1 MiB sequential"):
        read, copy = by[f"{reads} | netcache: read"], by[f"{reads} | netcache: copy only"]
        rest = med(a - b for a, b in zip(read, copy, strict=True))
        lines.append(f"\n{reads}: netcache's read = its copy + {rest:.2f} us of Python "
                     f"({rest / med(read):.0%} of the read).")  # fmt: skip
    for title, unit, base_name, values_by_way in tables:
        lines += ["", f"## {title}", "", f"| into | {unit} | ÷ {base_name} |", "|---|---|---|"]
        base = values_by_way[base_name]
        for how, values in values_by_way.items():
            ratio = med(a / b for a, b in zip(values, base, strict=True))
            lines.append(f"| {how} | {med(values):.0f} | {ratio:.2f} |")
    for workload, by_cache in cold.items():
        lines += cold_tables(workload, by_cache)
    lines.append(f"\n(CPU ÷ wall near 1 on {os.cpu_count()} cores: the threads take turns "
                 "holding the GIL. netcache's CPU includes flushing its write-back.)")  # fmt: skip
    return "\n".join(lines)


def cold_tables(workload: str, cold: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The CPU and the fresh memory of each thread, for one workload."""
    med = statistics.median
    title, mib, _ = COLD_WORKLOADS[workload]
    groups = sorted({g for runs in cold.values() for r in runs for g in r["cpu"]})
    lines = ["", f"## Cold {title} (0 ms), CPU ms per thread", "",
             "| cache | MiB/s | " + " | ".join(groups) + " | CPU ÷ wall |",
             "|---" * (len(groups) + 3) + "|"]  # fmt: skip
    for cache, runs in cold.items():
        cells = [f"{med(r['cpu'].get(g, 0.0) for r in runs):.0f}" for g in groups]
        busy = med(sum(r["cpu"].values()) / r["wall"] for r in runs)
        rate = med(mib * 1000 / r["wall"] for r in runs)
        lines.append(f"| {cache} | {rate:.0f} | " + " | ".join(cells) + f" | {busy:.2f} |")
    header = "| cache | " + " | ".join(groups) + " |"
    lines += ["", "Fresh memory (MiB first touched, from minor faults) per thread, same reads:",
              "", header, "|---" * (len(groups) + 1) + "|"]  # fmt: skip
    for cache, runs in cold.items():
        cells = [f"{med(r['fresh'].get(g, 0.0) for r in runs):.0f}" for g in groups]
        lines.append(f"| {cache} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()
    if not sys.platform.startswith("linux"):
        sys.exit("bench_floors.py reads per-thread CPU from /proc: Linux only")
    size = 256 * MiB
    server = subprocess.Popen(
        [sys.executable, "-m", "netcache.testing.httpserver", "--size-mib", "256",
         "--small-files", "201"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    folder = tempfile.mkdtemp(prefix="bench-floors-")
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        # first: no other writes in flight
        tables: list[Table] = [
            ("Putting 256 MiB into memory", "ms", "a file's OS page cache (blockcache, "
             "simplecache)", fresh_memory(opts.repeat, folder)),
            ("Reading a file from the OS page cache, 1 MiB at a time", "us per MiB",
             "a mapping (page-aligned)", page_cache_reads(opts.repeat, folder)),
        ]  # fmt: skip
        warm = warm_reads(url, size, opts.repeat, folder)
        cold = cold_cpu(url, opts.repeat, folder)
    finally:
        server.terminate()
        shutil.rmtree(folder, ignore_errors=True)
    text = report(warm, tables, cold, opts.repeat)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_floors.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
