"""``python -m netcache stats|clear CACHE_DIR``: look into and empty a disk tier."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from netcache.backends.base import HEADER_SIZE, MAX_META_BYTES, decode_meta
from netcache.backends.folder import CacheFolder, remove_at
from netcache.backends.segments import LAYOUT, META_NAME, parse_segment_name, slots_in
from netcache.identity import redact_url
from netcache.livestats import read_live
from netcache.sizes import format_size
from netcache.stats import level_name


@dataclass
class CachedFile:
    """One remote file in a cache folder, as its metadata and segment files say."""

    url: str | None
    size: int | None
    pages: int = 0
    bytes: int = 0
    folder: str = field(default="", repr=False)  # relative to the files folder


def open_files_folder(cache_dir: str) -> CacheFolder:
    """The disk tier's files folder under ``cache_dir``, checked as a cache checks it;
    raises ``FileNotFoundError`` if it is not a netcache folder."""
    try:
        return CacheFolder(cache_dir, f"{LAYOUT}/files", create=False)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{cache_dir} holds no netcache disk tier ({LAYOUT}/files)"
        ) from None


def scan(folder: CacheFolder) -> list[CachedFile]:
    """Every cached file in ``folder``; what is not a file's folder, a segment or
    metadata (a link, a FIFO, a stray file) is passed over, never opened."""
    out = []
    for shard in sorted(folder.listdir("")):
        try:
            file_ids = sorted(folder.listdir(shard))
        except OSError:  # not a folder, or not to be trusted
            continue
        for file_id in file_ids:
            rel = f"{shard}/{file_id}"
            try:
                dir_fd, _ = folder.open_folder(rel)
            except OSError:
                continue
            try:
                out.append(_cached_file(folder, rel, dir_fd))
            finally:
                os.close(dir_fd)
    return out


def _cached_file(folder: CacheFolder, rel: str, dir_fd: int) -> CachedFile:
    meta = _read_meta(folder, rel)
    url, size = meta.get("url"), meta.get("size")
    entry = CachedFile(url if isinstance(url, str) else None,
                       size if type(size) is int and size >= 0 else None, folder=rel)  # fmt: skip
    for name in os.listdir(dir_fd):
        parsed = parse_segment_name(name)
        if parsed is not None:
            try:
                fd = folder.open_in(dir_fd, name, os.O_RDONLY)
            except OSError:
                continue
            try:
                entry.pages += _stored_pages(fd, parsed[2])
                entry.bytes += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return entry


def _read_meta(folder: CacheFolder, rel: str) -> dict[str, Any]:
    try:
        blob = folder.read_small(f"{rel}/{META_NAME}", MAX_META_BYTES)
        return decode_meta(blob, rel) if blob is not None else {}
    except OSError:
        return {}


_VMSCAN = ("nos", "gon", "bsy", "can", "wt", "kep")


def process_summary(entry: dict[str, Any]) -> dict[str, Any]:
    """One live process's figures: its caches in this folder summed."""
    total: dict[str, int] = {}
    for cache in entry.get("caches", []):
        for name, value in cache.get("stats", {}).items():
            if "." in name and isinstance(value, int):
                total[name] = total.get(name, 0) + value
    served = sum(total.get(f"retrievals.{t}", 0) for t in ("mem", "disk", "remote"))
    hits = total.get("retrievals.mem", 0) + total.get("retrievals.disk", 0)
    levels = [c.get("stats", {}).get("pressure.level", 0) for c in entry.get("caches", [])]
    return {
        "pid": entry["pid"], "rss": entry.get("rss", 0), "pages_read": served,
        "hit_ratio": hits / served if served else 0.0,
        "pressure_level": level_name(max(levels, default=0)),
        "vmscan": {k: total.get(f"vmscan.{k}", 0) for k in _VMSCAN},
        "updated": entry.get("updated", 0.0),
    }  # fmt: skip


