"""PNG charts for the benchmarks (matplotlib, the ``plot`` extra). Each function returns
the path it wrote, or None when matplotlib is not installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {
    "netcache": "#d62728",
    "plain": "#7f7f7f",
    "blockcache": "#1f77b4",
    "simplecache": "#2ca02c",
    "background": "#9467bd",
    "adaptive": "#ff7f0e",
}
PHASES = {"cold": "cold", "warm": "warm", "new process from disk": "disk"}
SHORT = {"seq": "sequential", "random": "random 64 KiB", "small": "small files",
         "catmany": "cat of files", "ranges": "cat_ranges"}  # fmt: skip


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def throughput_chart(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """MiB/s of netcache and each peer, per workload and pass, one panel per latency."""
    plt = _pyplot()
    if plt is None:
        return None
    latencies = sorted({r["latency"] for r in rows}, key=lambda s: float(s.split()[0]))
    fig, axes = plt.subplots(len(latencies), 1, figsize=(13, 4.2 * len(latencies)),
                             squeeze=False)  # fmt: skip
    for ax, latency in zip(axes[:, 0], latencies, strict=True):
        mine = [r for r in rows if r["latency"] == latency and r["cache"] in COLORS]
        order = {(w, p): (i, j) for i, w in enumerate(SHORT) for j, p in enumerate(PHASES)}
        groups = sorted({(r["workload"], r["phase"]) for r in mine}, key=order.__getitem__)
        caches = [c for c in COLORS if any(r["cache"] == c for r in mine)]
        width = 0.8 / len(caches)
        for i, cache in enumerate(caches):
            by = {(r["workload"], r["phase"]): r["rate"] for r in mine if r["cache"] == cache}
            xs = [g + i * width for g in range(len(groups))]
            ys = [by.get(group, 0) for group in groups]
            ax.bar(xs, ys, width, label=cache, color=COLORS[cache])
        ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
        ax.set_xticklabels([f"{SHORT.get(w, w)}\n{PHASES[p]}" for w, p in groups], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("MiB/s (log)")
        ax.set_title(f"netcache and fsspec's caches, {latency} per request")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, ncol=len(caches))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def storm_chart(runs: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """RSS over time for each cache under the memory storm, with the thresholds, the
    ballast periods, and netcache's reclaim events."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(len(runs), 1, figsize=(12, 3.6 * len(runs)), squeeze=False,
                             sharex=True)  # fmt: skip
    for ax, (cache, run) in zip(axes[:, 0], runs.items(), strict=True):
        t = [s[0] for s in run["timeline"]]
        rss = [s[1] / (1 << 20) for s in run["timeline"]]
        ax.plot(t, rss, color=COLORS.get(cache, "black"), lw=1.2, label=f"{cache} RSS")
        start = None
        for time_, _, held, *_ in run["timeline"]:
            if held and start is None:
                start = time_
            elif not held and start is not None:
                ax.axvspan(start, time_, color="#cccccc", alpha=0.5, lw=0)
                start = None
        for name, style in (("limit", "-"), ("critical", ":"), ("high", "-."),
                            ("moderate", "--"), ("target", (0, (1, 3)))):  # fmt: skip
            ax.axhline(run["thresholds"][name] / (1 << 20), color="black", ls=style, lw=0.8,
                       label=name)  # fmt: skip
        events = run.get("reclaims", [])
        if events:
            top = max(rss)
            ax.plot(events, [top * 1.02] * len(events), "v", color="#d62728", ms=5,
                    label="reclaim")  # fmt: skip
        ax.set_ylabel("RSS MiB")
        ax.set_title(f"{cache}: RSS under the memory storm (grey: ballast held)")
        ax.legend(fontsize=7, loc="lower right", ncol=4)
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
