"""The cache folder belongs to its user: links are never followed, special files never
opened, metadata is data and never structure, and folders other users can write are
refused. Hostile neighbours are real processes under another user id."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import traceback
from collections.abc import Iterator

import pytest
from conftest import BS, MiB, http_fs

import netcache
from netcache.backends.base import encode_meta
from netcache.backends.segments import LAYOUT
from netcache.cli import clear as cli_clear
from netcache.cli import stats as cli_stats
from netcache.errors import UntrustedFolderError
from netcache.testing.httpserver import RangeServer

NOBODY = 65534  # the other user: a uid no file of the test belongs to


def _files(cache_dir: str) -> str:
    return os.path.join(cache_dir, LAYOUT, "files")


def _cached(server: RangeServer, cache_dir: str) -> tuple[str, bytes, str]:
    """big.bin read whole and stored; returns its URL, bytes and file folder."""
    url = f"{server.url}/big.bin"
    data = server.data("/big.bin")
    fs = http_fs(cache_dir, check_interval=None)
    assert fs.cat_file(url) == data and fs.flush(30)
    fid = fs.context.cookies.file_id(url)
    netcache.close_all()
    netcache.NetCacheFileSystem.clear_instance_cache()
    return url, data, os.path.join(_files(cache_dir), fid[:2], fid)


def _segments(folder: str) -> list[str]:
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".seg"))


# -- links ------------------------------------------------------------------------------


def test_write_back_never_writes_through_a_link(
    server: RangeServer, cache_dir: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    url, data, folder = _cached(server, cache_dir)
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious" * 1000)
    segment = _segments(folder)[0]
    os.unlink(segment)
    os.symlink(victim, segment)  # a segment replaced by a link to another file
    fs = http_fs(cache_dir, check_interval=None)
    assert fs.cat_file(url) == data  # its pages fetched again, and stored
    assert fs.flush(30)
    assert victim.read_bytes() == b"precious" * 1000
    assert stat.S_ISREG(os.lstat(segment).st_mode)  # the link went; the pages are stored
    netcache.close_all()
    netcache.NetCacheFileSystem.clear_instance_cache()
    server.reset_counts()
    assert http_fs(cache_dir, check_interval=None).cat_file(url) == data
    assert server.gets == 0


def test_clear_never_deletes_through_a_link(server: RangeServer, cache_dir: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url, data, folder = _cached(server, cache_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    shard = os.path.dirname(folder)
    os.symlink(elsewhere, os.path.join(shard, "ff" * 16))  # a file folder that is a link
    os.symlink(elsewhere, os.path.join(_files(cache_dir), "zz"))  # a shard that is a link
    fs = http_fs(cache_dir, check_interval=None)
    assert fs.cat_file(url) == data
    fs.clear()
    assert (elsewhere / "keep.txt").read_text() == "mine"
    assert os.listdir(_files(cache_dir)) == []  # the links themselves are gone


def test_a_files_folder_replaced_by_a_link_is_refused(cache_dir: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    http_fs(cache_dir)  # makes the folder
    netcache.close_all()
    netcache.NetCacheFileSystem.clear_instance_cache()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(_files(cache_dir))
    os.symlink(elsewhere, _files(cache_dir))
    with pytest.raises(UntrustedFolderError, match="link"):
        http_fs(cache_dir)


# -- special files and damaged metadata ---------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("segment", ["fifo", "/dev/zero"])
def test_special_files_never_hang_or_exhaust(
    server: RangeServer, cache_dir: str, segment: str
) -> None:
    url, data, folder = _cached(server, cache_dir)
    (path,) = _segments(folder)
    os.unlink(os.path.join(folder, "meta.json"))
    os.mkfifo(os.path.join(folder, "meta.json"))  # a FIFO no one writes: open would block
    os.unlink(path)
    if segment == "fifo":
        os.mkfifo(path)
    else:
        os.symlink(segment, path)
    fs = http_fs(cache_dir, check_interval=None)
    assert fs.cat_file(url) == data
    assert fs.stats().disk.rerr >= 1  # the metadata (the segment is removed unread)
    assert fs.flush(30)
    assert stat.S_ISREG(os.lstat(path).st_mode)  # stored again, in a file of its own
    # the next process finds real files again
    netcache.close_all()
    netcache.NetCacheFileSystem.clear_instance_cache()
    server.reset_counts()
    assert http_fs(cache_dir, check_interval=None).cat_file(url) == data
    assert server.gets == 0


@pytest.mark.timeout(60)
def test_a_huge_metadata_file_is_not_read(server: RangeServer, cache_dir: str) -> None:
    url, data, folder = _cached(server, cache_dir)
    with open(os.path.join(folder, "meta.json"), "wb") as f:
        f.truncate(200 * MiB)  # sparse: 200 MB that reading whole would hold in memory
    fs = http_fs(cache_dir, check_interval=None)
    assert fs.cat_file(url) == data
    assert fs.stats().disk.rerr == 1


def _rewrite_meta(folder: str, **fields: object) -> None:
    path = os.path.join(folder, "meta.json")
    with open(path, "rb") as f:
        meta = json.loads(json.loads(f.read())["meta"])
    meta.update(fields)  # info still says the true size
    with open(path, "wb") as f:
        f.write(encode_meta(meta))  # a valid checksum: only the fields' check can refuse it


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [True, "3158073", 10**18, -1, 1.5, None])
def test_metadata_is_checked_as_data(server: RangeServer, cache_dir: str, size: object) -> None:
    url, data, folder = _cached(server, cache_dir)
    _rewrite_meta(folder, size=size)
    fs = http_fs(cache_dir, check_interval=None)
    server.reset_counts()
    assert fs.cat_file(url) == data
    assert fs.info(url)["size"] == len(data)
    assert fs.stats().disk.rerr == 1  # refused, counted, and the remote asked


def test_one_changed_digit_fails_the_checksum(server: RangeServer, cache_dir: str) -> None:
    url, data, folder = _cached(server, cache_dir)
    path = os.path.join(folder, "meta.json")
    with open(path, "rb") as f:
        blob = f.read()
    size = str(len(data)).encode()
    assert size in blob
    with open(path, "wb") as f:
        f.write(blob.replace(size, str(len(data) - 1000).encode()))
    fs = http_fs(cache_dir, check_interval=None)
    assert fs.cat_file(url) == data
    assert fs.stats().disk.rerr == 1


def test_the_command_line_survives_a_hostile_folder(
    server: RangeServer, cache_dir: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    _, data, folder = _cached(server, cache_dir)
    (segment,) = _segments(folder)
    os.symlink("/dev/zero", segment.replace(".0.seg", ".1.seg"))  # named as the next one
    os.mkfifo(segment.replace(".0.seg", ".2.seg"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    os.symlink(elsewhere, os.path.join(os.path.dirname(folder), "ee" * 16))
    with open(os.path.join(_files(cache_dir), "stray"), "wb") as f:
        f.truncate(200 * MiB)
    report = json.loads(cli_stats(cache_dir, as_json=True))
    assert report["total"]["files"] == 1
    assert report["total"]["pages"] == len(range(0, len(data), BS))
    os.unlink(os.path.join(folder, "meta.json"))
    os.mkfifo(os.path.join(folder, "meta.json"))
    report = json.loads(cli_stats(cache_dir, as_json=True))
    assert report["files"][0]["url"] is None  # the FIFO is passed over, never opened
    cli_clear(cache_dir, None, None, as_json=True)
    assert (elsewhere / "keep.txt").read_text() == "mine"


# -- other users --------------------------------------------------------------------------


@pytest.fixture
def shared_tmp() -> Iterator[str]:
    """A folder anyone may write, as /tmp is (sticky), outside pytest's private one."""
    top = tempfile.mkdtemp(prefix="netcache-shared-")
    os.chmod(top, 0o1777)
    yield top
    shutil.rmtree(top, ignore_errors=True)


