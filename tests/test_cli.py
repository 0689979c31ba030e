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
    # named with the target's scheme (an S3 entry shows s3://)
    a, b = by_url["memory:///cli/a.bin"], by_url["memory:///cli/b.bin"]
    assert a["pages"] == 3 and b["pages"] == 2 and a["size"] == 3 * BS
    assert report["total"]["pages"] == 5
    text = run("stats", cache).stdout
    assert "memory:///cli/a.bin" in text and "total, 2 files" in text
    # one URL
    out = run("clear", cache, "--url", "/cli/b.bin", "--json")
    assert json.loads(out.stdout)["removed"]["pages"] == 2
    assert {f["url"] for f in json.loads(run("stats", cache, "--json").stdout)["files"]} == {
        "memory:///cli/a.bin"}  # fmt: skip
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


_READER = """
import sys, fsspec, netcache
m = fsspec.filesystem("memory")
m.pipe_file("/live/x.bin", bytes(200_000))
fs = netcache.NetCacheFileSystem(fs=m, cache_dir=sys.argv[1], block_size=65536)
for _ in range(int(sys.argv[2])):
    fs.cat_file("/live/x.bin")
netcache.process.live_stats.publish()  # now, not at the next tick (every 2 s)
print("ready", flush=True)
sys.stdin.readline()  # until told to end
"""


def _reader(cache: str, reads: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _READER, cache, str(reads)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_stats_shows_every_live_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cache = str(tmp_path / "live")
    one, two = _reader(cache, 1), _reader(cache, 4)
    try:
        report = json.loads(run("stats", cache, "--json").stdout)
        procs = {p["pid"]: p for p in report["processes"]}
        assert set(procs) == {one.pid, two.pid}
        # the second reads more, the first's pages on disk and its own in memory
        assert procs[two.pid]["pages_read"] > procs[one.pid]["pages_read"] > 0
        assert procs[two.pid]["hit_ratio"] > procs[one.pid]["hit_ratio"]
        assert procs[two.pid]["pressure_level"] == "NONE" and procs[two.pid]["rss"] > 0
        assert report["total"]["processes"] == 2
        text = run("stats", cache).stdout
        assert "2 live process(es)" in text and "nos=0 gon=0 bsy=0 can=0" in text
        assert "memory:///live/x.bin" in text
        two.kill()  # kill -9: its file stays, and is ignored now its pid is gone
        two.wait()
        report = json.loads(run("stats", cache, "--json").stdout)
        assert [p["pid"] for p in report["processes"]] == [one.pid]
        one.communicate("end\n", timeout=30)
        assert one.returncode == 0
        procs_folder = os.path.join(cache, "netcache-v2", "procs")
        assert os.listdir(procs_folder) == [f"{two.pid}.json"]  # a clean end removes its own
    finally:
        for proc in (one, two):
            if proc.poll() is None:
                proc.kill()


def test_stats_defaults_to_the_default_folder_and_help_lists_no_internals(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    fill(os.path.join(str(tmp_path), "netcache"))
    out = subprocess.run([sys.executable, "-m", "netcache", "stats", "--json"], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["total"]["files"] == 2
    usage = run("--help").stdout
    assert "_second" not in usage and "{demo,stats,clear}" in usage
