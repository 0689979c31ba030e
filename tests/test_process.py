"""Process state in one home (netcache.process): importing netcache does nothing, reset()
starts afresh, and a forked child starts with its own registry, monitor and pool."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest

import netcache
from netcache import buffers, process
from netcache.pressure import MemoryPressureMonitor, psutil_probe


def test_importing_netcache_loads_starts_and_registers_nothing() -> None:
    code = (
        "import atexit, sys, threading\n"
        "before = atexit._ncallbacks()\n"
        "import netcache\n"
        "print(sorted(m for m in sys.modules if m.startswith('netcache')))\n"
        "print('psutil' in sys.modules, 'fsspec' in sys.modules, threading.active_count(),"
        " atexit._ncallbacks() - before)\n"
        "netcache.NetCacheFileSystem\n"  # loads on first use
        "print('netcache.filesystem' in sys.modules, atexit._ncallbacks() - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == "['netcache']"
    assert lines[1] == "False False 1 0"
    loaded, hooks = lines[2].split()
    assert loaded == "True" and int(hooks) >= 1  # the exit hook comes with the caches
    assert "NetCacheFileSystem" in dir(netcache)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        netcache.nothing_here  # noqa: B018


def test_reset_closes_every_cache_and_makes_a_new_default_monitor() -> None:
    fs = netcache.NetCacheFileSystem(fs=__import__("fsspec").filesystem("memory"),
                                     cache_dir=False, block_size=4096)  # fmt: skip
    fs.fs.pipe_file("/p/x", b"x" * 10_000)
    assert fs.cat_file("/p/x") == b"x" * 10_000
    monitor = process.default_monitor()
    assert process.registry.in_use() == [fs.context]
    assert process.reset(drain_timeout=5)
    assert process.registry.in_use() == [] and buffers.recycled_bytes() == 0
    assert process.default_monitor() is not monitor


@pytest.mark.machine_memory
def test_the_default_monitor_reads_the_machine_and_pickles_as_the_receivers_own() -> None:
    monitor = process.default_monitor()
    assert monitor.probe is psutil_probe and monitor is process.default_monitor()
    assert pickle.loads(pickle.dumps(monitor)) is monitor  # the receiving process's own
    mine = MemoryPressureMonitor(autostart=False)
    assert pickle.loads(pickle.dumps(mine)) is mine  # by its token, in this process
    process.use_default_monitor(mine)
    assert process.default_monitor() is mine and monitor.pickled_as is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_starts_with_its_own_state() -> None:
    import fsspec

    fs = netcache.NetCacheFileSystem(fs=fsspec.filesystem("memory"), cache_dir=False,
                                     block_size=4096)  # fmt: skip
    fs.fs.pipe_file("/f/y", b"y" * 9000)
    assert fs.cat_file("/f/y") == b"y" * 9000
    parent_context, forks = fs.context, process.registry.forks
    # a lock held by another thread at the fork would deadlock a child that kept it
    buffers._kept.lock.acquire()
    process._default_lock.acquire()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            fine = (process.registry.forks == forks + 1 and process.registry.in_use() == []
                    and buffers._kept.lock.acquire(timeout=5)
                    and process.default_monitor() is not None
                    and fs.cat_file("/f/y") == b"y" * 9000
                    and fs.context is not parent_context)  # fmt: skip
            os.write(write_end, b"ok" if fine else b"no")
        finally:
            os._exit(0)
    buffers._kept.lock.release()
    process._default_lock.release()
    os.close(write_end)
    said = os.read(read_end, 2)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert said == b"ok"
