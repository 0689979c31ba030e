"""netcache under the data libraries: files they wrote, read back through ``netcache::`` URLs
and ``NetCacheFileSystem`` objects, from the HTTP test server and from an S3 API server
(moto) on loopback; results equal to reading the remote directly, and second passes that
fetch no file bytes."""

from __future__ import annotations

import io
import os
import random
from collections.abc import Iterator
from typing import Any

import fsspec
import pytest
from conftest import BS

import netcache
from netcache.testing.httpserver import RangeServer

np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
xr = pytest.importorskip("xarray")
zarr = pytest.importorskip("zarr")

ROWS = 200_000
ROW_GROUP = 50_000


@pytest.fixture(scope="module")
def frame() -> Any:
    rng = np.random.default_rng(7)
    return pd.DataFrame(
        {
            "id": np.arange(ROWS, dtype="int64"),
            "x": rng.random(ROWS),
            "y": rng.random(ROWS),
            "label": [f"row{i % 977}" for i in range(ROWS)],
        }
    )


@pytest.fixture(scope="module")
def files(frame: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Parquet (4 row groups) and CSV written by pandas/pyarrow, a Zarr v3 store by xarray."""
    out: dict[str, bytes] = {}
    buf = io.BytesIO()
    frame.to_parquet(buf, row_group_size=ROW_GROUP, compression=None)
    out["data/t.parquet"] = buf.getvalue()
    out["data/t.csv"] = frame.head(20_000).to_csv(index=False).encode()
    root = tmp_path_factory.mktemp("zarr") / "grid.zarr"
    grid = xr.Dataset(
        {"temp": (("x", "y"), np.random.default_rng(3).random((300, 200)))},
        coords={"x": np.arange(300), "y": np.arange(200)},
    )
    grid.to_zarr(root, mode="w", encoding={"temp": {"chunks": (100, 50)}}, consolidated=True)
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out["data/grid.zarr/" + os.path.relpath(path, root)] = f.read()
    return out


@pytest.fixture
def server(files: dict[str, bytes]) -> Iterator[RangeServer]:
    with RangeServer(files) as srv:
        yield srv


def data_gets(srv: RangeServer, files: dict[str, bytes]) -> int:
    """Requests for files that exist (probes for absent ones, such as zarr's v2 names,
    are not data requests)."""
    return sum(n for path, n in srv.requests_by_path.items() if path.lstrip("/") in files)


def restart() -> None:
    """A fresh cache context, as in a new process: only the disk tier survives."""
    netcache.close_all(drain_timeout=10)
    fsspec.AbstractFileSystem.clear_instance_cache()
    netcache.NetCacheFileSystem.clear_instance_cache()


def opts(cache_dir: str) -> dict[str, Any]:
    return {"netcache": {"cache_dir": cache_dir, "block_size": BS}}


# -- HTTP -------------------------------------------------------------------------------------


def test_pandas_parquet_and_csv_through_url(
    server: RangeServer, files: dict[str, bytes], frame: Any, cache_dir: str
) -> None:
    url = f"netcache::{server.url}/data/t.parquet"
    got = pd.read_parquet(url, storage_options=opts(cache_dir))
    pd.testing.assert_frame_equal(got, frame)
    # every byte fetched once: no whole-file downloads behind exists/isdir checks
    assert server.bytes_sent <= len(files["data/t.parquet"])
    csv = pd.read_csv(f"netcache::{server.url}/data/t.csv", storage_options=opts(cache_dir))
    pd.testing.assert_frame_equal(csv, frame.head(20_000))

    server.reset_counts()
    pd.testing.assert_frame_equal(pd.read_parquet(url, storage_options=opts(cache_dir)), frame)
    assert server.gets == 0  # second pass, same process: memory

    restart()
    server.reset_counts()
    pd.testing.assert_frame_equal(pd.read_parquet(url, storage_options=opts(cache_dir)), frame)
    csv = pd.read_csv(f"netcache::{server.url}/data/t.csv", storage_options=opts(cache_dir))
    pd.testing.assert_frame_equal(csv, frame.head(20_000))
    assert server.gets == 0  # new context: every page from the disk tier
    fs = netcache.NetCacheFileSystem(target_protocol="http", cache_dir=cache_dir, block_size=BS)
    assert fs.stats().retrievals.disk > 0 and fs.stats().retrievals.remote == 0
    # last, because fsspec's HTTP filesystem keeps listings that would hide the check above
    pd.testing.assert_frame_equal(pd.read_parquet(f"{server.url}/data/t.parquet"), got)


def _needed_pages(blob: bytes, columns: list[str], row_groups: list[int]) -> set[int]:
    """Pages holding the footer and the chosen column chunks: all a reader needs."""
    meta = pq.ParquetFile(io.BytesIO(blob)).metadata
    needed = set(range((len(blob) - 64 * 1024) // BS, (len(blob) - 1) // BS + 1))
    for rg in row_groups:
        for c in range(meta.num_columns):
            col = meta.row_group(rg).column(c)
            if col.path_in_schema not in columns:
                continue
            start = col.dictionary_page_offset or col.data_page_offset
            if col.dictionary_page_offset is not None:
                start = min(start, col.data_page_offset)
            end = start + col.total_compressed_size
            needed.update(range(start // BS, (end - 1) // BS + 1))
    return needed


@pytest.mark.parametrize("readahead", [True, False])
def test_pyarrow_subsets_fetch_only_their_pages(
    server: RangeServer, files: dict[str, bytes], frame: Any, cache_dir: str, readahead: bool
) -> None:
    blob = files["data/t.parquet"]
    # random_whole_below=False: a small file read at random is otherwise fetched whole
    fs = netcache.NetCacheFileSystem(target_protocol="http", cache_dir=cache_dir, block_size=BS,
                                     readahead=readahead, random_whole_below=False)  # fmt: skip
    path = f"{server.url}/data/t.parquet"
    table = pq.read_table(path, filesystem=fs, columns=["x"])
    assert table.column("x").to_pylist() == frame["x"].tolist()
    pages = _needed_pages(blob, ["x"], [0, 1, 2, 3])
    after_column = fs.stats().retrievals
    assert after_column.rbytes <= len(pages) * BS < len(blob) / 2
    assert after_column.remote <= len(pages)

    part = pq.ParquetFile(path, filesystem=fs).read_row_group(2, columns=["y", "id"])
    expected = frame.iloc[2 * ROW_GROUP : 3 * ROW_GROUP][["y", "id"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(part.to_pandas(), expected)
    pages |= _needed_pages(blob, ["y", "id"], [2])
    assert fs.stats().retrievals.remote <= len(pages)
    assert fs.stats().retrievals.rbytes <= len(pages) * BS


def test_xarray_and_zarr_through_url(
    server: RangeServer, files: dict[str, bytes], cache_dir: str
) -> None:
    url = f"{server.url}/data/grid.zarr"
    direct = xr.open_zarr(url).load()
    server.reset_counts()
    ds = xr.open_zarr(f"netcache::{url}", storage_options=opts(cache_dir)).load()
    xr.testing.assert_identical(ds, direct)
    arr = zarr.open_array(f"netcache::{url}/temp", storage_options=opts(cache_dir), mode="r")
    assert np.array_equal(arr[120:180, 40:60], direct.temp.values[120:180, 40:60])

    restart()
    server.reset_counts()
    ds = xr.open_zarr(f"netcache::{url}", storage_options=opts(cache_dir)).load()
    xr.testing.assert_identical(ds, direct)
    assert data_gets(server, files) == 0


def test_zarr_store_on_async_netcache(
    server: RangeServer, files: dict[str, bytes], cache_dir: str
) -> None:
    url = f"{server.url}/data/grid.zarr"
    direct = xr.open_zarr(url).load()
    afs = netcache.AsyncNetCacheFileSystem(
        target_protocol="http", cache_dir=cache_dir, block_size=BS
    )
    store = zarr.storage.FsspecStore(afs, path=url, read_only=True)
    server.reset_counts()
    xr.testing.assert_identical(xr.open_zarr(store).load(), direct)
    assert data_gets(server, files) > 0
    server.reset_counts()
    xr.testing.assert_identical(xr.open_zarr(store).load(), direct)
    assert data_gets(server, files) == 0
    assert afs.sync_fs.stats().retrievals.mem > 0


# -- S3 (moto on loopback, s3fs as the target) ---------------------------------------------------

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def s3(files: dict[str, bytes]) -> Iterator[dict[str, Any]]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {
        "key": "AKIDTEST", "secret": "never-on-disk", "endpoint_url": f"http://{host}:{port}",
        "client_kwargs": {"region_name": "eu-west-1"}, "skip_instance_cache": True,
    }  # fmt: skip
    bucket = f"libs-{random.randrange(1 << 30)}"
    direct = s3fs.S3FileSystem(**options)
    direct.mkdir(bucket)
    for path, data in files.items():
        direct.pipe_file(f"{bucket}/{path}", data)
    yield {"options": options, "bucket": bucket}
    server.stop()


@pytest.fixture
def s3_gets(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """GetObject calls made by s3fs (the target) that fetched bytes, counted at the client
    (a probe of a key that is not there, as zarr makes, fetches none)."""
    counts = {"GetObject": 0}
    original = s3fs.S3FileSystem._call_s3

    async def counting(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        answer = await original(self, method, *args, **kwargs)
        if method == "get_object":
            counts["GetObject"] += 1
        return answer

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counting)
    return counts


def test_s3_parquet_and_zarr(
    s3: dict[str, Any], s3_gets: dict[str, int], frame: Any, cache_dir: str
) -> None:
    bucket, options = s3["bucket"], s3["options"]
    storage = {"netcache": {"cache_dir": cache_dir, "block_size": BS}, "s3": options}
    url = f"netcache::s3://{bucket}/data/t.parquet"
    zurl = f"netcache::s3://{bucket}/data/grid.zarr"
    direct = xr.open_zarr(f"s3://{bucket}/data/grid.zarr", storage_options=options).load()

    s3_gets["GetObject"] = 0
    pd.testing.assert_frame_equal(pd.read_parquet(url, storage_options=storage), frame)
    xr.testing.assert_identical(xr.open_zarr(zurl, storage_options=storage).load(), direct)
    first = s3_gets["GetObject"]
    assert first > 0

    fs = netcache.NetCacheFileSystem(
        target_protocol="s3", target_options=options, cache_dir=cache_dir, block_size=BS
    )
    table = pq.read_table(f"{bucket}/data/t.parquet", filesystem=fs, columns=["id"])
    assert table.column("id").to_pylist() == frame["id"].tolist()

    restart()
    s3_gets["GetObject"] = 0
    pd.testing.assert_frame_equal(pd.read_parquet(url, storage_options=storage), frame)
    xr.testing.assert_identical(xr.open_zarr(zurl, storage_options=storage).load(), direct)
    assert s3_gets["GetObject"] == 0
