"""Wrong types, negative and huge offsets, reads past EOF, missing paths, malformed URLs
and chained options: each a clear exception of the conventional type, or the documented
behaviour, and nothing half-written left behind."""

from __future__ import annotations

import os

import fsspec
import pytest
from conftest import BS, payload

import netcache


@pytest.fixture
def fs(tmp_path) -> netcache.NetCacheFileSystem:  # type: ignore[no-untyped-def]
    mem = fsspec.filesystem("memory")
    mem.pipe_file("/bad/f.bin", payload(3 * BS + 5, 1))
    return netcache.NetCacheFileSystem(fs=mem, cache_dir=str(tmp_path / "c"), block_size=BS)


DATA = payload(3 * BS + 5, 1)


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [(0, 10**15, DATA), (10**15, None, b""), (10**15, 10**15 + 5, b""), (-10**15, 5, DATA[:5]),
     (5, 2, b""), (-5, None, DATA[-5:]), (None, -(10**15), b""), (len(DATA), None, b"")],
)  # fmt: skip
def test_cat_file_offsets(fs: netcache.NetCacheFileSystem, start: object, end: object,
                          expected: bytes) -> None:  # fmt: skip
    assert fs.cat_file("/bad/f.bin", start, end) == expected  # type: ignore[arg-type]


def test_file_reads_past_eof_and_bad_seeks(fs: netcache.NetCacheFileSystem) -> None:
    with fs.open("/bad/f.bin") as f:
        f.seek(10**12)
        assert f.read(10) == b""
        f.seek(len(DATA) - 3)
        assert f.read(100) == DATA[-3:]
        with pytest.raises(OSError):  # EINVAL, as Python's own files say it
            f.seek(-1)
        with pytest.raises((TypeError, ValueError)):
            f.read("ten")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        f.read(1)  # closed


def test_missing_paths_raise_file_not_found(fs: netcache.NetCacheFileSystem) -> None:
    for call in (lambda: fs.open("/bad/none"), lambda: fs.cat_file("/bad/none"),
                 lambda: fs.info("/bad/none")):  # fmt: skip
        with pytest.raises(FileNotFoundError):
            call()
    out = fs.cat_ranges(["/bad/none", "/bad/f.bin"], [0, 0], [1, 1])
    assert isinstance(out[0], FileNotFoundError) and out[1] == DATA[:1]
    with pytest.raises(FileNotFoundError):
        fs.cat_ranges(["/bad/none"], [0], [1], on_error="raise")


def test_directory_is_not_a_file(fs: netcache.NetCacheFileSystem) -> None:
    with pytest.raises((IsADirectoryError, FileNotFoundError)):
        fs.open("/bad")


def test_cat_ranges_argument_shapes(fs: netcache.NetCacheFileSystem) -> None:
    with pytest.raises(TypeError, match="paths must be a list"):
        fs.cat_ranges("/bad/f.bin", 0, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same length"):
        fs.cat_ranges(["/bad/f.bin"], [0, 1], [1])
    assert fs.cat_ranges(["/bad/f.bin"] * 2, 0, 3) == [DATA[:3]] * 2


@pytest.mark.parametrize(
    ("url", "options", "error"),
    [("netcache::memory://bad/f.bin", {"netcache": {"cache_dir": 5}}, TypeError),
     ("netcache::memory://bad/f.bin", {"netcache": {"block_size": "huge"}}, ValueError),
     ("netcache::memory://bad/f.bin", {"netcache": {"bogus": 1}}, TypeError),
     ("netcache::nosuchproto://x/y", {}, ValueError)],
)  # fmt: skip
def test_chained_urls_with_bad_options(url: str, options: dict, error: type) -> None:
    with pytest.raises(error):
        fsspec.open(url, **options).open()


def test_nothing_half_written_after_a_failed_construction(tmp_path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "never"
    with pytest.raises(ValueError):
        netcache.NetCacheFileSystem(target_protocol="memory", cache_dir=str(folder),
                                    block_size="nope")  # fmt: skip
    assert not folder.exists()
    assert not os.listdir(tmp_path)
