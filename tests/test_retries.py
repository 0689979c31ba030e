"""Transient remote errors are retried the same way on every path, counted, pinned to
the version of the first try; 4xx answers are raised at once."""

from __future__ import annotations

import pytest
from conftest import BS, MiB, http_fs, payload

import netcache
from netcache.retry import Retries, is_transient
from netcache.testing.httpserver import RangeServer

DATA = payload(4 * MiB, 31)


@pytest.fixture
def remote() -> RangeServer:
    with RangeServer({"f.bin": DATA, "g.bin": DATA[::-1]}) as srv:
        yield srv  # type: ignore[misc]


def _read_all(fs: netcache.NetCacheFileSystem, url: str) -> bytes:
    with fs.open(url) as f:
        return b"".join(iter(lambda: f.read(MiB), b""))


@pytest.mark.parametrize("failure", [503, 500])
@pytest.mark.parametrize(
    "path", ["cold open", "open of a known version", "cat_file", "cat_ranges", "read-ahead",
             "version check"],
)  # fmt: skip
def test_a_transient_error_is_retried_on_every_path(
    remote: RangeServer, cache_dir: str, path: str, failure: object
) -> None:
    url, other = f"{remote.url}/f.bin", f"{remote.url}/g.bin"
    fs = http_fs(cache_dir, readahead=path == "read-ahead",
                 check_interval=0 if path == "version check" else None)  # fmt: skip
    if path in ("open of a known version", "read-ahead", "version check"):
        assert fs.cat_file(url, 0, 10) == DATA[:10]  # the version is known
    # fsspec's info() asks again with a GET when its HEAD fails: one failure its own
    remote.fail_next(2 if path == "version check" else 1, failure)  # type: ignore[arg-type]
    if path in ("cold open", "open of a known version", "read-ahead", "version check"):
        assert _read_all(fs, url) == DATA
    elif path == "cat_file":
        assert fs.cat_file(url, 2 * MiB, 3 * MiB) == DATA[2 * MiB : 3 * MiB]
    else:
        assert fs.cat_ranges([url, other], [0, BS], [BS, 3 * BS]) == [
            DATA[:BS],
            DATA[::-1][BS : 3 * BS],
        ]
    st = fs.stats()
    assert st.retrievals.retry == 1 and st.retrievals.err == 0


@pytest.mark.parametrize("path", ["open of a known version", "cat_file", "cat_ranges"])
def test_resets_are_retried(remote: RangeServer, cache_dir: str, path: str) -> None:
    url, other = f"{remote.url}/f.bin", f"{remote.url}/g.bin"
    fs = http_fs(cache_dir, readahead=False, check_interval=None)
    assert fs.cat_file(url, 0, 10) == DATA[:10] and fs.cat_file(other, 0, 10)
    # three connections closed without an answer: aiohttp opens a new one at most once
    # for a request whose kept connection was closed; the rest reach netcache's retries
    remote.fail_next(3, "reset")
    if path == "open of a known version":
        assert _read_all(fs, url) == DATA
    elif path == "cat_file":
        assert fs.cat_file(url, 2 * MiB, 3 * MiB) == DATA[2 * MiB : 3 * MiB]
    else:
        assert fs.cat_ranges([url, other], [2 * MiB, 2 * MiB], [3 * MiB, 3 * MiB]) == [
            DATA[2 * MiB : 3 * MiB],
            DATA[::-1][2 * MiB : 3 * MiB],
        ]
    st = fs.stats()
    assert st.retrievals.retry >= 1 and st.retrievals.err == 0


@pytest.mark.parametrize("status", [404, 403, 416])
def test_a_4xx_is_raised_at_once(remote: RangeServer, cache_dir: str, status: int) -> None:
    url = f"{remote.url}/f.bin"
    fs = http_fs(cache_dir, check_interval=None, readahead=False)
    assert fs.cat_file(url, 0, 10) == DATA[:10]
    remote.fail_next(1, status)
    remote.reset_counts()
    with pytest.raises(Exception) as raised:
        fs.cat_file(url, 2 * MiB, 3 * MiB)
    assert not isinstance(raised.value, AssertionError)
    assert remote.gets == 1 and fs.stats().retrievals.retry == 0


def test_retries_are_bounded_and_can_be_turned_off(remote: RangeServer, cache_dir: str) -> None:
    url = f"{remote.url}/f.bin"
    fs = http_fs(cache_dir, check_interval=None, readahead=False)
    assert fs.cat_file(url, 0, 10) == DATA[:10]
    remote.fail_next(4, 503)  # one more than the default 3 retries
    remote.reset_counts()
    with pytest.raises(Exception) as raised:
        fs.cat_file(url, 2 * MiB, 3 * MiB)
    assert is_transient(raised.value) and remote.gets == 4
    assert fs.stats().retrievals.retry == 3
    netcache.close_all()
    netcache.NetCacheFileSystem.clear_instance_cache()
    once = http_fs(cache_dir, check_interval=None, readahead=False, retries=0)
    assert once.cat_file(url, 0, 10) == DATA[:10]
    remote.fail_next(1, 503)
    with pytest.raises(Exception):  # noqa: B017
        once.cat_file(url, 3 * MiB, 4 * MiB)
    with pytest.raises(ValueError, match="retries="):
        http_fs(cache_dir, retries=-1)


def test_a_retry_is_pinned_to_the_first_try_s_version(remote: RangeServer, cache_dir: str) -> None:
    url = f"{remote.url}/f.bin"
    fs = http_fs(cache_dir, check_interval=None, readahead=False)
    with fs.open(url) as f:
        assert f.read(10) == DATA[:10]
        remote.fail_next(1, 503)
        remote.after_failure = lambda: remote.put("f.bin", DATA[::-1])  # changed meanwhile
        f.seek(2 * MiB)
        with pytest.raises(netcache.FileChangedError):
            f.read(MiB)  # the retry asks for the first try's version: never the other one
    assert fs.stats().retrievals.retry == 1


def test_a_target_that_retries_itself_is_not_retried_on_top() -> None:
    import s3fs

    retries = Retries(3, lambda exc: None)
    assert retries.for_target(s3fs.S3FileSystem(anon=True, skip_instance_cache=True)).attempts == 0
    http = netcache.NetCacheFileSystem(target_protocol="http", cache_dir=False).fs
    assert retries.for_target(http).attempts == 3
