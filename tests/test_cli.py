"""``python -m netcache stats|clear``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import fsspec
from conftest import BS, payload

import netcache


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netcache", *args], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def fill(cache: str) -> None:
    mem = fsspec.filesystem("memory")
    mem.pipe_file("/cli/a.bin", payload(3 * BS, 1))
    mem.pipe_file("/cli/b.bin", payload(2 * BS, 2))
    fs = netcache.NetCacheFileSystem(fs=mem, cache_dir=cache, block_size=BS)
    fs.cat_file("/cli/a.bin")
    fs.cat_file("/cli/b.bin")
    assert fs.flush(10)


def test_stats_and_clear(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cache = str(tmp_path / "c")
    fill(cache)
    out = run("stats", cache, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    by_url = {f["url"]: f for f in report["files"]}
    assert by_url["/cli/a.bin"]["pages"] == 3 and by_url["/cli/b.bin"]["pages"] == 2
    assert by_url["/cli/a.bin"]["size"] == 3 * BS
    assert report["total"]["pages"] == 5
    text = run("stats", cache).stdout
    assert "/cli/a.bin" in text and "total, 2 files" in text
    # one URL
    out = run("clear", cache, "--url", "/cli/b.bin", "--json")
    assert json.loads(out.stdout)["removed"]["pages"] == 2
    assert {f["url"] for f in json.loads(run("stats", cache, "--json").stdout)["files"]} == {
        "/cli/a.bin"}  # fmt: skip
    # by age: nothing is that old yet, then everything is
    assert json.loads(run("clear", cache, "--older-than", "3600", "--json").stdout)[
        "removed"]["pages"] == 0  # fmt: skip
    past = time.time() - 7200
    for folder, _, names in os.walk(cache):
        for n in names:
            os.utime(os.path.join(folder, n), (past, past))
    assert json.loads(run("clear", cache, "--older-than", "3600", "--json").stdout)[
        "removed"]["pages"] == 3  # fmt: skip
    # all
    fill(cache)
    assert "removed" in run("clear", cache).stdout
    assert json.loads(run("stats", cache, "--json").stdout)["total"]["files"] == 0


def test_cli_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = run("stats", str(tmp_path / "nothing"))
    assert out.returncode == 1 and "holds no netcache disk tier" in out.stderr
    out = run("clear", str(tmp_path), "--older-than", "-5")
    assert out.returncode == 2 and "--older-than must be" in out.stderr
    out = run("clear", str(tmp_path), "--older-than", "5", "--url", "x")
    assert out.returncode == 2 and "not allowed with" in out.stderr
    assert run("frobnicate").returncode == 2


def test_a_removal_that_fails_is_not_counted_as_done(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from netcache import cli
    from netcache.backends.folder import CacheFolder

    cache = str(tmp_path / "c")
    fill(cache)
    remove = CacheFolder.remove
    calls: list[str] = []

    def failing_once(self: CacheFolder, rel: str) -> None:
        calls.append(rel)
        if len(calls) == 1:
            raise PermissionError(13, "Permission denied", rel)
        remove(self, rel)

    monkeypatch.setattr(CacheFolder, "remove", failing_once)
    try:
        cli.clear(cache, None, None, as_json=True)
    except cli.RemovalFailed as exc:
        report = json.loads(str(exc))
    else:
        raise AssertionError("a failed removal was reported as done")
    assert report["failed"] == 1 and report["removed"]["files"] == 1
    left = json.loads(cli.stats(cache, as_json=True))
    assert left["total"]["files"] == 1  # the one that failed is still there, and says so
    out = run("stats", str(tmp_path / "nowhere"))
    assert out.returncode == 1 and "holds no netcache disk tier" in out.stderr
