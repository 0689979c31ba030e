"""The README's main job: ``python -m netcache demo``."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_demo_runs_and_second_process_is_served_from_disk(tmp_path: pathlib.Path) -> None:
    import os

    out = subprocess.run([sys.executable, "-m", "netcache", "demo", "--size-mib", "4"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TMPDIR": str(tmp_path)})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert list(tmp_path.iterdir()) == []  # its temporary cache folder is gone
    assert "(Retrvls: pages served by tier" in out.stdout  # a legend under the stats
    assert "all passes read the same bytes: True" in out.stdout
    row = re.search(r"^2nd process\s+\S+\s+\S+\s+(\d+)\s", out.stdout, re.M)
    assert row is not None and row.group(1) == "0"
    assert "VmScan : nos=" in out.stdout


def test_demo_rejects_bad_size() -> None:
    out = subprocess.run([sys.executable, "-m", "netcache", "demo", "--size-mib", "0"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "--size-mib must be at least 1" in out.stderr


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text().splitlines()
    commands = [line for line in readme[:6] if line.startswith("python3 -m venv")]
    assert len(commands) == 2 and commands[0].endswith("python -m netcache demo")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci


def test_ruff_clean() -> None:
    out = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stdout


def test_the_test_server_serves_a_folder(tmp_path: pathlib.Path) -> None:
    """``python -m netcache.testing.httpserver --folder DIR``: try netcache on your files."""
    import urllib.request

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_bytes(b"hello, netcache")
    (tmp_path / "link").symlink_to(tmp_path / "sub" / "a.txt")  # not followed
    server = subprocess.Popen([sys.executable, "-m", "netcache.testing.httpserver", "--folder",
                               str(tmp_path)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert server.stdout is not None
        base = server.stdout.readline().strip()
        with urllib.request.urlopen(f"{base}/sub/a.txt") as answer:
            assert answer.read() == b"hello, netcache"
        try:
            urllib.request.urlopen(f"{base}/link")
            raise AssertionError("a link was served")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
    finally:
        server.terminate()
        server.wait()
