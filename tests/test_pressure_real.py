"""Memory pressure for real: psutil readings, the seed's deadlock, and a storm."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading
import time

import fsspec
import psutil
import pytest
from conftest import BS, MiB, payload, wait_for

import netcache
from netcache import MemoryPressureMonitor, MemoryReading
from netcache.policies import PressureLevel
from netcache.testing.httpserver import RangeServer


def test_psutil_monitor_brings_rss_back_under_target(tmp_path) -> None:  # type: ignore[no-untyped-def]
    source = tmp_path / "big.bin"
    with open(source, "wb") as f:
        for i in range(160):
            f.write(random.Random(i).randbytes(MiB))
    # thresholds close together: the window between "the ballast crosses moderate" and
    # "dropping the pages gets under target" then stays open for a process of any size
    monitor = MemoryPressureMonitor(1 << 40, moderate=0.9, high=0.95, critical=0.98,
                                    target=0.85, interval=0.05, autostart=False)  # fmt: skip
    fs = netcache.NetCacheFileSystem(fs=fsspec.filesystem("file"), cache_dir=False,
                                     block_size=256 * 1024, memory_limit="1GiB",
                                     memory_monitor=monitor)  # fmt: skip
    with fs.open(str(source)) as f:
        while f.read(4 * MiB):
            pass
    assert fs.stats().pages.bytes == 160 * MiB
    process = psutil.Process()
    filled = process.memory_info().rss
    # the target sits 24 MiB above what dropping every page leaves (the pages gone, the
    # ballast in), whatever else this process holds (a whole test run: ~1 GiB); the
    # ballast then crosses the moderate threshold, for any process under ~2 GiB
    monitor.limit = int((filled - 160 * MiB + 80 * MiB + 24 * MiB) / monitor.target)
    assert filled + 80 * MiB > monitor.moderate * monitor.limit, (filled, monitor.limit)
    monitor.start()
    try:
        ballast = b"\x01" * (80 * MiB)  # written, so resident
        assert process.memory_info().rss > monitor.moderate * monitor.limit
        target = monitor.target * monitor.limit
        assert wait_for(lambda: process.memory_info().rss < target, timeout=15), (
            process.memory_info().rss,
            target,
            str(fs.stats()),
        )
        st = fs.stats()
        assert st.pressure.rbytes > 0 and st.pressure.mod + st.pressure.high + st.pressure.crit >= 1
        assert st.pages.bytes < 160 * MiB
        assert len(ballast) == 80 * MiB
        # still correct after reclaim: reread a piece of what was dropped
        with open(source, "rb") as raw:
            assert fs.cat_file(str(source), 0, MiB) == raw.read(MiB)
    finally:
        monitor.stop()


DEADLOCK = textwrap.dedent(
    """
    import sys, time, fsspec, netcache
    from netcache.backends import MappingBackend
    from netcache.page import StoreState

    BS = 64 * 1024
    BUDGET = None
    policies = {"wait": netcache.WaitForStore(timeout=None), "cancel": netcache.CancelPending(),
                "default": None}

    class NeedsMemory(MappingBackend):
        '''A store that first waits until the cache is back under budget: memory that
        only reclaim can free (bounded, so even the deadlock ends in a minute).'''
        def store_page(self, key, data):
            deadline = time.monotonic() + 60
            while BUDGET is not None and fs.stats().pages.bytes > BUDGET:
                if time.monotonic() > deadline:
                    raise TimeoutError("no memory came back")
                time.sleep(0.002)
            super().store_page(key, data)

    mem = fsspec.filesystem("memory")
    mem.pipe_file("/dl/f", bytes(8 * BS))
    fs = netcache.NetCacheFileSystem(fs=mem, cache_dir=NeedsMemory({}, BS, 1 << 30),
                                     block_size=BS, writeback_workers=1, memory_monitor=False,
                                     release_policy=policies[sys.argv[1]])
    BUDGET = 0  # no store can run until reclaim has made room
    fs.cat_file("/dl/f")  # page 0 storing (waiting for memory), pages 1-7 queued behind it
    BUDGET = 3 * BS
    pages = fs.context.page_cache._pages
    while not any(p.state is StoreState.STORING for p in pages.values()):
        time.sleep(0.001)
    fs.cat_file("/dl/f", 0, BS)  # page 0 is hot: reclaim meets page 1 first
    freed = fs.reclaim(4 * BS + 1, level=netcache.PressureLevel.MODERATE)
    v = fs.stats().vmscan
    print("done", freed, v.nos, v.gon, v.bsy, v.can, v.wt, v.kep, flush=True)
    assert fs.flush(30)
    """
)


@pytest.mark.parametrize("policy", ["wait", "cancel", "default"])
def test_seed_deadlock_reproduced_and_gone(policy: str) -> None:
    cmd = [sys.executable, "-c", DEADLOCK, policy]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=8)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        hung = True
    else:
        hung = False
    if policy == "wait":
        assert hung and "done" not in out  # waiting for a store that waits for memory
        return
    assert not hung and proc.returncode == 0, err
    counts = dict(zip(["freed", "nos", "gon", "bsy", "can", "wt", "kep"],
                      map(int, out.split()[1:]), strict=True))  # fmt: skip
    assert counts["freed"] == 5 * BS  # pages 1-5 cancelled and released
    expected = {"nos": 0, "gon": 0, "can": 5, "wt": 0}
    if policy == "default":  # first walk keeps every pending page; the store of 0 is busy
        expected.update(kep=7, bsy=1)
    else:
        expected.update(kep=0, bsy=0)
    assert {k: v for k, v in counts.items() if k != "freed"} == expected


STORM_SECONDS = float(os.environ.get("NETCACHE_STORM_SECONDS", "3"))


def test_pressure_storm(tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = {f"f{i}.bin": payload(16 * BS, 100 + i) for i in range(3)}
    levels = [MemoryReading(0, 1 << 40), MemoryReading(85, 1 << 40),
              MemoryReading(92, 1 << 40), MemoryReading(97, 1 << 40)]  # fmt: skip
    rng = random.Random(5)
    monitor = MemoryPressureMonitor(100, probe=lambda: rng.choice(levels), autostart=False,
                                    available_floor=0)  # fmt: skip
    errors: list[BaseException] = []
    explicit = [0]
    stop = threading.Event()
    with RangeServer(files) as srv:
        fs = netcache.NetCacheFileSystem(target_protocol="http", cache_dir=str(tmp_path / "c"),
                                         block_size=BS, memory_limit=20 * BS,
                                         memory_monitor=monitor, check_interval=None)  # fmt: skip

        def guard(fn):  # type: ignore[no-untyped-def]
            def run() -> None:
                seed = random.Random(threading.get_ident())
                try:
                    while not stop.is_set():
                        fn(seed)
                except BaseException as exc:
                    errors.append(exc)

            return run

        def reader(seed: random.Random) -> None:
            name = seed.choice(list(files))
            data = files[name]
            with fs.open(f"{srv.url}/{name}") as f:
                for _ in range(5):
                    a = seed.randrange(len(data))
                    f.seek(a)
                    assert f.read(2 * BS) == data[a : a + 2 * BS]

        def pressure(seed: random.Random) -> None:
            monitor.check()
            time.sleep(0.002)

        def invalidator(seed: random.Random) -> None:
            fs.invalidate(f"{srv.url}/{seed.choice(list(files))}")
            time.sleep(0.01)

        def reclaimer(seed: random.Random) -> None:
            explicit[0] += fs.reclaim(seed.randrange(1, 8) * BS) // BS
            time.sleep(0.005)

        workers = [reader] * 12 + [pressure, pressure, invalidator, reclaimer]
        threads = [threading.Thread(target=guard(w)) for w in workers]
        for t in threads:
            t.start()
        time.sleep(STORM_SECONDS)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads), "deadlock: a storm thread never ended"
        assert not errors, errors[:3]
        assert fs.flush(30)
        st = fs.stats()
        released = st.vmscan.nos + st.vmscan.gon + st.vmscan.can
        assert released == st.pressure.rpages + explicit[0]  # every release counted once
        assert st.pressure.readings > 10 and st.pressure.rpages > 0
        assert st.pages.n == len(fs.context.page_cache._pages)
        for name, data in files.items():  # and every byte still right afterwards
            assert fs.cat_file(f"{srv.url}/{name}") == data
    assert monitor.level in PressureLevel


def test_the_default_limit_is_this_process_own_cgroup_limit() -> None:
    """Under a cgroup v1 memory limit of its own (as a container, a batch job or systemd
    gives), the monitor's default limit is that limit, not the machine's RAM."""
    import subprocess
    import sys
    import uuid

    root = "/sys/fs/cgroup/memory"
    if not os.access(root, os.W_OK) or not os.path.exists(f"{root}/memory.limit_in_bytes"):
        pytest.skip("needs a writable cgroup v1 memory hierarchy (root)")
    group = f"{root}/netcache-test-{uuid.uuid4().hex[:8]}"
    os.mkdir(group)
    try:
        with open(f"{group}/memory.limit_in_bytes", "w") as f:
            f.write(str(3 << 30))
        code = (f"import os; open('{group}/cgroup.procs', 'w').write(str(os.getpid())); "
                "from netcache.pressure import default_limit; print(default_limit())")  # fmt: skip
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, timeout=60)  # fmt: skip
        assert int(out.stdout) == 3 << 30
    finally:
        os.rmdir(group)
