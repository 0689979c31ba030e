"""``python -m netcache stats|clear CACHE_DIR``: look into and empty a disk tier."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from netcache.backends.directory import LAYOUT, parse_segment_name, stored_slots
from netcache.identity import redact_url
from netcache.sizes import format_size


@dataclass
class CachedFile:
    """One remote file in a cache folder, as its metadata and segment files say."""

    url: str | None
    size: int | None
    pages: int = 0
    bytes: int = 0
    folder: str = field(default="", repr=False)


def scan(cache_dir: str) -> list[CachedFile]:
    """Every cached file under ``cache_dir``; raises ``FileNotFoundError`` if it is not
    a netcache folder."""
    files_root = os.path.join(cache_dir, LAYOUT, "files")
    if not os.path.isdir(files_root):
        raise FileNotFoundError(f"{cache_dir} holds no netcache disk tier ({LAYOUT}/files)")
    out = []
    for shard in sorted(os.listdir(files_root)):
        for file_id in sorted(os.listdir(os.path.join(files_root, shard))):
            folder = os.path.join(files_root, shard, file_id)
            meta = _read_meta(os.path.join(folder, "meta.json"))
            entry = CachedFile(meta.get("url"), meta.get("size"), folder=folder)
            for name in os.listdir(folder):
                parsed = parse_segment_name(name)
                if parsed is not None:
                    path = os.path.join(folder, name)
                    entry.pages += stored_slots(path, parsed[2]).bit_count()
                    entry.bytes += _size(path)
            out.append(entry)
    return out


def _read_meta(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            meta = json.loads(f.read())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def stats(cache_dir: str, as_json: bool) -> str:
    files = scan(cache_dir)
    total = {"files": len(files), "pages": sum(f.pages for f in files),
             "bytes": sum(f.bytes for f in files)}  # fmt: skip
    if as_json:
        rows = [{k: v for k, v in asdict(f).items() if k != "folder"} for f in files]
        return json.dumps({"cache_dir": cache_dir, "files": rows, "total": total}, indent=2)
    lines = [f"{'pages':>7} {'on disk':>11} {'size':>11}  url"]
    for f in sorted(files, key=lambda f: -f.bytes):
        size = format_size(f.size) if f.size is not None else "?"
        lines.append(f"{f.pages:7d} {format_size(f.bytes):>11} {size:>11}  {f.url or '?'}")
    lines.append(f"{total['pages']:7d} {format_size(total['bytes']):>11} {'':>11}  "
                 f"total, {total['files']} files")  # fmt: skip
    return "\n".join(lines)


def clear(cache_dir: str, older_than: float | None, url: str | None, as_json: bool) -> str:
    """Remove every cached file, or the pages not used for ``older_than`` seconds, or
    one URL's file (matched without userinfo and query string)."""
    removed_files = removed_pages = removed_bytes = 0
    cutoff = None if older_than is None else time.time() - older_than
    wanted = None if url is None else redact_url(url)
    for f in scan(cache_dir):
        if wanted is not None and f.url != wanted:
            continue
        if cutoff is None:
            shutil.rmtree(f.folder, ignore_errors=True)
            removed_files += 1
            removed_pages += f.pages
            removed_bytes += f.bytes
            continue
        for name in os.listdir(f.folder):
            path = os.path.join(f.folder, name)
            parsed = parse_segment_name(name)
            if parsed is not None and os.path.getmtime(path) < cutoff:
                removed_bytes += _size(path)
                removed_pages += stored_slots(path, parsed[2]).bit_count()
                os.unlink(path)
    report = {"files": removed_files, "pages": removed_pages, "bytes": removed_bytes}
    if as_json:
        return json.dumps({"removed": report})
    return f"removed {removed_pages} pages ({format_size(removed_bytes)}) of {cache_dir}"