def _stage_planted_cache(server: RangeServer, staging: str) -> str:
    """A cache folder whose first page of big.bin holds other bytes with a valid header
    and CRC32C; returns the URL."""
    url = f"{server.url}/big.bin"
    fs = http_fs(staging, check_interval=None)
    assert fs.cat_file(url, 0, BS) and fs.flush(30)
    cookie = fs.reader.pin_version(url)
    key = netcache.page.PageKey(cookie.file_id, cookie.version, 0)
    fs.context.backend.discard_page(key)
    fs.context.backend.store_page(key, b"planted!" * (BS // 8))
    netcache.close_all()
    netcache.NetCacheFileSystem.clear_instance_cache()
    for top, _, names in os.walk(staging):  # readable by the other user, who copies it
        for name in [*names, "."]:
            os.chmod(os.path.join(top, name), 0o755)
    return url


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another uid")


@needs_root
def test_a_folder_planted_by_another_user_is_refused(server: RangeServer, shared_tmp: str) -> None:
    cache_dir = os.path.join(shared_tmp, "x")
    url = _stage_planted_cache(server, os.path.join(shared_tmp, "staging"))
    # another local user, in a process of its own, makes the cache folder first with the
    # planted page in it, writable by all
    subprocess.run(["cp", "-r", os.path.join(shared_tmp, "staging"), cache_dir], check=True,
                   user=NOBODY, group=NOBODY, cwd=shared_tmp)  # fmt: skip
    subprocess.run(["chmod", "-R", "a+rwX", cache_dir], check=True, user=NOBODY)
    assert os.stat(cache_dir).st_uid == NOBODY
    with pytest.raises(UntrustedFolderError, match="belongs to user id 65534"):
        http_fs(cache_dir, check_interval=0)
    # made ours, but still writable by everyone: refused too
    for top, _, names in os.walk(cache_dir):
        for name in [*names, "."]:
            os.chown(os.path.join(top, name), 0, 0)
    with pytest.raises(UntrustedFolderError, match="can be written by other users"):
        http_fs(cache_dir, check_interval=0)
    # only once no one else can write it is it used: and then its bytes are this user's
    subprocess.run(["chmod", "-R", "go-w", cache_dir], check=True)
    assert http_fs(cache_dir, check_interval=None).cat_file(url, 0, 8) == b"planted!"


@needs_root
def test_a_group_folder_is_trusted_only_when_asked(server: RangeServer, shared_tmp: str) -> None:
    gid = 4242
    cache_dir = os.path.join(shared_tmp, "team")
    os.mkdir(cache_dir)
    os.chown(cache_dir, NOBODY, gid)
    os.chmod(cache_dir, 0o2770)  # the team's folder: its members write it
    with pytest.raises(UntrustedFolderError):
        http_fs(cache_dir)
    url = f"{server.url}/small.bin"
    fs = http_fs(cache_dir, trusted_group=gid, check_interval=None)
    assert fs.cat_file(url) == server.data("/small.bin") and fs.flush(10)
    for top, dirs, names in os.walk(cache_dir):
        for name in dirs:
            st = os.stat(os.path.join(top, name))
            assert st.st_gid == gid and stat.S_IMODE(st.st_mode) & 0o070 == 0o070
            assert not st.st_mode & 0o007
        for name in names:
            assert not os.stat(os.path.join(top, name)).st_mode & 0o007
    with pytest.raises(ValueError, match="trusted_group"):
        http_fs(cache_dir, trusted_group="no-such-group-here")


def test_a_folder_others_can_write_is_refused(cache_dir: str) -> None:
    os.makedirs(cache_dir)
    os.chmod(cache_dir, 0o777)
    with pytest.raises(UntrustedFolderError, match="can be written by other users"):
        http_fs(cache_dir)
    os.chmod(cache_dir, 0o700)
    assert http_fs(cache_dir).context.backend is not None


def test_a_cache_dir_under_a_regular_file_raises(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        http_fs(str(tmp_path / "f" / "cache"))


def test_pages_still_read_with_the_checks(server: RangeServer, cache_dir: str) -> None:
    url, data, _ = _cached(server, cache_dir)
    server.reset_counts()
    fs = http_fs(cache_dir, check_interval=None)
    assert fs.cat_file(url) == data and server.gets == 0
    assert fs.stats().retrievals.disk == len(range(0, len(data), BS))


# -- secrets ------------------------------------------------------------------------------

_SECRETS = ("s3cr3t", "SIGNATUREXYZ", "TOKENXYZ")


def _secret_url(server: RangeServer, name: str) -> str:
    base = server.url.replace("http://", "http://alice:s3cr3t@")
    return f"{base}/{name}?X-Amz-Signature=SIGNATUREXYZ&token=TOKENXYZ"


def _shown(exc: BaseException) -> str:
    """All a traceback of ``exc`` shows, its causes and contexts included."""
    return "".join(traceback.format_exception(exc))


def test_secrets_stay_out_of_netcache_s_messages(
    server: RangeServer, cache_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    fs = http_fs(cache_dir, check_interval=None, readahead=False)
    url = _secret_url(server, "big.bin")
    with fs.open(url) as f:
        assert f.read(10)
        server.put("big.bin", b"new" * MiB)  # the file changes while open
        f.seek(2 * MiB)
        with pytest.raises(netcache.FileChangedError) as changed:
            f.read(BS)
    server.put("short.bin", b"s" * (3 * BS))
    server.ignore_ranges, server.short_by = True, 100  # a whole file, cut short
    with pytest.raises(netcache.errors.ShortReadError) as short:
        fs.cat_file(_secret_url(server, "short.bin"), BS, 2 * BS)
    server.ignore_ranges = server.short_by = 0
    offline = http_fs(cache_dir, check_interval=0, offline=True, readahead=False)
    gone = _secret_url(server, "small.bin")
    assert offline.cat_file(gone, 0, 10)
    server.stop()
    with caplog.at_level(logging.WARNING, logger="netcache"):
        assert offline.cat_file(gone, 0, 10)  # served as cached, with a warning
    warned = [r.getMessage() for r in caplog.records if "could not be reached" in r.getMessage()]
    assert len(warned) == 1
    for text in (_shown(changed.value), _shown(short.value), warned[0]):
        assert "127.0.0.1" in text  # the URL is there, without userinfo and query
        assert not any(secret in text for secret in _SECRETS), text


# -- the remote ---------------------------------------------------------------------------


def test_a_range_that_starts_early_is_refused(server: RangeServer, cache_dir: str) -> None:
    url = f"{server.url}/big.bin"
    data = server.data("/big.bin")
    fs = http_fs(cache_dir, check_interval=None, readahead=False)
    assert fs.cat_file(url, 0, 10) == data[:10]  # the version is known
    server.range_shift = 4096  # other bytes, with a Content-Range that says so
    with pytest.raises(netcache.errors.ShortReadError, match="answered bytes"):
        fs.cat_file(url, 5 * BS, 6 * BS)
    server.range_shift = 0
    assert fs.cat_file(url, 5 * BS, 6 * BS) == data[5 * BS : 6 * BS]
    assert fs.flush(30)
    netcache.close_all()
    netcache.NetCacheFileSystem.clear_instance_cache()
    again = http_fs(cache_dir, check_interval=None, readahead=False)
    assert again.cat_file(url, 5 * BS, 6 * BS) == data[5 * BS : 6 * BS]  # and on disk


def test_a_server_that_ignores_if_match_cannot_mix_versions(
    server: RangeServer, cache_dir: str
) -> None:
    url = f"{server.url}/big.bin"
    data = server.data("/big.bin")
    fs = http_fs(cache_dir, check_interval=None, readahead=False)
    with fs.open(url) as f:
        assert f.read(BS) == data[:BS]
        server.put("big.bin", payload_of(len(data)))  # a new version, same size
        server.ignore_if_match = True
        resident = fs.stats().pages.n  # what the first look brought
        f.seek(30 * BS)  # past it
        with pytest.raises(netcache.FileChangedError, match="ETag"):
            f.read(BS)
    assert fs.stats().pages.n == resident  # nothing of the new version kept as the old one
    assert fs.flush(30) and fs.disk_usage().pages == resident


@pytest.mark.timeout(60)
def test_an_absurd_size_stalls_no_one(server: RangeServer, cache_dir: str) -> None:
    server.put("absurd.bin", b"a" * (2 * BS))
    server.claimed_sizes["/absurd.bin"] = 10**15  # what HEAD and Content-Range say
    fs = http_fs(cache_dir, check_interval=None)
    failed: list[BaseException] = []

    absurd = f"{server.url}/absurd.bin"
    assert fs.info(absurd)["size"] == 10**15

    def read_absurd() -> None:
        try:
            fs.cat_file(absurd)
        except OSError as exc:
            failed.append(exc)

    reader = threading.Thread(target=read_absurd)
    reader.start()
    small = server.data("/small.bin")
    for _ in range(20):  # another reader goes on meanwhile
        assert fs.cat_file(f"{server.url}/small.bin") == small
    reader.join(50)
    assert not reader.is_alive() and len(failed) == 1
    assert isinstance(failed[0], netcache.errors.ShortReadError)


def payload_of(n: int) -> bytes:
    return bytes(reversed(range(256))) * (n // 256) + b"x" * (n % 256)
