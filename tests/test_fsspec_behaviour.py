"""netcache used through fsspec by code that never knew it was there: paths are the
target's, writes are the target's (transactions too) and are seen through the cache
when they land, and the target's other methods are reachable by name."""

from __future__ import annotations

import os
from typing import Any

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

import netcache
from netcache.passthrough import PAIR_WRITES, PATH_READS, PATH_WRITES

BS = 4096


def over(target: Any, **kwargs: Any) -> netcache.NetCacheFileSystem:
    kwargs.setdefault("check_interval", None)  # only invalidation can show a change
    return netcache.NetCacheFileSystem(fs=target, cache_dir=False, block_size=BS,
                                       memory_monitor=False, skip_instance_cache=True,
                                       **kwargs)  # fmt: skip


@pytest.fixture
def memory() -> Any:
    m = fsspec.filesystem("memory", skip_instance_cache=True)
    m.store.clear()
    m.pseudo_dirs.clear()
    m.pseudo_dirs.append("")
    yield m
    m.store.clear()


def test_paths_are_the_targets(memory: Any, tmp_path: Any) -> None:
    fs = over(memory)
    memory.pipe({"/s/a": b"A", "/s/sub/b": b"B"})
    assert fs._strip_protocol("memory://afile") == "/afile"
    assert fs._strip_protocol("netcache::memory://afile") == "/afile"
    assert fs.cat(["memory://s/a", "/s/sub/b"]) == {"/s/a": b"A", "/s/sub/b": b"B"}
    fs.get("memory://s", str(tmp_path / "got"), recursive=True)
    assert (tmp_path / "got" / "sub" / "b").read_bytes() == b"B"
    fs.cp("memory://s", "/copy", recursive=True)
    assert memory.cat_file("/copy/sub/b") == b"B"  # not /copy/s/... nor the whole path
    name = fsspec.core.OpenFile(fs, "/s/a").full_name
    assert name == "netcache::memory:///s/a"
    same = {"cache_dir": False, "block_size": BS, "memory_monitor": False}
    with fsspec.open(name, "rb", netcache=same) as f:
        assert f.read() == b"A"


def test_rm_recursive_on_a_local_target_and_its_pages_go(tmp_path: Any) -> None:
    fs = over(fsspec.filesystem("file"))
    folder = tmp_path / "d"
    (folder / "inner").mkdir(parents=True)
    (folder / "inner" / "x").write_bytes(b"x" * 10)
    assert fs.cat_file(str(folder / "inner" / "x")) == b"x" * 10
    fs.rm(str(folder), recursive=True)
    assert not folder.exists()
    with pytest.raises(FileNotFoundError):
        fs.cat_file(str(folder / "inner" / "x"))


def test_mv_onto_an_existing_destination_drops_what_lands_there(memory: Any) -> None:
    fs = over(memory)
    memory.pipe({"/src/x": b"new bytes", "/dst/src/x": b"old bytes", "/dst/keep": b"k"})
    assert fs.cat_file("/dst/src/x") == b"old bytes"  # cached, never checked again
    fs.mv("/src", "/dst", recursive=True)
    assert memory.cat_file("/dst/src/x") == b"new bytes"
    assert fs.cat_file("/dst/src/x") == b"new bytes"


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_a_transaction_holds_writes_until_commit(kind: str, memory: Any, tmp_path: Any) -> None:
    target = memory if kind == "memory" else fsspec.filesystem("file")
    base = "/t" if kind == "memory" else str(tmp_path)
    fs = over(target)
    path = f"{base}/f"
    fs.pipe_file(path, b"before")
    assert fs.cat_file(path) == b"before"
    with fs.transaction:
        with fs.open(path, "wb") as f:
            f.write(b"written in a transaction")
        fs.pipe_file(f"{base}/g", b"piped in a transaction")
        # not landed yet: the target and the cache both still say "before"
        assert target.cat_file(path) == b"before" and fs.cat_file(path) == b"before"
        assert not target.exists(f"{base}/g")
    assert fs.cat_file(path) == b"written in a transaction"
    assert fs.cat_file(f"{base}/g") == b"piped in a transaction"
    with pytest.raises(RuntimeError, match="changed my mind"), fs.transaction:
        with fs.open(path, "wb") as f:
            f.write(b"never")
        fs.pipe_file(f"{base}/h", b"never")
        raise RuntimeError("changed my mind")
    assert fs.cat_file(path) == b"written in a transaction"
    assert not target.exists(f"{base}/h") and not fs._intrans and not target._intrans


def test_update_in_place_and_files_opened_for_writing(tmp_path: Any) -> None:
    fs = over(fsspec.filesystem("file"))
    path = str(tmp_path / "u")
    fs.pipe_file(path, b"0123456789")
    assert fs.cat_file(path) == b"0123456789"
    with fs.open(path, "r+b") as f:
        assert (f.name, f.path, f.fs, f.mode) == (path, path, fs, "r+b")
        assert f.seekable() and f.readable() and f.writable()
        f.seek(4)
        f.write(b"ab")
        f.seek(0)
        assert f.read(3) == b"012"
        assert fs.cat_file(path) == b"0123456789"  # not landed: the cache still serves
    assert fs.cat_file(path) == b"0123ab6789"
    fs.touch(path, truncate=False)  # the local target updates the time, keeps the bytes
    assert fs.cat_file(path) == b"0123ab6789"


class Recording(MemoryFileSystem):
    """A memory filesystem that records which of the passed-through methods it got."""

    protocol = "recording"
    calls: list[tuple[str, tuple[Any, ...]]] = []


def _recorder(name: str) -> Any:
    def method(self: Any, *args: Any, **kwargs: Any) -> str:
        Recording.calls.append((name, args))
        return f"{name} of the target"

    return method


for _name in (*PATH_READS, *PATH_WRITES, *PAIR_WRITES):
    setattr(Recording, _name, _recorder(_name))


def test_every_passed_through_name_reaches_the_target() -> None:
    fs = over(Recording(skip_instance_cache=True))
    for name in PATH_READS + PATH_WRITES:
        Recording.calls.clear()
        assert getattr(fs, name)("netcache::memory://some/file") == f"{name} of the target"
        assert Recording.calls == [(name, ("/some/file",))], name
    for name in PAIR_WRITES:
        Recording.calls.clear()
        assert getattr(fs, name)("/a", "/b") == f"{name} of the target"
        assert Recording.calls == [(name, ("/a", "/b"))], name


def test_ukey_checksum_and_links_are_the_targets(tmp_path: Any) -> None:
    local = fsspec.filesystem("file")
    fs = over(local)
    path = str(tmp_path / "k")
    fs.pipe_file(path, b"k" * 100)
    assert fs.ukey(path) == local.ukey(path) and fs.checksum(path) == local.checksum(path)
    fs.symlink(path, str(tmp_path / "link"))
    assert fs.islink(str(tmp_path / "link")) and os.readlink(tmp_path / "link") == path
    fs.chmod(path, 0o600)
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_conflicting_settings_are_said_as_the_user_wrote_them() -> None:
    from netcache import process
    from netcache.config import CacheConfig

    none = CacheConfig.build(cache_dir=False, memory_monitor=False)
    default = CacheConfig.build(cache_dir=False, default_monitor=process.default_monitor)
    said = default.differences(none)["memory_monitor"]
    assert said == ("memory_monitor=False (already in use) and "
                    "memory_monitor=None (the process-wide monitor)")  # fmt: skip
