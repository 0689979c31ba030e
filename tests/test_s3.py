"""A second real target: an S3 API server on loopback (moto's server mode) through s3fs."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import fsspec
import pytest
from conftest import BS, payload

import netcache
from netcache.firstlook import FIRST_LOOK_BYTES

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


def test_missing_key_is_file_not_found(s3: dict, tmp_path, calls) -> None:  # type: ignore[type-arg, no-untyped-def]
    fs = make(s3, str(tmp_path / "c"))
    with pytest.raises(FileNotFoundError):
        fs.cat_file(f"{s3['bucket']}/nope")
    with pytest.raises(FileNotFoundError):
        fs.open(f"{s3['bucket']}/nope")
    # each a GetObject answered NoSuchKey and a listing (is it a folder?), as many
    # requests as s3fs's info() makes (a HEAD and a listing)
    methods = [method for method, _ in calls]
    assert methods == ["get_object", "list_objects_v2"] * 2
    fs.fs.pipe_file(f"{s3['bucket']}/folder/inside.bin", b"x")
    with pytest.raises(IsADirectoryError):
        fs.open(f"{s3['bucket']}/folder")


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
    first = FIRST_LOOK_BYTES
    data = payload(first + 6 * BS, 9)
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
            fs.cat_file("away/f.bin", first + 4 * BS, first + 5 * BS)
        assert not isinstance(info.value, AssertionError)
        # the two pages read first, fetched with the version, and nothing more
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


# -- one request per open and per fetch (netcache.s3) -------------------------------------


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    """The S3 API calls s3fs makes from now on, with their arguments."""
    made: list[tuple[str, dict]] = []  # type: ignore[type-arg]
    call = s3fs.S3FileSystem._call_s3

    async def recording(self, method, *args, **kwargs):  # type: ignore[no-untyped-def]
        made.append((method, kwargs))
        return await call(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", recording)
    return made


def test_a_small_object_is_one_get_object_and_no_head(s3: dict, tmp_path, calls) -> None:  # type: ignore[type-arg, no-untyped-def]
    data = payload(3 * BS + 17, 21)
    path = f"{s3['bucket']}/small.bin"
    fs = make(s3, str(tmp_path / "c"))
    fs.fs.pipe_file(path, data)
    calls.clear()
    with fs.open(path) as f:
        assert f.read() == data
    assert [method for method, _ in calls] == ["get_object"]
    assert calls[0][1]["Range"] == f"bytes=0-{FIRST_LOOK_BYTES - 1}"
    assert fs.cat_file(path) == data and len(calls) == 1  # served from pages
    assert fs.stats().pages.n == 4


def test_cold_cat_ranges_is_get_objects_only(s3: dict, tmp_path, calls) -> None:  # type: ignore[type-arg, no-untyped-def]
    data = payload(20 * BS + 3, 29)
    path = f"{s3['bucket']}/ranges-cold.bin"
    fs = make(s3, str(tmp_path / "c"), readahead=False)
    fs.fs.pipe_file(path, data)
    calls.clear()
    ranges = [(BS + 5, BS + 50), (9 * BS - 1, 9 * BS + 1), (len(data) - 2, len(data))]
    starts, ends = [a for a, _ in ranges], [b for _, b in ranges]
    assert fs.cat_ranges([path] * 3, starts, ends) == [data[a:b] for a, b in ranges]
    # one GetObject a run of pages, and no HeadObject: the answers named the version
    assert sorted(call["Range"] for _, call in calls) == sorted([
        f"bytes={BS}-{2 * BS - 1}", f"bytes={8 * BS}-{10 * BS - 1}",
        f"bytes={20 * BS}-{21 * BS - 1}",
    ])  # fmt: skip
    assert [method for method, _ in calls] == ["get_object"] * 3
    assert fs.cat_ranges([path] * 3, starts, ends) == [data[a:b] for a, b in ranges]
    assert len(calls) == 3


def test_cat_of_many_cold_objects_is_one_get_object_each(s3: dict, tmp_path, calls) -> None:  # type: ignore[type-arg, no-untyped-def]
    fs = make(s3, str(tmp_path / "c"))
    objects = {f"{s3['bucket']}/many/{i}.bin": payload(BS + 11 * i, 80 + i) for i in range(5)}
    for path, data in objects.items():
        fs.fs.pipe_file(path, data)
    calls.clear()
    missing = f"{s3['bucket']}/many/none.bin"
    got = fs.cat([*objects, missing], on_error="return")
    assert {p: got[p] for p in objects} == objects
    assert isinstance(got[missing], FileNotFoundError)
    # a GetObject an object (the missing one: and a listing, as info() would), no HEAD
    methods = sorted(method for method, _ in calls)
    assert methods == ["get_object"] * 6 + ["list_objects_v2"]
    calls.clear()
    assert fs.cat(list(objects)) == objects and calls == []


def test_the_first_look_names_the_version_a_head_names(s3: dict, tmp_path) -> None:  # type: ignore[type-arg, no-untyped-def]
    from netcache.cookie import version_token
    from netcache.firstlook import first_look

    target = s3fs.S3FileSystem(**{k: v for k, v in s3.items() if k != "bucket"})
    for versioned in (False, True):
        bucket = f"{s3['bucket']}-v" if versioned else s3["bucket"]
        if versioned:
            target.mkdir(bucket)
            target.call_s3("put_bucket_versioning", Bucket=bucket,
                           VersioningConfiguration={"Status": "Enabled"})  # fmt: skip
        path = f"{bucket}/obj.bin"
        data = payload(2 * BS + 7, 22)  # less than asked for, and not whole pages
        target.pipe_file(path, data)
        looked = first_look(target, path, [(0, FIRST_LOOK_BYTES)], BS)
        assert looked is not None
        info, [(start, body)] = looked
        assert start == 0
        head = target.info(path, refresh=True)
        assert [len(page) for page in body.pages] == [BS, BS, 7]
        assert b"".join(body.pages) == data and info["size"] == len(data) == head["size"]
        assert version_token(info) == version_token(head)
        assert (info["VersionId"] is not None) == versioned


def test_a_recheck_finds_the_first_look_s_version(s3: dict, tmp_path, calls) -> None:  # type: ignore[type-arg, no-untyped-def]
    data = payload(5 * BS, 23)
    path = f"{s3['bucket']}/recheck.bin"
    fs = make(s3, str(tmp_path / "c"), check_interval=0)  # every open checks again
    fs.fs.pipe_file(path, data)
    assert fs.cat_file(path) == data
    fs.fs.invalidate_cache()  # s3fs's own listing cache: the check asks S3 itself
    calls.clear()
    assert fs.cat_file(path) == data
    # the same version: checked with a HEAD, and no page fetched again
    assert [method for method, _ in calls] == ["head_object"]


def test_fetches_are_pinned_with_if_match_not_a_head_after(s3: dict, tmp_path, calls) -> None:  # type: ignore[type-arg, no-untyped-def]
    data = payload(FIRST_LOOK_BYTES + 5 * BS + 3, 24)
    path = f"{s3['bucket']}/big.bin"
    fs = make(s3, str(tmp_path / "c"), readahead=False)
    fs.fs.pipe_file(path, data)
    etag = fs.fs.info(path)["ETag"]
    calls.clear()
    with fs.open(path) as f:
        f.seek(FIRST_LOOK_BYTES + BS)
        assert f.read(2 * BS) == data[FIRST_LOOK_BYTES + BS : FIRST_LOOK_BYTES + 3 * BS]
        ranges = [(0, 10), (FIRST_LOOK_BYTES + 3 * BS + 5, len(data))]
        assert fs.cat_ranges([path] * 2, [a for a, _ in ranges], [b for _, b in ranges]) == [
            data[a:b] for a, b in ranges
        ]
    methods = [method for method, _ in calls]
    assert "head_object" not in methods and methods.count("get_object") == 3
    pinned = [kwargs for method, kwargs in calls[1:]]
    assert all(kwargs["IfMatch"] == etag for kwargs in pinned)
    assert pinned[0]["Range"] == f"bytes={FIRST_LOOK_BYTES + BS}-{FIRST_LOOK_BYTES + 3 * BS - 1}"


def test_answers_go_into_pages_as_they_arrive(s3: dict, tmp_path, monkeypatch) -> None:  # type: ignore[type-arg, no-untyped-def]
    """A ranged answer is read at most a page at a time into its pages, never joined
    into one ``bytes`` of the whole range first."""
    from netcache.buffers import PageFiller

    fed: list[int] = []
    feed = PageFiller.feed

    def counted(self: PageFiller, chunk: bytes) -> None:
        fed.append(len(chunk))
        feed(self, chunk)

    monkeypatch.setattr(PageFiller, "feed", counted)
    data = payload(FIRST_LOOK_BYTES + 6 * BS + 5, 27)
    path = f"{s3['bucket']}/streamed.bin"
    fs = make(s3, str(tmp_path / "c"), readahead=False)
    fs.fs.pipe_file(path, data)
    fs.info(path)
    fed.clear()
    lo, hi = FIRST_LOOK_BYTES + BS // 2, len(data)
    assert fs.cat_file(path, lo, hi) == data[lo:hi]
    assert sum(fed) == len(data) - FIRST_LOOK_BYTES  # the pages of the range, once
    assert len(fed) >= 6 and max(fed) <= BS


def test_an_object_replaced_while_open_is_never_read_in_part(s3: dict, tmp_path) -> None:  # type: ignore[type-arg, no-untyped-def]
    old = payload(FIRST_LOOK_BYTES + 4 * BS, 25)
    new = payload(FIRST_LOOK_BYTES + 4 * BS, 26)
    path = f"{s3['bucket']}/replaced.bin"
    fs = make(s3, str(tmp_path / "c"), readahead=False)
    fs.fs.pipe_file(path, old)
    with fs.open(path) as f:
        assert f.read(BS) == old[:BS]
        fs.fs.pipe_file(path, new)
        f.seek(FIRST_LOOK_BYTES)
        with pytest.raises(netcache.FileChangedError):
            f.read(BS)
    pages = fs.stats().pages.n
    assert pages == FIRST_LOOK_BYTES // BS  # the old version's first look only
    assert fs.stats().retrievals.err >= 1


def test_an_empty_object_opens_through_info(s3: dict, tmp_path, calls) -> None:  # type: ignore[type-arg, no-untyped-def]
    path = f"{s3['bucket']}/empty.bin"
    fs = make(s3, str(tmp_path / "c"))
    fs.fs.pipe_file(path, b"")
    fs.fs.invalidate_cache()
    calls.clear()
    with fs.open(path) as f:
        assert f.read() == b""
    # S3 answers a range of an empty object with an error: info() is asked then
    assert [method for method, _ in calls] == ["get_object", "head_object"]


def test_many_ranges_go_out_a_bounded_number_at_a_time(s3: dict, tmp_path, monkeypatch) -> None:  # type: ignore[type-arg, no-untyped-def]
    import asyncio

    from netcache import s3 as s3_requests

    data = payload(FIRST_LOOK_BYTES + 64 * BS, 27)
    path = f"{s3['bucket']}/ranges.bin"
    fs = make(s3, str(tmp_path / "c"), readahead=False)
    fs.fs.pipe_file(path, data)
    monkeypatch.setattr(s3_requests, "MAX_CONCURRENT_REQUESTS", 4)
    inflight, most = 0, 0
    call = s3fs.S3FileSystem._call_s3

    async def counting(self, method, *args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal inflight, most
        inflight += 1
        most = max(most, inflight)
        try:
            await asyncio.sleep(0.01)  # long enough for the others to pile up
            return await call(self, method, *args, **kwargs)
        finally:
            inflight -= 1

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counting)
    # 30 ranges past the first look, none adjacent: 30 requests in one call
    starts = [FIRST_LOOK_BYTES + 2 * i * BS + 7 for i in range(30)]
    ends = [start + BS // 2 for start in starts]
    fs.cat_file(path, 0, 10)  # the first look, alone
    most = 0
    assert fs.cat_ranges([path] * 30, starts, ends) == [
        data[a:b] for a, b in zip(starts, ends, strict=True)
    ]
    assert most == 4


def test_a_body_that_breaks_off_is_asked_for_again(s3: dict, tmp_path, monkeypatch) -> None:  # type: ignore[type-arg, no-untyped-def]
    from aiohttp import ClientPayloadError

    data = payload(FIRST_LOOK_BYTES + 3 * BS, 28)
    path = f"{s3['bucket']}/broken.bin"
    fs = make(s3, str(tmp_path / "c"), readahead=False)
    fs.fs.pipe_file(path, data)
    fs.cat_file(path, 0, 10)
    call = s3fs.S3FileSystem._call_s3
    gets = 0

    class Breaking:  # the connection drops after the first bytes, once
        def __init__(self, body):  # type: ignore[no-untyped-def]
            self.body = body
            self.reads = 0

        async def read(self, amt=None):  # type: ignore[no-untyped-def]
            self.reads += 1
            if self.reads == 1:
                return await self.body.read(1000)
            raise ClientPayloadError("connection lost mid-body")

        def close(self) -> None:
            self.body.close()

    async def breaking_once(self, method, *args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal gets
        answer = await call(self, method, *args, **kwargs)
        if method == "get_object":
            gets += 1
            if gets == 1:
                answer["Body"] = Breaking(answer["Body"])
        return answer

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", breaking_once)
    got = fs.cat_file(path, FIRST_LOOK_BYTES, FIRST_LOOK_BYTES + 2 * BS)
    assert got == data[FIRST_LOOK_BYTES : FIRST_LOOK_BYTES + 2 * BS] and gets == 2
    assert fs.stats().retrievals.err == 0
