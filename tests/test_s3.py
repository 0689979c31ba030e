"""A second real target: an S3 API server on loopback (moto's server mode) through s3fs."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import fsspec
import pytest
from conftest import BS, payload

import netcache

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

SECRET = "S3CR3T-never-on-disk"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(endpoint: str) -> dict:  # type: ignore[type-arg]
    options = {
        "key": "AKIDTEST", "secret": SECRET, "endpoint_url": endpoint,
        "client_kwargs": {"region_name": "eu-west-1"}, "skip_instance_cache": True,
    }  # fmt: skip
    fs = s3fs.S3FileSystem(**options)
    bucket = f"nc-{random.randrange(1 << 30)}"
    fs.mkdir(bucket)
    options["bucket"] = bucket
    return options


def make(s3: dict, cache_dir: str, **kwargs: object) -> netcache.NetCacheFileSystem:  # type: ignore[type-arg]
    opts = {k: v for k, v in s3.items() if k != "bucket"}
    return netcache.NetCacheFileSystem(target_protocol="s3", target_options=opts,
                                       cache_dir=cache_dir, block_size=BS, **kwargs)  # fmt: skip


def test_random_reads_second_process_and_changes(s3: dict, tmp_path) -> None:  # type: ignore[type-arg, no-untyped-def]
    cache = str(tmp_path / "c")
    data = payload(5 * BS + 123, 5)
    path = f"{s3['bucket']}/dir/data.bin"
    fs = make(s3, cache, check_interval=0)
    fs.fs.pipe_file(path, data)
    rng = random.Random(3)
    with fs.open(path) as f:
        for _ in range(60):
            a = rng.randrange(len(data))
            n = rng.randrange(1, 2 * BS)
            f.seek(a)
            assert f.read(n) == data[a : a + n]
    for _ in range(60):
        a = rng.randrange(len(data))
        b = a + rng.randrange(1, 2 * BS)
        assert fs.cat_file(path, a, b) == data[a:b]
    assert fs.cat_file(path) == data
    assert fs.flush(30)
    # a new process's view: everything from the disk tier
    netcache.close_all()
    netcache.NetCacheFileSystem.clear_instance_cache()
    again = make(s3, cache, check_interval=None)
    assert again.cat_file(path) == data
    st = again.stats()
    assert st.retrievals.remote == 0 and st.retrievals.disk == 6
    # the object changes: with check_interval=0 the next read has the new bytes
    new = payload(4 * BS, 6)
    fs2 = make(s3, cache + "2", check_interval=0)
    fs2.fs.pipe_file(path, new)
    assert fs2.cat_file(path) == new


def test_chained_url_and_secrets(s3: dict, tmp_path) -> None:  # type: ignore[type-arg, no-untyped-def]
    cache = str(tmp_path / "c")
    data = payload(3 * BS, 8)
    opts = {k: v for k, v in s3.items() if k != "bucket"}
    path = f"{s3['bucket']}/x.bin"
    fsspec.filesystem("s3", **opts).pipe_file(path, data)
    with fsspec.open(f"netcache::s3://{path}", s3=opts,
                     netcache={"cache_dir": cache, "block_size": BS}) as f:  # fmt: skip
        assert f.read() == data
    netcache.close_all()
    for folder, _, names in os.walk(cache):
        for name in names:
            with open(os.path.join(folder, name), "rb") as fh:
                blob = fh.read()
            assert SECRET.encode() not in blob and b"AKIDTEST" not in blob


def test_missing_key_is_file_not_found(s3: dict, tmp_path) -> None:  # type: ignore[type-arg, no-untyped-def]
    fs = make(s3, str(tmp_path / "c"))
    with pytest.raises(FileNotFoundError):
        fs.cat_file(f"{s3['bucket']}/nope")


def test_s3_goes_away_and_comes_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The S3 server stops (connections refused) and restarts on the same port: the
    reader gets an error for bytes that are not cached, nothing wrong is cached, and the
    next read after the recovery is right."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    opts = {"key": "AKIDTEST", "secret": SECRET, "endpoint_url": f"http://{host}:{port}",
            "client_kwargs": {"region_name": "eu-west-1"},
            "config_kwargs": {"connect_timeout": 1, "read_timeout": 2,
                              "retries": {"max_attempts": 1}}}  # fmt: skip
    data = payload(6 * BS, 9)
    target = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
    target.mkdir("away")
    target.pipe_file("away/f.bin", data)
    fs = netcache.NetCacheFileSystem(target_protocol="s3", target_options=opts,
                                     cache_dir=str(tmp_path / "c"), block_size=BS,
                                     check_interval=None, readahead=False)  # fmt: skip
    try:
        assert fs.cat_file("away/f.bin", 0, 2 * BS) == data[: 2 * BS]
        server.stop()
        assert fs.cat_file("away/f.bin", 0, 2 * BS) == data[: 2 * BS]  # cached
        with pytest.raises(Exception) as info:
            fs.cat_file("away/f.bin", 4 * BS, 5 * BS)
        assert not isinstance(info.value, AssertionError)
        assert fs.stats().pages.n == 2 and fs.stats().retrievals.err >= 1
        server = moto_server.ThreadedMotoServer(ip_address=host, port=port, verbose=False)
        server.start()  # moto keeps its buckets in this process: the same data is back
        assert fs.cat_file("away/f.bin") == data
    finally:
        server.stop()


def test_endpoints_key_the_cache_and_secrets_do_not() -> None:
    from netcache.identity import target_identity

    def make_target(key: str, endpoint: str) -> object:
        return s3fs.S3FileSystem(key=key, secret=key + "-secret", endpoint_url=endpoint,
                                 skip_instance_cache=True)  # fmt: skip

    one_a, one_b = make_target("A", "http://one:9000"), make_target("B", "http://one:9000")
    two = make_target("A", "http://two:9000")
    assert target_identity(one_a) == target_identity(one_b)  # same data, other credentials
    assert target_identity(one_a) != target_identity(two)  # another server: never shared
