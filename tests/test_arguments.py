"""Every bad argument raises at construction, naming the argument and what is allowed."""

from __future__ import annotations

import pytest

import netcache
from netcache.backends.segments import LAYOUT
from netcache.sizes import parse_size


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0), (4096, 4096), ("4096", 4096), ("512MiB", 512 << 20), ("1.5 GiB", 3 << 29),
     ("2kb", 2000), ("64 KiB", 64 << 10)],
)  # fmt: skip
def test_parse_size_accepts(value: object, expected: int) -> None:
    assert parse_size(value, "x") == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["-1", "12 parsecs", "", "MiB", "1e9"])
def test_parse_size_rejects_text(value: str) -> None:
    with pytest.raises(ValueError, match="memory_limit="):
        parse_size(value, "memory_limit")


@pytest.mark.parametrize("value", [True, 1.5, None, [1]])
def test_parse_size_rejects_types(value: object) -> None:
    with pytest.raises(TypeError, match="disk_limit must be"):
        parse_size(value, "disk_limit")  # type: ignore[arg-type]


def test_negative_int_size() -> None:
    with pytest.raises(ValueError, match="block_size=-5 must be at least"):
        parse_size(-5, "block_size")


def make(**kwargs: object) -> netcache.NetCacheFileSystem:
    kwargs.setdefault("target_protocol", "memory")
    kwargs.setdefault("cache_dir", False)
    kwargs.setdefault("skip_instance_cache", True)
    return netcache.NetCacheFileSystem(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"target_protocol": None}, ValueError, "exactly one of fs="),
        ({"fs": object()}, ValueError, "exactly one of fs="),
        ({"target_protocol": "nope-not-a-protocol"}, ValueError, "target_protocol='nope"),
        ({"target_protocol": 3}, TypeError, "target_protocol=3"),
        ({"target_options": "x"}, TypeError, "target_options='x' must be a dict"),
        ({"block_size": "tiny"}, ValueError, "block_size='tiny'"),
        ({"block_size": 100}, ValueError, "block_size=100 must be at least 4096"),
        ({"memory_limit": 8192, "block_size": 65536}, ValueError, "memory_limit=8192 must hold"),
        ({"cache_dir": "/tmp", "disk_limit": 1000}, ValueError, "disk_limit=1000 must hold"),
        ({"eviction": "mru"}, ValueError, r"eviction='mru' .* use one of \['2q', 'lru'\]"),
        ({"release_policy": "cancel"}, TypeError, "release_policy='cancel' must be"),
        ({"writeback_workers": 0}, ValueError, "writeback_workers=0 must be an int from 1"),
        ({"writeback_workers": 2.0}, ValueError, "writeback_workers=2.0"),
        ({"check_interval": -1}, ValueError, "check_interval=-1 must be None"),
        ({"check_interval": "10"}, ValueError, "check_interval='10'"),
        ({"cache_dir": 42}, TypeError, "cache_dir=42 must be a folder path"),
        ({"cache_dir": True}, TypeError, "cache_dir=True"),
        ({"colour": "red"}, TypeError, r"unexpected argument\(s\) \['colour'\]"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        make(**kwargs)


def test_fs_and_protocol_together() -> None:
    import fsspec

    with pytest.raises(ValueError, match="exactly one of"):
        make(fs=fsspec.filesystem("memory"), target_protocol="memory")


def test_cache_dir_that_is_a_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "file"
    f.write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match=r"cache_dir=.* not a directory"):
        make(cache_dir=str(f))


def test_shared_context_conflicts_name_both_values(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fs = make(cache_dir=str(tmp_path), block_size="64KiB")
    fs.fs.pipe_file("/conflict/f", b"x" * 1000)
    f = fs.open("/conflict/f")  # an open file pins the page size in use
    both = r"block_size=65536 \(already in use\) and block_size=131072"
    with pytest.raises(ValueError, match=both + r".*1 open file.*netcache.close_all"):
        make(cache_dir=str(tmp_path), block_size="128KiB")
    f.close()
    assert make(cache_dir=str(tmp_path), block_size="128KiB").context.config.block_size == 128 << 10


def test_same_settings_share_one_context(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import threading

    contexts = []

    def build() -> None:
        contexts.append(make(cache_dir=str(tmp_path), skip_instance_cache=False).context)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(contexts) == 4 and all(c is contexts[0] for c in contexts)


def test_default_cache_dir_honours_xdg(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fs = make(cache_dir=None)
    assert fs.config.cache_dir == str(tmp_path / "netcache")
    assert (tmp_path / "netcache" / LAYOUT).is_dir()


@pytest.mark.parametrize("nbytes", [-1, 1.5, "10"])
def test_reclaim_rejects_bad_sizes(nbytes: object) -> None:
    with pytest.raises(ValueError, match="nbytes="):
        make().reclaim(nbytes)  # type: ignore[arg-type]


def test_wait_for_store_timeout_validated() -> None:
    with pytest.raises(ValueError, match="timeout=-1"):
        netcache.WaitForStore(timeout=-1)


@pytest.mark.parametrize(("start", "end"), [("1", None), (None, 2.5)])
def test_cat_file_rejects_non_int_offsets(start: object, end: object) -> None:
    fs = make()
    fs.fs.pipe_file("/x", b"abc")
    with pytest.raises(TypeError, match="must be an int or None"):
        fs.cat_file("/x", start, end)  # type: ignore[arg-type]


def test_open_rejects_unknown_arguments() -> None:
    fs = make()
    fs.fs.pipe_file("/x", b"abc")
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['bogus'\]"):
        fs.open("/x", "rb", bogus=1)
    # what pandas and dask pass is accepted
    with fs.open("/x", "rb", block_size=5, cache_type="bytes", cache_options={}) as f:
        assert f.read() == b"abc"
