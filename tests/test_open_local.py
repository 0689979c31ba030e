"""open_local: a real local path for C libraries, from the pages held and the rest
fetched; kept, counted and culled in the cache folder; checked every time; never made
by ordinary reads."""

from __future__ import annotations

import os
from typing import Any

import fsspec
import pytest
from conftest import payload

import netcache
from netcache.testing import RangeServer

MiB = 1 << 20
BS = 64 << 10


@pytest.fixture
def srv() -> Any:
    files = {"a.bin": payload(3 * MiB + 5, 1), "b.bin": payload(2 * MiB, 2), "t.csv":
             b"x,y\n" + b"".join(b"%d,%d\n" % (i, i * i) for i in range(2000))}  # fmt: skip
    with RangeServer(files) as server:
        yield server


def make(cache_dir: str, **kwargs: Any) -> netcache.NetCacheFileSystem:
    return netcache.NetCacheFileSystem(target_protocol="http", cache_dir=cache_dir,
                                       block_size=BS, **kwargs)  # fmt: skip


def test_a_local_copy_is_made_once_and_handed_out_again(srv: RangeServer, cache_dir: str) -> None:
    fs = make(cache_dir)
    url = f"{srv.url}/a.bin"
    with fs.open(url) as f:
        f.seek(MiB)
        f.read(MiB)  # a middle part held already: the copy takes it from memory
    sent = srv.counts()["bytes_sent"]
    path = fs.open_local(url)
    with open(path, "rb") as f:
        assert f.read() == srv.data("/a.bin")
    assert srv.counts()["bytes_sent"] - sent < len(srv.data("/a.bin"))
    assert path.startswith(os.path.realpath(cache_dir)) and os.stat(path).st_mode & 0o077 == 0
    assert fs.open_local(url) == path and fs.stats().disk.lmade == 1
    assert fs.stats().disk.lhit == 1
    chained = fsspec.open_local(f"netcache::{url}",
                                netcache={"cache_dir": cache_dir, "block_size": BS})  # fmt: skip
    assert chained == path


def test_ordinary_reads_make_no_copy(srv: RangeServer, cache_dir: str) -> None:
    pandas = pytest.importorskip("pandas")
    fs = make(cache_dir)
    url = f"{srv.url}/t.csv"
    with fs.open(url) as f:
        assert f.read(4) == b"x,y\n"
    frame = pandas.read_csv(f"netcache::{url}",
                            storage_options={"netcache": {"cache_dir": cache_dir,
                                                          "block_size": BS}})  # fmt: skip
    assert len(frame) == 2000
    assert fs.stats().disk.lmade == 0 and fs.stats().disk.lhit == 0


@pytest.mark.parametrize("damage", ["flip", "truncate", "link"])
def test_a_damaged_copy_is_never_handed_out(srv: RangeServer, cache_dir: str, damage: str,
                                            tmp_path: Any) -> None:  # fmt: skip
    fs = make(cache_dir)
    url = f"{srv.url}/a.bin"
    path = fs.open_local(url)
    if damage == "flip":
        with open(path, "r+b") as f:
            f.seek(12345)
            byte = f.read(1)
            f.seek(12345)
            f.write(bytes([byte[0] ^ 1]))
    elif damage == "truncate":
        os.truncate(path, 1000)
    else:  # another file planted under the copy's name
        planted = tmp_path / "planted"
        planted.write_bytes(b"p" * len(srv.data("/a.bin")))
        os.unlink(path)
        os.symlink(planted, path)
    again = fs.open_local(url)
    assert not os.path.islink(again)
    with open(again, "rb") as f:
        assert f.read() == srv.data("/a.bin")
    assert fs.stats().disk.lmade == 2


def test_a_changed_file_gets_a_new_copy_and_the_old_one_goes(srv: RangeServer,
                                                             cache_dir: str) -> None:  # fmt: skip
    fs = make(cache_dir, check_interval=0)
    url = f"{srv.url}/b.bin"
    old = fs.open_local(url)
    srv.put("b.bin", payload(MiB, 9))
    new = fs.open_local(url)
    assert new != old and not os.path.exists(old)
    with open(new, "rb") as f:
        assert f.read() == payload(MiB, 9)
    fs.invalidate(url)
    assert not os.path.exists(new)


def test_copies_count_in_the_disk_limit_and_are_culled(srv: RangeServer, cache_dir: str) -> None:
    fs = make(cache_dir, disk_limit="5MiB", memory_limit="16MiB")
    first = fs.open_local(f"{srv.url}/a.bin")  # 3 MiB
    assert fs.flush(30)
    second = fs.open_local(f"{srv.url}/b.bin")  # 2 MiB more: something older goes
    assert fs.flush(30)
    usage = fs.disk_usage()
    assert usage is not None and usage.used <= 5 * MiB and usage.culls >= 1
    assert os.path.exists(second) and not os.path.exists(first)


def test_open_local_needs_a_folder(srv: RangeServer) -> None:
    fs = make(False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cache_dir=<a path>"):
        fs.open_local(f"{srv.url}/a.bin")
