"""The floors benchmark's report: Python overhead and ratios are taken round by round."""

from __future__ import annotations

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "bench_floors", Path(__file__).resolve().parent.parent / "benchmarks" / "bench_floors.py"
)
assert spec is not None and spec.loader is not None
bench_floors = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_floors)


def test_report_takes_differences_and_ratios_within_each_round() -> None:
    warm = []
    for reads in ("64 KiB random", "1 MiB sequential"):
        warm += [
            (f"{reads} | netcache: read", [10.0, 20.0, 30.0]),
            (f"{reads} | netcache: copy only", [4.0, 8.0, 27.0]),
            (f"{reads} | simplecache: read", [5.0, 10.0, 15.0]),
        ]
    fill = {
        "new 128 KiB page buffers (cold read)": [200.0, 300.0, 100.0],
        "a file's page cache": [100.0, 100.0, 100.0],
    }
    tables = [("Putting 256 MiB into memory", "ms", "a file's page cache", fill)]
    cold = {
        "seq": {
            "netcache": [
                {
                    "wall": 1000.0,
                    "cpu": {"reader": 100.0, "fsspec event loop": 800.0},
                    "fresh": {"reader": 1.0, "fsspec event loop": 256.0},
                },
                {
                    "wall": 500.0,
                    "cpu": {"reader": 300.0, "fsspec event loop": 200.0},
                    "fresh": {"reader": 3.0, "fsspec event loop": 250.0},
                },
                {"wall": 800.0, "cpu": {"reader": 200.0}, "fresh": {"reader": 2.0}},
            ]
        },
        # each workload its own table, its rate from its own MiB (200 in 1 s here)
        "catmany": {"plain": [{"wall": 1000.0, "cpu": {"reader": 50.0}, "fresh": {}}]},
    }
    text = bench_floors.report(warm, tables, cold, 3)
    # round by round: 10-4, 20-8, 30-27 -> median 6 (the difference of medians is 12)
    assert "64 KiB random: netcache's read = its copy + 6.00 us of Python (30% of" in text
    assert "| 64 KiB random | simplecache: read | 10.00 | 0.50 |" in text
    assert "| into | ms | ÷ a file's page cache |" in text
    assert "| new 128 KiB page buffers (cold read) | 200 | 2.00 |" in text
    # a thread missing from a round counts 0; CPU / wall per round: 0.9, 1.0, 0.25
    assert "| fsspec event loop | reader | CPU ÷ wall |" in text
    assert "| netcache | 320 | 200 | 200 | 0.90 |" in text
    assert "| netcache | 250 | 2 |" in text
    assert "## Cold sequential read of 256 MiB (0 ms), CPU ms per thread" in text
    catmany = text.split("## Cold cat of 200 files of 1 MiB (0 ms), CPU ms per thread")[1]
    assert "| plain | 200 | 50 | 0.05 |" in catmany