def stats(cache_dir: str, as_json: bool) -> str:
    """Live processes using ``cache_dir`` (their hit ratio, memory, pressure and VmScan
    line), the disk tier's contents, and the totals."""
    files = scan(open_files_folder(cache_dir))
    procs = [process_summary(e) for e in read_live(cache_dir)]
    read = sum(p["pages_read"] for p in procs)
    hits = sum(p["hit_ratio"] * p["pages_read"] for p in procs)
    total = {"processes": len(procs), "hit_ratio": hits / read if read else 0.0,
             "files": len(files), "pages": sum(f.pages for f in files),
             "bytes": sum(f.bytes for f in files)}  # fmt: skip
    if as_json:
        rows = [{k: v for k, v in asdict(f).items() if k != "folder"} for f in files]
        return json.dumps({"cache_dir": cache_dir, "processes": procs, "files": rows,
                           "total": total}, indent=2)  # fmt: skip
    lines = [f"{len(procs)} live process(es) using {cache_dir}"]
    if procs:
        lines.append(f"{'pid':>8} {'hit ratio':>9} {'memory':>11} {'pressure':>9}  VmScan")
    for p in procs:
        vmscan = " ".join(f"{k}={v}" for k, v in p["vmscan"].items())
        lines.append(f"{p['pid']:>8} {p['hit_ratio']:>9.1%} {format_size(p['rss']):>11} "
                     f"{p['pressure_level']:>9}  {vmscan}")  # fmt: skip
    lines += ["", "disk tier:", f"{'pages':>7} {'on disk':>11} {'size':>11}  url"]
    for f in sorted(files, key=lambda f: -f.bytes):
        size = format_size(f.size) if f.size is not None else "?"
        lines.append(f"{f.pages:7d} {format_size(f.bytes):>11} {size:>11}  {f.url or '?'}")
    lines.append(f"{total['pages']:7d} {format_size(total['bytes']):>11} {'':>11}  "
                 f"total, {total['files']} files")  # fmt: skip
    lines.append(f"\ntotal: {total['processes']} process(es), hit ratio "
                 f"{total['hit_ratio']:.1%} of {read} pages read, {total['files']} files "
                 f"({format_size(total['bytes'])}) on disk")  # fmt: skip
    return "\n".join(lines)


class RemovalFailed(OSError):
    """``clear`` could not remove some of what it was asked to; its message is the
    report of what was removed and what was not."""


def clear(cache_dir: str, older_than: float | None, url: str | None, as_json: bool) -> str:
    """Remove every cached file, or the pages not used for ``older_than`` seconds, or
    one URL's file (matched without userinfo and query string). What could not be
    removed is counted apart, never as removed: then :class:`RemovalFailed` is raised,
    its message the report."""
    removed_files = removed_pages = removed_bytes = 0
    failed: list[OSError] = []
    cutoff = None if older_than is None else time.time() - older_than
    wanted = None if url is None else redact_url(url)
    folder = open_files_folder(cache_dir)
    for f in scan(folder):
        if wanted is not None and f.url != wanted and _without_scheme(f.url) != wanted:
            continue
        if cutoff is None:
            try:
                folder.remove(f.folder)
            except OSError as exc:
                failed.append(exc)
                continue
            removed_files += 1
            removed_pages += f.pages
            removed_bytes += f.bytes
            continue
        old = _older_segments(folder, f.folder, cutoff, failed)
        removed_pages += sum(pages for pages, _ in old)
        removed_bytes += sum(nbytes for _, nbytes in old)
    report = {"files": removed_files, "pages": removed_pages, "bytes": removed_bytes}
    if as_json:
        text = json.dumps({"removed": report, "failed": len(failed)})
    else:
        text = f"removed {removed_pages} pages ({format_size(removed_bytes)}) of {cache_dir}"
        if failed:
            text += f"; {len(failed)} could not be removed (first: {failed[0]})"
    if failed:
        raise RemovalFailed(text)
    return text


def _older_segments(
    folder: CacheFolder, rel: str, cutoff: float, failed: list[OSError]
) -> list[tuple[int, int]]:
    """Remove the segments of file folder ``rel`` not used since ``cutoff``; return the
    pages and bytes of each removed, and add to ``failed`` what could not be."""
    removed = []
    try:
        dir_fd, _ = folder.open_folder(rel)
    except OSError:
        return removed
    try:
        for name in os.listdir(dir_fd):
            parsed = parse_segment_name(name)
            if parsed is None:
                continue
            try:
                fd = folder.open_in(dir_fd, name, os.O_RDONLY)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                pages = _stored_pages(fd, parsed[2])
            finally:
                os.close(fd)
            if st.st_mtime < cutoff:
                try:
                    remove_at(dir_fd, name)
                except OSError as exc:
                    failed.append(exc)
                    continue
                removed.append((pages, st.st_size))
    finally:
        os.close(dir_fd)
    return removed


def _stored_pages(fd: int, pages: int) -> int:
    """Pages whose header the segment open at ``fd`` has written (not checked: a count)."""
    return slots_in(os.pread(fd, pages * HEADER_SIZE, 0), pages).bit_count()


def _without_scheme(url: str | None) -> str | None:
    """``url`` without its ``scheme://`` (``memory:///a`` is ``/a``, ``s3://b/k`` is
    ``b/k``): a file given as the target names it."""
    if url is None or "://" not in url:
        return url
    return url.split("://", 1)[1]
