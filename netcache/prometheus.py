"""netcache's counters in the Prometheus text exposition format, named as Prometheus
asks: a unit or ``_total`` suffix, outcomes, tiers and reasons as labels of one metric
(``netcache_vmscan_pages_total{outcome="cancelled"}``), and a HELP line per metric that
says what it counts."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

#: Counters that are one metric with a label: ``name -> (metric, label, value)``.
LABELLED: dict[str, tuple[str, str, str]] = {
    **{f"vmscan.{k}": ("vmscan_pages", "outcome", v) for k, v in {
        "nos": "no_store", "gon": "gone", "bsy": "busy", "can": "cancelled",
        "kep": "kept"}.items()},
    **{f"retrievals.{k}": ("pages_served", "tier", v) for k, v in {
        "mem": "memory", "disk": "disk", "remote": "remote"}.items()},
    **{f"retrievals.{k}": ("bytes_served", "tier", v) for k, v in {
        "mbytes": "memory", "dbytes": "disk", "rbytes": "remote"}.items()},
    **{f"unstored.{k}": ("stores_given_up", "reason", k) for k in (
        "pressure", "error", "full", "invalidated", "closed")},
}  # fmt: skip

#: What each metric counts (its HELP line).
HELP: dict[str, str] = {
    "vmscan_pages": "Pages reclaim asked maybe_release_page about, by outcome (FS-Cache's "
    "VmScan: no_store released, gone released after its store ended, busy "
    "skipped while stored, cancelled store given up, kept skipped by policy).",
    "pages_served": "Pages served to readers, by the tier they came from.",
    "bytes_served": "Bytes served to readers, by tier (remote: bytes fetched from it).",
    "stores_given_up": "Pages whose store to the disk tier was given up, by why.",
    "vmscan_wt": "Times reclaim waited for a store (WaitForStore only).",
    "pages_n": "Pages in memory now.",
    "pages_bytes": "Bytes of pages in memory now.",
    "pages_limit": "The memory tier's byte budget.",
    "retrievals_req": "Requests made to the remote for data.",
    "retrievals_joined": "Pages a reader waited for while another reader fetched them.",
    "retrievals_err": "Remote fetches that failed.",
    "retrievals_retry": "Requests made again after a transient error.",
    "retrievals_stale": "Versions served unchecked because the remote was unreachable.",
    "retrievals_nolook": "First looks that could not be used (info() was asked).",
    "stores_n": "Store requests to the write-back queue.",
    "stores_ok": "Store requests queued.",
    "stores_agn": "Store requests for pages queued or stored already.",
    "stores_nbf": "Times a reader found the write-back queue over its share of memory.",
    "stores_own": "Runs of pages a reader stored itself while the queue was over its share.",
    "stores_oom": "Stores that failed for lack of memory.",
    "stores_run": "Pages whose store ran.",
    "stores_pgs": "Pages stored in the disk tier.",
    "stores_err": "Pages the disk tier failed to store.",
    "stores_pend": "Bytes queued or being stored now.",
    "evict_n": "Pages evicted to stay within memory_limit.",
    "evict_bytes": "Bytes evicted to stay within memory_limit.",
    "invalidations_n": "Invalidations (a file changed, was written, or was cleared).",
    "invalidations_pages": "Pages dropped by invalidations.",
    "peers_asked": "Pages asked of peers (netcache.dask.share_pages).",
    "peers_req": "Requests sent to peers (one per home and file version of a fetch).",
    "peers_got": "Pages peers served this cache.",
    "peers_gbytes": "Bytes peers served this cache.",
    "peers_served": "Pages this cache served to peers.",
    "peers_sbytes": "Bytes this cache served to peers.",
    "peers_fallback": "Pages asked of a peer that failed or refused, fetched from the remote.",
    "peers_err": "Peers that failed (gone, slow, an error) or answered wrong.",
    "disk_used": "Bytes the disk tier holds now.",
    "disk_limit": "The disk tier's byte limit.",
    "disk_pages": "Pages the disk tier holds now.",
    "disk_culls": "Segments (or pages) culled to stay within disk_limit.",
    "disk_cbytes": "Bytes culled to stay within disk_limit.",
    "disk_rerr": "Disk-tier pages or metadata that could not be used (read from the remote).",
    "disk_werr": "Pages or metadata the disk tier failed to write.",
    "disk_cerr": "Culled segments that could not be removed (culled again later).",
    "disk_lmade": "Whole-file local copies written (open_local).",
    "disk_lhit": "Whole-file local copies handed out again (open_local).",
    "pressure_readings": "Memory readings the pressure monitor took.",
    "pressure_mod": "Times memory pressure entered MODERATE.",
    "pressure_high": "Times memory pressure entered HIGH.",
    "pressure_crit": "Times memory pressure entered CRITICAL.",
    "pressure_rbytes": "Bytes reclaimed under memory pressure.",
    "pressure_rpages": "Pages reclaimed under memory pressure.",
    "pressure_last_us": "Microseconds the last reclaim walk took.",
    "pressure_max_us": "Microseconds the longest reclaim walk took.",
    "pressure_level": "Memory pressure now: 0 none, 1 moderate, 2 high, 3 critical.",
}

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def metric_of(name: str, gauges: frozenset[str]) -> tuple[str, dict[str, str], str]:
    """The metric (with its suffix), labels and kind of flat counter ``name``."""
    if name in LABELLED:
        base, label, value = LABELLED[name]
        return f"{base}_total", {label: value}, "counter"
    base = name.replace(".", "_")
    if name in gauges:
        return base, {}, "gauge"
    return f"{base}_total", {}, "counter"


def prometheus_text(series: Iterable[tuple[Mapping[str, str], Mapping[str, object]]],
                    gauges: frozenset[str], prefix: str = "netcache") -> str:  # fmt: skip
    """Render flat counters (``group.field`` names; plain names are skipped, as they
    repeat them) in the text exposition format, one sample per ``(labels, counters)``
    pair and label value."""
    series = list(series)
    families: dict[str, tuple[str, str, list[str]]] = {}
    for labels, counters in series:
        for name in sorted(counters):
            if "." not in name:
                continue
            metric, own, kind = metric_of(name, gauges)
            full = f"{prefix}_{metric}"
            base = metric.removesuffix("_total")
            help_text = HELP.get(base) or HELP.get(name.replace(".", "_"), name)
            family = families.setdefault(full, (kind, help_text, []))
            value = counters[name]
            family[2].append(f"{full}{_labels({**labels, **own})} {int(value)}")  # type: ignore[call-overload]
    lines: list[str] = []
    for full, (kind, help_text, samples) in sorted(families.items()):
        # the text format (0.0.4) names a counter's family with its _total suffix
        lines.append(f"# HELP {full} {help_text}")
        lines.append(f"# TYPE {full} {kind}")
        lines.extend(samples)
    return "\n".join(lines) + "\n"


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    parts = []
    for key, value in sorted(labels.items()):
        if not _LABEL_NAME.fullmatch(key):
            raise ValueError(f"label name {key!r} must match {_LABEL_NAME.pattern}")
        text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        parts.append(f'{key}="{text}"')
    return "{" + ",".join(parts) + "}"
