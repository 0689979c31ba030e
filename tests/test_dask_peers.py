"""Pages shared between Dask workers: a real cluster of 4 worker processes, each with a
cache folder of its own as on separate machines, reading one dataset (Parquet files, and
one large file in ranges) from the test server in the object-store model, in 4 passes
with tasks on shuffled workers. With sharing, the remote sends the dataset about once,
against about once per worker without; every byte is right; a worker killed mid-job
changes no result. Plus the parts alone: homes, answers checked as data, fallbacks."""

from __future__ import annotations

import io
import os
import pickle
import random
import signal
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

import netcache
from netcache import peers
from netcache.cookie import FileCookie
from netcache.page import PageKey
from netcache.peers import (
    PeerAnswerError,
    PeerResult,
    check_answer,
    home_of,
    page_crc,
)
from netcache.testing.httpserver import RangeServer

np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")
distributed = pytest.importorskip("distributed")
netcache_dask = pytest.importorskip("netcache.dask")

MiB = 1 << 20
PASSES = 4
WORKERS = 4
PARQUET_FILES = 8
ROWS = 1_000_000  # 8 MB of random doubles a column, 2 columns: 16 MB a file
BIG = 128 * MiB
RANGE = 1 * MiB


# -- the parts alone --------------------------------------------------------------------


def test_homes_move_only_the_share_of_a_worker_that_leaves() -> None:
    workers = [f"tcp://10.0.0.{i}:1234" for i in range(5)]
    runs = [("f" * 8, "v1", i) for i in range(2000)]
    before = {run: home_of(run, workers) for run in runs}
    counts = {w: sum(1 for h in before.values() if h == w) for w in workers}
    assert min(counts.values()) > 2000 / 5 * 0.7  # spread about evenly
    after = {run: home_of(run, workers[:-1]) for run in runs}
    moved = [run for run in runs if before[run] != after[run]]
    assert all(before[run] == workers[-1] for run in moved)  # only the leaver's runs move
    assert len(moved) == counts[workers[-1]]


def _cookie(size: int = 300) -> FileCookie:
    return FileCookie("id", "/f", "v1", "tok", size, {"size": size})


def test_answers_are_checked_as_data() -> None:
    cookie = _cookie(300)  # pages of 128 bytes: 128, 128, 44
    good = [[0, page_crc(b"a" * 128), b"a" * 128], [2, page_crc(b"c" * 44), b"c" * 44]]
    assert check_answer({"version": "v1", "pages": good}, cookie, [0, 2], 128) == {
        0: b"a" * 128, 2: b"c" * 44}  # fmt: skip
    bad = {
        "another version": {"version": "v0", "pages": good},
        "a page not asked": {"version": "v1", "pages": [[1, page_crc(b"b" * 128), b"b" * 128]]},
        "a short page": {"version": "v1", "pages": [[0, page_crc(b"a" * 100), b"a" * 100]]},
        "a bad checksum": {"version": "v1", "pages": [[0, page_crc(b"a" * 128), b"b" * 128]]},
        "a page twice": {"version": "v1", "pages": [good[0], good[0]]},
        "not a page": {"version": "v1", "pages": [[0, b"a" * 128]]},
        "not an answer": ["v1"],
    }
    for why, answer in bad.items():
        with pytest.raises(PeerAnswerError):
            check_answer(answer, cookie, [0, 2], 128)
            pytest.fail(why)


