"""Progress through fsspec.callbacks (get_file, prefetch) and the Prometheus rendering."""

from __future__ import annotations

import io
from typing import Any

import fsspec
import pytest
from conftest import BS, GatedBackend, MiB, http_fs, payload
from fsspec.callbacks import Callback

import netcache
from netcache.prometheus import metric_of
from netcache.stats import GAUGES, prometheus_text
from netcache.testing.httpserver import RangeServer


class Recorder(Callback):
    """Keeps what an operation reported."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int | None] = []
        self.updates: list[int] = []

    def set_size(self, size: int | None) -> None:
        self.sizes.append(size)
        super().set_size(size)

    def relative_update(self, inc: int = 1) -> None:
        self.updates.append(inc)
        super().relative_update(inc)


def restart() -> None:
    netcache.close_all(drain_timeout=10)
    fsspec.AbstractFileSystem.clear_instance_cache()
    netcache.NetCacheFileSystem.clear_instance_cache()


def test_get_file_reports_progress_and_goes_through_pages(
    server: RangeServer, cache_dir: str, tmp_path: Any
) -> None:
    data = server.data("/big.bin")
    fs = http_fs(cache_dir)
    progress = Recorder()
    fs.get_file(f"{server.url}/big.bin", str(tmp_path / "a.bin"), callback=progress)
    assert (tmp_path / "a.bin").read_bytes() == data
    assert progress.sizes == [len(data)] and sum(progress.updates) == len(data)
    assert progress.value == len(data) and len(progress.updates) > 1
    assert fs.stats().retrievals.remote == -(-len(data) // BS)
    gets = server.gets
    fs.get_file(f"{server.url}/big.bin", str(tmp_path / "b.bin"))
    assert (tmp_path / "b.bin").read_bytes() == data and server.gets == gets


def test_prefetch_warms_the_disk_tier_for_the_next_process(
    server: RangeServer, cache_dir: str
) -> None:
    data = {
        "big.bin": server.data("/big.bin"),
        "small.bin": server.data("/small.bin"),
    }
    fs = http_fs(cache_dir, memory_limit=8 * BS)  # far less memory than the files
    progress = Recorder()
    urls = [f"{server.url}/big.bin", f"{server.url}/small.bin"]
    total = fs.prefetch(urls, callback=progress)
    assert total == sum(map(len, data.values())) == progress.sizes[0] == sum(progress.updates)
    assert fs.flush(timeout=30)
    stats = fs.stats()
    pages = sum(-(-len(d) // BS) for d in data.values())
    assert stats.retrievals.remote == pages and stats.stores.nbf == 0
    assert fs.disk_usage().pages == pages  # prefetch waited for write-back: nothing lost

    restart()
    server.reset_counts()
    again = http_fs(cache_dir, memory_limit=8 * BS)
    assert again.cat_file(urls[0]) == data["big.bin"]
    assert again.cat_file(urls[1]) == data["small.bin"]
    assert server.gets == 0


def test_prefetch_waits_for_a_slow_disk_rather_than_drop_pages() -> None:
    backend = GatedBackend(BS, limit=64 * MiB)
    fs = netcache.NetCacheFileSystem(target_protocol="memory", cache_dir=backend,
                                     block_size=BS, memory_limit=8 * BS)  # fmt: skip
    blob = payload(40 * BS, 9)
    fs.fs.pipe_file("/slow/data.bin", blob)
    import threading

    done = threading.Event()
    worker = threading.Thread(target=lambda: (fs.prefetch("/slow/data.bin"), done.set()))
    worker.start()
    assert backend.storing.wait(10)
    assert not done.wait(0.3)  # the queue filled up: prefetch is waiting for the disk
    backend.gate.set()
    worker.join(30)
    assert done.is_set() and fs.flush(timeout=30)
    assert fs.stats().stores.nbf == 0 and len(backend.stored) == 40


def test_prefetch_of_a_folder_and_tqdm(cache_dir: str) -> None:
    tqdm = pytest.importorskip("tqdm")
    from fsspec.callbacks import TqdmCallback

    fs = netcache.NetCacheFileSystem(target_protocol="memory", cache_dir=cache_dir, block_size=BS)
    files = {f"/ds/part{i}.bin": payload(3 * BS + i, i) for i in range(3)}
    for path, blob in files.items():
        fs.fs.pipe_file(path, blob)
    bar = TqdmCallback(tqdm_kwargs={"file": io.StringIO(), "mininterval": 0})
    assert fs.prefetch("/ds", callback=bar) == sum(map(len, files.values()))
    assert isinstance(bar.tqdm, tqdm.tqdm) and bar.tqdm.n == bar.tqdm.total
    assert fs.stats().retrievals.remote == sum(-(-len(b) // BS) for b in files.values())
    with pytest.raises(FileNotFoundError):
        fs.prefetch(["/ds/part0.bin", "/ds/missing.bin"])


def test_prometheus_text_parses_back_to_the_counters(server: RangeServer) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    fs = http_fs(False)
    fs.cat_file(f"{server.url}/big.bin", BS, 4 * BS)
    fs.cat_file(f"{server.url}/big.bin", BS, 2 * BS)
    snap = fs.stats()
    text = prometheus_text(
        [({"cache": 'http "a"\\b'}, snap.as_dict()), ({"cache": "other"}, {"pages.n": 7})]
    )
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    got: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in families.values():
        assert family.documentation and family.documentation != family.name  # says what
        for sample in family.samples:
            got[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    for name, value in snap.as_dict().items():
        if "." not in name:  # a plain name: the same figures again, for people
            continue
        metric, labels, kind = metric_of(name, GAUGES)
        # the parser names a counter's family without its _total
        family = "netcache_" + (metric.removesuffix("_total") if kind == "counter" else metric)
        assert families[family].type == kind
        key = tuple(sorted({"cache": 'http "a"\\b', **labels}.items()))
        assert got[("netcache_" + metric, key)] == value, name
    assert got[("netcache_pages_n", (("cache", "other"),))] == 7
    # pages 1-3 came with the version (a first look) and were read from memory, then 1
    memory = (("cache", 'http "a"\\b'), ("tier", "memory"))
    assert got[("netcache_pages_served_total", memory)] == 4 == snap.retrievals.mem
    # Prometheus's conventions: outcomes are labels of one metric, with its HELP
    assert 'netcache_vmscan_pages_total{outcome="cancelled"}' in snap.to_prometheus()
    assert "# HELP netcache_vmscan_pages_total Pages reclaim asked" in snap.to_prometheus()
    assert snap.to_prometheus() == prometheus_text([({}, snap.as_dict())])
    with pytest.raises(ValueError, match="label name"):
        snap.to_prometheus({"bad-name": "x"})
