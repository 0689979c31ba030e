"""The benchmark charts are drawn from the rows the benchmarks produce."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
spec = importlib.util.spec_from_file_location(
    "charts", Path(__file__).resolve().parent.parent / "benchmarks" / "charts.py"
)
assert spec is not None and spec.loader is not None
charts = importlib.util.module_from_spec(spec)
spec.loader.exec_module(charts)

PNG = b"\x89PNG\r\n\x1a\n"


def test_throughput_chart(tmp_path: Path) -> None:
    rows = [
        {"latency": lat, "workload": w, "phase": p, "cache": c, "rate": 100.0 + i}
        for i, (lat, w, p, c) in enumerate(
            (lat, w, p, c)
            for lat in ("0 ms", "20 ms")
            for w in ("seq", "random")
            for p in ("cold", "warm", "new process from disk")
            for c in ("netcache", "plain", "blockcache", "netcache (64 MiB)")
        )
    ]
    out = charts.throughput_chart(rows, tmp_path / "t.png")
    assert out == tmp_path / "t.png"
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 10_000


def test_storm_chart(tmp_path: Path) -> None:
    timeline = [(t / 100, (200 + (t % 50)) << 20, 20 <= t % 100 < 70) for t in range(600)]
    thresholds = {"limit": 300 << 20, "critical": 285 << 20, "high": 270 << 20,
                  "moderate": 240 << 20, "target": 210 << 20}  # fmt: skip
    runs = {
        "netcache": {"timeline": timeline, "thresholds": thresholds, "reclaims": [0.3, 1.4]},
        "blockcache": {"timeline": timeline, "thresholds": thresholds, "reclaims": []},
    }
    out = charts.storm_chart(runs, tmp_path / "s.png")
    assert out is not None and out.read_bytes().startswith(PNG)
