"""Hold the machine's available memory low, to run the tests as on a machine short of
memory (tests/ must pass there: their caches use a monitor that reads no memory).

    python benchmarks/ballast.py 500 &    # MemAvailable held near 500 MiB
    .venv/bin/python -m pytest -q
    kill %1

It touches 256 MiB anonymous mappings until ``MemAvailable`` is near the figure given,
asks the OOM killer to pick it first (``oom_score_adj`` 1000), and lets a mapping go
whenever ``MemAvailable`` falls under 400 MiB, so it never pushes the machine over.
"""

from __future__ import annotations

import mmap
import sys
import time

STEP = 256 << 20
FLOOR = 400 << 20


def available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def main() -> None:
    leave = int(sys.argv[1]) << 20 if len(sys.argv) > 1 else 1 << 30
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")
    held = []
    while available() - STEP > leave:
        block = mmap.mmap(-1, STEP, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        for offset in range(0, STEP, mmap.PAGESIZE):
            block[offset] = 1
        held.append(block)
    print(f"ballast {len(held) * STEP >> 20} MiB, MemAvailable {available() >> 20} MiB",
          flush=True)  # fmt: skip
    while True:
        time.sleep(1)
        if available() < FLOOR and held:
            held.pop()


if __name__ == "__main__":
    main()
