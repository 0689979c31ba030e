"""netcache on Dask: pickling to other processes, a LocalCluster of two worker processes
reading Parquet through one shared disk tier, memory thresholds under the worker's, and
cluster-wide stats."""

from __future__ import annotations

import dataclasses
import io
import multiprocessing
import pickle
from collections.abc import Iterator
from typing import Any

import fsspec
import pytest
from conftest import BS

import netcache
from netcache.testing.httpserver import RangeServer

np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")
dask = pytest.importorskip("dask")
dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")
netcache_dask = pytest.importorskip("netcache.dask")

PARTS = 4


def _described(fs: netcache.NetCacheFileSystem) -> dict[str, Any]:
    """What a cache is configured with, comparable across processes."""
    config = {f.name: repr(getattr(fs.config, f.name)) for f in dataclasses.fields(fs.config)}
    monitor = fs.config.memory_monitor
    config["memory_monitor"] = {k: v for k, v in monitor.settings().items() if k != "probe"}
    policy = fs.config.release_policy
    config["release_policy"] = repr(vars(policy)) if policy is not None else "None"
    return config


def _read_in_child(blob: bytes, url: str) -> tuple[dict[str, Any], bytes]:
    fs = pickle.loads(blob)
    return _described(fs), fs.cat_file(url, 10, 20)


@pytest.mark.machine_memory  # the chained instance's default monitor is each process's own
def test_pickles_to_another_process_with_its_settings(server: RangeServer, cache_dir: str) -> None:
    monitor = netcache.MemoryPressureMonitor(limit="1GiB", critical=0.5, high=0.45,
                                             moderate=0.4, target=0.3, autostart=False)  # fmt: skip
    fs = netcache.NetCacheFileSystem(
        target_protocol="http", cache_dir=cache_dir, block_size=BS, memory_limit="8MiB",
        eviction="2q", release_policy=netcache.WaitForStore(timeout=2), memory_monitor=monitor,
    )  # fmt: skip
    blob = pickle.dumps(fs)
    same = pickle.loads(blob)
    assert same.context is fs.context and same.config.memory_monitor is monitor

    chained, _ = fsspec.url_to_fs(
        f"netcache::{server.url}/big.bin", netcache={"cache_dir": cache_dir + "2", "block_size": BS}
    )
    url = f"{server.url}/big.bin"
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        config, data = pool.apply(_read_in_child, (blob, url))
        chained_config, chained_data = pool.apply(_read_in_child, (pickle.dumps(chained), url))
    assert config == _described(fs)
    assert config["memory_monitor"]["critical"] == 0.5 and "2q" in config["eviction"]
    assert chained_config == _described(chained)
    assert data == chained_data == server.data("/big.bin")[10:20]


def test_backend_instances_say_why_they_do_not_pickle() -> None:
    fs = netcache.NetCacheFileSystem(
        target_protocol="memory", block_size=BS,
        cache_dir=netcache.MappingBackend({}, BS, 1 << 20),
    )  # fmt: skip
    with pytest.raises(TypeError, match="give cache_dir as a path"):
        pickle.dumps(fs)


def test_monitor_settings_sit_below_the_workers_thresholds() -> None:
    class Manager:
        memory_limit = 4 << 30
        memory_spill_fraction: float | bool = 0.7
        memory_pause_fraction: float | bool = 0.8

    class Worker:
        memory_manager = Manager()

    settings = netcache_dask.monitor_settings(Worker())
    assert settings["limit"] == 4 << 30
    assert settings["target"] < settings["moderate"] < settings["high"]
    assert settings["critical"] < 0.7
    netcache.MemoryPressureMonitor(**settings, autostart=False)  # valid arguments
    Manager.memory_spill_fraction = False  # spilling off: stay under the pause threshold
    assert 0.7 < netcache_dask.monitor_settings(Worker())["critical"] < 0.8
    Manager.memory_limit = 0  # no limit: netcache's own defaults
    assert netcache_dask.monitor_settings(Worker()) == {}


@pytest.fixture(scope="module")
def parts() -> list[Any]:
    return [
        pd.DataFrame(
            {
                "i": np.arange(k * 20_000, (k + 1) * 20_000),
                "v": np.random.default_rng(k).random(20_000),
            }
        )
        for k in range(PARTS)
    ]


@pytest.fixture
def parquet_server(parts: list[Any]) -> Iterator[RangeServer]:
    files = {}
    for k, frame in enumerate(parts):
        buf = io.BytesIO()
        frame.to_parquet(buf)
        files[f"ds/part{k}.parquet"] = buf.getvalue()
    with RangeServer(files) as srv:
        yield srv


def _worker_view(dask_worker: Any) -> dict[str, Any]:
    import netcache
    import netcache.dask

    monitor = netcache.default_monitor()
    with netcache.process.registry.lock:
        contexts = list(netcache.process.registry.contexts.values())
    return {
        "caches": len(contexts),
        "own_monitor": all(c.config.memory_monitor is monitor for c in contexts),
        "found": netcache.dask.current_worker() is dask_worker,
        "limit": monitor.limit,
        "critical": monitor.critical,
        "worker_limit": dask_worker.memory_manager.memory_limit,
        "spill": dask_worker.memory_manager.memory_spill_fraction,
    }


def test_local_cluster_reads_parquet_through_one_disk_tier(
    parquet_server: RangeServer, parts: list[Any], cache_dir: str
) -> None:
    urls = [f"netcache::{parquet_server.url}/ds/part{k}.parquet" for k in range(PARTS)]
    options = {"netcache": {"cache_dir": cache_dir, "block_size": BS}}
    expected = pd.concat(parts, ignore_index=True)
    with (
        dask.config.set({"distributed.worker.memory.spill": 0.5}),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, memory_limit="1GiB",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):  # fmt: skip
        got = dd.read_parquet(urls, storage_options=options).compute()
        pd.testing.assert_frame_equal(got.reset_index(drop=True), expected)
        assert parquet_server.gets > 0

        views = client.run(_worker_view)
        assert len(views) == 2
        for view in views.values():
            assert view["found"] and view["spill"] == 0.5
            # the caches the tasks built (or unpickled) use the worker's own monitor
            assert view["caches"] >= 1 and view["own_monitor"]
            assert view["limit"] == view["worker_limit"] == 1 << 30
            assert view["critical"] < view["spill"]

        stats = netcache_dask.cluster_stats(client)
        assert set(stats) == {*views, "total"}
        total = stats["total"]
        assert total["retrievals.remote"] == sum(
            stats[w]["retrievals.remote"] for w in views
        )  # fmt: skip
        # every byte the server sent is counted, by a worker or by this process (dask reads
        # the Parquet footers here, in the client)
        here = netcache_dask.process_stats()["retrievals.rbytes"]
        assert here > 0 and total["retrievals.rbytes"] + here == parquet_server.bytes_sent

        client.restart()  # new worker processes: memory is gone, the folder is not
        parquet_server.reset_counts()
        got = dd.read_parquet(urls, storage_options=options).compute()
        pd.testing.assert_frame_equal(got.reset_index(drop=True), expected)
        assert parquet_server.gets == 0
        again = netcache_dask.cluster_stats(client)["total"]
        assert again["retrievals.remote"] == 0 and again["retrievals.disk"] > 0
