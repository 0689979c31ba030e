"""What reaches the disk tier when readers outrun the write-back, and what keeping every
page costs a cold reader.

A local HTTP server (another process) holds a file. A fresh process reads it through
netcache with a small ``memory_limit`` and a disk tier, streamed in 1 MiB reads
(``seq``) or as a shuffled pass of 256 KiB reads (``shuffle``), then calls
``fs.flush()``; a second fresh process reads the file again and reports what it had to
fetch from the remote. Each runs idle and with ``--busy`` CPU-bound processes keeping
the cores busy (the write-back workers run at the lowest priority, so they get little
CPU then). Reported, medians of ``--repeat`` runs: the cold reader's MiB/s, the
flush's seconds, MiB the second process fetched again, and the runs the reader stored
itself. Run it against another netcache tree to compare: ``PYTHONPATH=/that/tree``.

    python benchmarks/bench_writeback.py               # 96 MiB, 24 MiB of memory, 3 runs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MiB = 1 << 20
RESULTS = Path(__file__).resolve().parent / "results"


def child(opts: argparse.Namespace) -> None:
    import netcache

    fs = netcache.NetCacheFileSystem(target_protocol="http", cache_dir=opts.folder,
                                     memory_limit=opts.memory, check_interval=None,
                                     memory_monitor=False)  # fmt: skip
    size = fs.info(opts.url)["size"]
    started = time.perf_counter()
    with fs.open(opts.url) as f:
        if opts.workload == "seq" or opts.second:
            while f.read(MiB):
                pass
        else:
            offsets = list(range(0, size, 256 << 10))
            random.Random(1).shuffle(offsets)
            for off in offsets:
                f.seek(off)
                f.read(256 << 10)
    read = time.perf_counter() - started
    started = time.perf_counter()
    fs.flush()
    flushed = time.perf_counter() - started
    st = fs.stats()
    print(json.dumps({"mib_s": size / MiB / read, "flush_s": flushed,
                      "refetched_mib": st.retrievals.rbytes / MiB,
                      "own": getattr(st.stores, "own", 0), "nbf": st.stores.nbf}))  # fmt: skip


def run_child(opts: argparse.Namespace, url: str, folder: str, workload: str,
              second: bool) -> dict[str, Any]:  # fmt: skip
    cmd = [sys.executable, __file__, "--child", "--url", url, "--folder", folder,
           "--workload", workload, "--memory", opts.memory]  # fmt: skip
    if second:
        cmd.append("--second")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def one_run(opts: argparse.Namespace, url: str, workload: str, busy: int) -> dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="nc-wb-")
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(busy)]  # fmt: skip
    try:
        first = run_child(opts, url, folder, workload, second=False)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    second = run_child(opts, url, folder, workload, second=True)
    shutil.rmtree(folder, ignore_errors=True)
    return {"mib_s": first["mib_s"], "flush_s": first["flush_s"], "own": first["own"],
            "refetched_mib": second["refetched_mib"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--second", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url")
    parser.add_argument("--folder")
    parser.add_argument("--workload", default="seq")
    parser.add_argument("--memory", default="24MiB")
    parser.add_argument("--size-mib", type=int, default=96)
    parser.add_argument("--busy", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--label", default=os.environ.get("PYTHONPATH", "this tree"))
    opts = parser.parse_args()
    if opts.child:
        return child(opts)
    server = subprocess.Popen([sys.executable, "-m", "netcache.testing.httpserver", "--size-mib",
                               str(opts.size_mib)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    rows = []
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip() + "/big.bin"
        for workload in ("seq", "shuffle"):
            for busy in (0, opts.busy):
                runs = [one_run(opts, url, workload, busy) for _ in range(opts.repeat)]
                row = {"workload": workload, "busy": busy,
                       **{k: statistics.median(r[k] for r in runs) for k in runs[0]}}  # fmt: skip
                rows.append(row)
                print(f"{opts.label}: {workload:8} busy={busy} cold {row['mib_s']:7.1f} MiB/s  "
                      f"flush {row['flush_s']:5.2f} s  refetched {row['refetched_mib']:6.1f} MiB  "
                      f"own runs {row['own']:.0f}", flush=True)  # fmt: skip
    finally:
        server.terminate()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_writeback.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