class FakePeers:
    """A peer source that serves the pages it holds, and fails the rest; the pages from
    ``mine`` on have this worker as their home (none by default)."""

    def __init__(self, data: bytes, block_size: int, broken: bool = False,
                 mine: int | None = None) -> None:  # fmt: skip
        self.data, self.bs, self.broken, self.mine = data, block_size, broken, mine
        self.asked: list[int] = []
        self.had_mine: list[bool] = []  # at each ask: whether this worker's pages were in
        self.fs: Any = None

    def elsewhere(self, keys: Any) -> list[PageKey]:
        return [k for k in keys if self.mine is None or k.index < self.mine]

    def fetch(self, target: Any, target_id: str, block_size: int, keys: Any,
              cookies: Any) -> PeerResult:  # fmt: skip
        self.asked += [k.index for k in keys]
        if self.mine is not None:
            cache, (key, *_) = self.fs.context.page_cache, keys
            self.had_mine.append(
                all(
                    cache.is_resident(key.file_id, key.version, i)
                    for i in range(self.mine, len(self.data) // self.bs)
                )
            )
        if self.broken:
            return PeerResult(asked=len(keys), fallback=len(keys), errors=1)
        pages = {k: self.data[k.index * self.bs : (k.index + 1) * self.bs] for k in keys
                 if k.index % 2 == 0}  # fmt: skip
        return PeerResult(pages=pages, asked=len(keys), fallback=len(keys) - len(pages))


@pytest.mark.parametrize("broken", [False, True])
def test_fetches_ask_the_peer_source_before_the_remote(server: RangeServer, broken: bool) -> None:
    bs = 128 << 10
    data = os.urandom(8 * bs)
    server.put("p/f", data)
    fake = FakePeers(data, bs, broken)
    peers.install(fake)
    try:
        fs = netcache.NetCacheFileSystem(target_protocol="http", cache_dir=False, block_size=bs,
                                         readahead=False, skip_instance_cache=True)  # fmt: skip
        server.reset_counts()
        assert fs.cat_file(f"{server.url}/p/f") == data
    finally:
        peers.uninstall(fake)
    p = fs.stats().peers
    assert sorted(fake.asked) == list(range(8))
    assert p.asked == 8 and p.got == (0 if broken else 4)
    assert p.fallback == (8 if broken else 4) and p.err == (1 if broken else 0)
    assert server.bytes_sent == (8 if broken else 4) * bs  # the rest from the remote
    assert fs.stats().retrievals.remote == (8 if broken else 4)


def test_a_fetch_gets_its_own_pages_before_asking_peers(server: RangeServer) -> None:
    # A page of this worker's waits only on the remote, never on this fetch's asks of
    # peers: else fetches on several workers, each holding pages another asks for, wait
    # on each other in a ring until their asks time out.
    bs = 128 << 10
    data = os.urandom(8 * bs)
    server.put("p/mine", data)
    fake = FakePeers(data, bs, mine=4)  # pages 0-3 have other homes, 4-7 this worker
    peers.install(fake)
    try:
        fs = fake.fs = netcache.NetCacheFileSystem(
            target_protocol="http", cache_dir=False, block_size=bs, readahead=False,
            skip_instance_cache=True)  # fmt: skip
        server.reset_counts()
        assert fs.cat_file(f"{server.url}/p/mine") == data
    finally:
        peers.uninstall(fake)
    assert sorted(fake.asked) == [0, 1, 2, 3]  # peers are asked only for theirs
    assert fake.had_mine == [True]  # and only once this worker's own pages were in
    assert server.bytes_sent == 6 * bs  # its own 4, and the 2 its peers did not serve


# -- a real cluster ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset() -> dict[str, bytes]:
    files = {}
    for k in range(PARQUET_FILES):
        rng = np.random.default_rng(k)
        frame = pd.DataFrame({"a": rng.random(ROWS), "b": rng.random(ROWS)})
        buf = io.BytesIO()
        frame.to_parquet(buf, compression=None)
        files[f"ds/part{k}.parquet"] = buf.getvalue()
    files["ds/big.bin"] = np.random.default_rng(99).bytes(BIG)
    return files


@pytest.fixture
def model_server(dataset: dict[str, bytes]) -> Iterator[RangeServer]:
    # the object-store model: a round trip per request, a stream per connection
    with RangeServer(dataset, latency=0.03, bandwidth=64 * MiB) as srv:
        yield srv


class CacheHomePerWorker(distributed.WorkerPlugin):
    """Each worker its own default cache folder, as on a machine of its own."""

    def __init__(self, base: str) -> None:
        self.base = base

    def setup(self, worker: Any) -> None:
        os.environ["XDG_CACHE_HOME"] = os.path.join(self.base, str(worker.name))


def read_parquet(url: str) -> int:
    frame = pd.read_parquet(url, storage_options={"netcache": {"check_interval": None}})
    return int(zlib.crc32(frame.to_numpy().tobytes()))


def read_ranges(url: str, starts: list[int]) -> int:
    fs = netcache.NetCacheFileSystem(target_protocol="http", check_interval=None)
    crc = 0
    with fs.open(url) as f:
        for start in starts:
            f.seek(start)
            crc = zlib.crc32(f.read(RANGE), crc)
    return crc


def expected(dataset: dict[str, bytes]) -> dict[str, int]:
    out = {}
    for name, blob in dataset.items():
        if name.endswith(".parquet"):
            out[name] = int(zlib.crc32(pd.read_parquet(io.BytesIO(blob)).to_numpy().tobytes()))
    return out


def range_jobs(seed: int) -> list[list[int]]:
    starts = list(range(0, BIG, RANGE))
    random.Random(seed).shuffle(starts)
    return [starts[i::WORKERS] for i in range(WORKERS)]


def run_pass(client: Any, url: str, dataset: dict[str, bytes], seed: int) -> list[Any]:
    """One pass over the dataset, tasks on shuffled workers; the futures."""
    workers = sorted(client.scheduler_info()["workers"])
    rng = random.Random(seed)
    futures = []
    for name in sorted(dataset):
        if name.endswith(".parquet"):
            futures.append(client.submit(
                read_parquet, f"netcache::{url}/{name}", pure=False, key=f"{name}-{seed}",
                workers=[rng.choice(workers)], allow_other_workers=True,
            ))  # fmt: skip
    for i, starts in enumerate(range_jobs(seed)):
        futures.append(client.submit(read_ranges, f"{url}/ds/big.bin", starts, pure=False,
                                     workers=[rng.choice(workers)], allow_other_workers=True,
                                     key=f"big{i}-{seed}"))  # fmt: skip
    return futures


def check_pass(client: Any, futures: list[Any], dataset: dict[str, bytes]) -> None:
    results = client.gather(futures)
    names = [n for n in sorted(dataset) if n.endswith(".parquet")]
    assert dict(zip(names, results[: len(names)], strict=True)) == expected(dataset)
    big = dataset["ds/big.bin"]
    seed = int(futures[0].key.rsplit("-", 1)[1])
    for starts, got in zip(range_jobs(seed), results[len(names) :], strict=True):
        crc = 0
        for start in starts:
            crc = zlib.crc32(big[start : start + RANGE], crc)
        assert got == crc


def run_job(model_server: RangeServer, dataset: dict[str, bytes], tmp: str, share: bool,
            kill_one: bool = False) -> dict[str, Any]:  # fmt: skip
    with (
        distributed.LocalCluster(n_workers=WORKERS, threads_per_worker=2, processes=True,
                                 memory_limit="2GiB", dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):  # fmt: skip
        client.register_plugin(CacheHomePerWorker(tmp))
        if share:
            netcache_dask.share_pages(client, timeout=10)  # a busy CI machine: no give-ups
        model_server.reset_counts()
        for seed in range(PASSES):
            futures = run_pass(client, model_server.url, dataset, seed)
            if kill_one and seed == 1:
                distributed.wait(futures[:2])  # mid-job: some done, most to come
                victim = sorted(client.scheduler_info()["workers"])[0]
                pid = client.run(os.getpid, workers=[victim])[victim]
                os.kill(pid, signal.SIGKILL)
            check_pass(client, futures, dataset)
        stats = netcache_dask.cluster_stats(client)["total"]
        if share:  # and undone: no worker asks peers any more
            netcache_dask.stop_sharing_pages(client)
            assert set(client.run(_peer_source).values()) == {False}
    return {"sent": model_server.bytes_sent, "stats": stats}


def _peer_source() -> bool:
    return peers.current() is not None


def test_a_cluster_fetches_each_page_from_the_remote_about_once(
    model_server: RangeServer, dataset: dict[str, bytes], tmp_path: Any
) -> None:
    size = sum(map(len, dataset.values()))
    shared = run_job(model_server, dataset, str(tmp_path / "shared"), share=True)
    alone = run_job(model_server, dataset, str(tmp_path / "alone"), share=False)
    assert shared["sent"] <= 1.1 * size, shared
    assert 1.5 * size < alone["sent"] <= WORKERS * size, alone
    p = shared["stats"]
    # served counts can outlive the asker's: a cache replaced by one of other settings
    assert p["peers.served"] >= p["peers.got"] > 0
    assert p["peers.err"] == 0 and p["peers.fallback"] == 0
    assert alone["stats"]["peers.asked"] == 0  # nothing changes without share_pages


def test_a_worker_killed_mid_job_changes_no_result(
    model_server: RangeServer, dataset: dict[str, bytes], tmp_path: Any
) -> None:
    done = run_job(model_server, dataset, str(tmp_path / "kill"), share=True, kill_one=True)
    size = sum(map(len, dataset.values()))
    assert done["stats"]["peers.got"] > 0
    # the killed worker's pages were fetched again, by their new homes
    assert done["sent"] <= 2.5 * size


def test_share_pages_checks_its_argument() -> None:
    with pytest.raises(ValueError, match="timeout"):
        netcache_dask.share_pages(object(), timeout=0)


def test_nothing_is_asked_of_peers_without_a_source(server: RangeServer) -> None:
    assert peers.current() is None
    data = os.urandom(300_000)
    server.put("p/g", data)
    fs = netcache.NetCacheFileSystem(target_protocol="http", cache_dir=False,
                                     skip_instance_cache=True)  # fmt: skip
    assert fs.cat_file(f"{server.url}/p/g") == data
    assert fs.stats().peers.asked == 0


# -- the client and the server, without a cluster ------------------------------------------


class LoopThread:
    """An event loop on a thread of its own, as a worker's."""

    def __init__(self) -> None:
        import asyncio

        self.asyncio_loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.asyncio_loop.run_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.asyncio_loop.call_soon_threadsafe(self.asyncio_loop.stop)
        self.thread.join(10)


class FakeWorker:
    """What PeerClient uses of a worker: its address, loop and rpc; peers answer with
    ``answer(payload)``, a coroutine function."""

    def __init__(self, answer: Any) -> None:
        self.address = "tcp://me:1"
        self.loop = LoopThread()
        self.answer = answer
        self.asked: list[str] = []

    def rpc(self, address: str) -> Any:
        self.asked.append(address)
        worker = self

        class Call:
            async def netcache_pages(self, payload: bytes) -> Any:
                return await worker.answer(payload)

        return Call()


def _client_fetch(answer: Any, timeout: float = 0.5) -> tuple[PeerResult, Any, FakeWorker]:
    """Fetch 4 pages of one run whose home is the other worker."""
    from netcache.daskpeers import PeerClient

    worker = FakeWorker(answer)
    client = PeerClient(worker, timeout)
    client.set_live(["tcp://me:1", "tcp://other:2"])
    file_id = next(f"id{n}" for n in range(100)
                   if home_of((f"id{n}", "v1", 0), client.homes()) == "tcp://other:2")  # fmt: skip
    cookie = FileCookie(file_id, "/f", "v1", "tok", 4 * 128, {"size": 4 * 128})
    keys = [PageKey(file_id, "v1", i) for i in range(4)]
    try:
        result = client.fetch(object(), "tid", 128, keys, dict.fromkeys(keys, cookie))
    finally:
        worker.loop.stop()
    return result, client, worker


def _pages(payload: bytes, fill: Any) -> dict[str, Any]:
    """A right answer to ``payload``, each page's bytes from ``fill(index)``."""
    indices = pickle.loads(payload)[4]
    return {"status": "OK", "version": "v1",
            "pages": [[i, page_crc(fill(i)), fill(i)] for i in indices]}  # fmt: skip


def test_a_slow_peer_is_left_for_the_remote_within_the_timeout() -> None:
    import asyncio

    async def never(payload: bytes) -> Any:
        await asyncio.sleep(3600)

    started = time.monotonic()
    result, client, worker = _client_fetch(never, timeout=0.3)
    # given up by the 0.3 s timeout, well before the 5 s margin the caller adds to it
    assert time.monotonic() - started < 3
    assert worker.asked == ["tcp://other:2"] and result.requests == 1
    assert result.errors == 1 and result.fallback == result.asked == 4 and not result.pages
    assert client.homes() == ("tcp://me:1",)  # left out for a while


def test_a_wrong_or_busy_answer_is_left_for_the_remote() -> None:
    async def wrong(payload: bytes) -> Any:
        answer = _pages(payload, lambda i: bytes([i]) * 128)
        answer["pages"][1][2] = b"y" * 128  # its checksum is another page's
        return answer

    async def busy(payload: bytes) -> Any:
        return {"status": "busy"}

    async def right(payload: bytes) -> Any:
        return _pages(payload, lambda i: bytes([i]) * 128)

    bad, _, _ = _client_fetch(wrong)
    assert bad.errors == 1 and bad.fallback == bad.asked == 4 and not bad.pages
    refused, _, _ = _client_fetch(busy)
    assert refused.errors == 0 and refused.fallback == refused.asked == 4
    assert not refused.pages
    good, _, _ = _client_fetch(right)
    assert good.errors == 0 and good.fallback == 0 and good.asked == 4
    assert {k.index: v for k, v in good.pages.items()} == {i: bytes([i]) * 128 for i in range(4)}


def test_a_home_under_high_pressure_serves_nothing(server: RangeServer) -> None:
    from netcache.daskpeers import PageServer
    from netcache.pressure import MemoryPressureMonitor, MemoryReading

    monitor = MemoryPressureMonitor(1000, probe=lambda: MemoryReading(960, 1 << 40),
                                    autostart=False, available_floor=0)  # fmt: skip
    monitor.check()
    data = os.urandom(300_000)
    server.put("p/h", data)
    fs = netcache.NetCacheFileSystem(target_protocol="http", cache_dir=False,
                                     memory_monitor=monitor, skip_instance_cache=True)  # fmt: skip
    cookie = fs.reader.pin_version(f"{server.url}/p/h")
    payload = pickle.dumps((fs.context.target_id, fs.config.block_size, pickle.dumps(fs.fs),
                            cookie, [0, 1]))  # fmt: skip
    served = PageServer()
    try:
        assert served.serve(payload) == {"status": "busy"}
        monitor.probe = lambda: MemoryReading(0, 1 << 40)  # pressure gone
        monitor.check()
        answer = served.serve(payload)
    finally:
        served.close()
    bs = fs.config.block_size
    assert check_answer(answer, cookie, [0, 1], bs) == {0: data[:bs], 1: data[bs : 2 * bs]}
    assert fs.stats().peers.served == 2
