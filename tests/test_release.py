"""FS-Cache style release: each maybe_release_page outcome counted exactly, with a disk
tier whose stores are held back so PENDING and STORING are deterministic."""

from __future__ import annotations

import threading
from collections.abc import Callable

import fsspec
import pytest
from conftest import BS, GatedBackend, payload, wait_for

import netcache
from netcache.page import StoreState
from netcache.policies import CancelPending, PressureLevel, WaitForStore


def make_fs(backend: GatedBackend, **kwargs: object) -> netcache.NetCacheFileSystem:
    mem = fsspec.filesystem("memory")
    for name in ("p", "c"):
        mem.pipe_file(f"/rel/{name}.bin", payload(4 * BS, ord(name)))
    kwargs.setdefault("writeback_workers", 1)
    return netcache.NetCacheFileSystem(fs=mem, cache_dir=backend, block_size=BS,
                                       check_interval=None, **kwargs)  # fmt: skip


def pages_of(fs: netcache.NetCacheFileSystem, name: str) -> list:  # type: ignore[type-arg]
    cache = fs.context.page_cache
    fid = fs.context.cookies.file_id(f"/rel/{name}.bin")
    return sorted((p for p in cache._pages.values() if p.key.file_id == fid),
                  key=lambda p: p.key.index)  # fmt: skip


def vmscan(fs: netcache.NetCacheFileSystem) -> dict[str, int]:
    v = fs.stats().vmscan
    return {"nos": v.nos, "gon": v.gon, "bsy": v.bsy, "can": v.can, "wt": v.wt, "kep": v.kep}


def test_bsy_can_then_nos() -> None:
    backend = GatedBackend()
    fs = make_fs(backend, release_policy=CancelPending())
    fs.cat_file("/rel/p.bin")
    assert backend.storing.wait(10)
    states = [p.state for p in pages_of(fs, "p")]
    assert states == [StoreState.STORING] + [StoreState.PENDING] * 3
    freed = fs.reclaim(4 * BS)
    assert freed == 3 * BS
    # short of the goal with a page busy: a second walk looked at it again (an answer a
    # look: bsy counts twice)
    assert vmscan(fs) == {"nos": 0, "gon": 0, "bsy": 2, "can": 3, "wt": 0, "kep": 0}
    assert fs.stats().pages.n == 1
    backend.gate.set()
    assert fs.flush(10)
    assert len(backend.stored) == 1  # cancelled stores never ran
    assert fs.reclaim(BS) == BS
    assert vmscan(fs)["nos"] == 1
    assert fs.stats().pages.n == 0


def test_a_worker_stores_the_pages_following_its_page_in_one_call() -> None:
    class Batching(GatedBackend):
        store_batch_pages = 3

        def __init__(self) -> None:
            super().__init__()
            self.calls: list[list[tuple[str, int]]] = []

        def store_pages(self, pages):  # type: ignore[no-untyped-def]
            self.calls.append([(name[k.file_id], k.index) for k, _ in pages])
            super().store_pages(pages)

    backend = Batching()
    fs = make_fs(backend)
    name = {fs.context.cookies.file_id(f"/rel/{n}.bin"): n for n in "pc"}
    fs.cat_file("/rel/c.bin", 3 * BS, 4 * BS)
    assert backend.storing.wait(10)  # the worker holds c's last page: the rest queue up
    fs.cat_file("/rel/p.bin", 0, 2 * BS)
    fs.cat_file("/rel/c.bin", 0, BS)
    fs.cat_file("/rel/p.bin", 2 * BS, 4 * BS)
    backend.gate.set()
    assert fs.flush(10)
    # each call: one page and those queued right behind it that follow it in its file
    assert backend.calls == [[("c", 3)], [("p", 0), ("p", 1)], [("c", 0)], [("p", 2), ("p", 3)]]
    assert [p.state for p in pages_of(fs, "p")] == [StoreState.STORED] * 4
    assert fs.stats().stores.pgs == 6


def test_a_store_call_failing_part_way_is_undone_for_an_invalidated_file() -> None:
    import errno

    from netcache.backends import MappingBackend

    class FailsPartWay(MappingBackend):
        store_batch_pages = 4

        def __init__(self) -> None:
            super().__init__({}, BS, 1 << 26)
            self.entered, self.go = threading.Event(), threading.Event()

        def store_pages(self, pages):  # type: ignore[no-untyped-def]
            self.entered.set()
            if not self.go.wait(30):
                raise TimeoutError("test gate never opened")
            self.store_page(*pages[0])
            raise OSError(errno.EIO, "the disk failed after the first page")

    backend = FailsPartWay()
    fs = make_fs(backend)  # type: ignore[arg-type]
    fs.cat_file("/rel/p.bin")
    cookie = fs.reader.pin_version("/rel/p.bin")
    assert backend.entered.wait(10)  # a store call is running
    fs.invalidate("/rel/p.bin")
    backend.go.set()
    assert fs.flush(10)
    assert fs.stats().stores.err >= 1
    keys = [netcache.page.PageKey(cookie.file_id, cookie.version, i) for i in range(4)]
    assert [backend.load_page(key) for key in keys] == [None] * 4  # its first page undone


def before_cancelling(writeback: object, hook: Callable[[object], None]) -> None:
    """Run ``hook(page)`` in the write-back's ``cancel_if_pending`` before it takes its
    lock: the window between a release policy's first look at a page and its decision."""
    cancel = writeback.cancel_if_pending  # type: ignore[attr-defined]

    def hooked(page: object) -> object:
        hook(page)
        return cancel(page)

    writeback.cancel_if_pending = hooked  # type: ignore[attr-defined]


def test_gon_store_finishes_between_look_and_lock() -> None:
    backend = GatedBackend()
    fs = make_fs(backend, release_policy=CancelPending())
    fs.cat_file("/rel/p.bin", 0, BS)
    assert backend.storing.wait(10)
    page = pages_of(fs, "p")[0]
    writeback = fs.context.writeback
    assert writeback is not None

    def finish_store(p: object) -> None:
        backend.gate.set()
        assert wait_for(lambda: page.state is StoreState.STORED)

    before_cancelling(writeback, finish_store)
    assert fs.reclaim(BS) == BS
    assert vmscan(fs) == {"nos": 0, "gon": 1, "bsy": 0, "can": 0, "wt": 0, "kep": 0}


def _clean_then_pending(backend: GatedBackend, fs: netcache.NetCacheFileSystem) -> None:
    """Clean pages of c.bin that are hotter than the pending pages of p.bin."""
    backend.gate.set()
    fs.cat_file("/rel/c.bin")
    assert fs.flush(10)
    backend.gate.clear()
    backend.storing.clear()
    fs.cat_file("/rel/p.bin")
    assert backend.storing.wait(10)
    fs.cat_file("/rel/c.bin")  # c.bin is now the most recently used


def test_graded_moderate_releases_clean_pages_before_cancelling() -> None:
    backend = GatedBackend()
    fs = make_fs(backend)
    _clean_then_pending(backend, fs)
    assert fs.reclaim(4 * BS, level=PressureLevel.MODERATE) == 4 * BS
    assert vmscan(fs) == {"nos": 4, "gon": 0, "bsy": 1, "can": 0, "wt": 0, "kep": 3}
    assert [p.state for p in pages_of(fs, "p")][1:] == [StoreState.PENDING] * 3
    # not enough clean pages left: the second walk cancels
    assert fs.reclaim(3 * BS, level=PressureLevel.MODERATE) == 3 * BS
    assert vmscan(fs) == {"nos": 4, "gon": 0, "bsy": 3, "can": 3, "wt": 0, "kep": 6}
    backend.gate.set()


def test_graded_high_cancels_at_once() -> None:
    backend = GatedBackend()
    fs = make_fs(backend)
    _clean_then_pending(backend, fs)
    assert fs.reclaim(4 * BS, level=PressureLevel.HIGH) == 4 * BS
    assert vmscan(fs) == {"nos": 1, "gon": 0, "bsy": 1, "can": 3, "wt": 0, "kep": 0}
    backend.gate.set()


def test_graded_never_cancels_without_pressure() -> None:
    backend = GatedBackend()
    fs = make_fs(backend)
    fs.cat_file("/rel/p.bin")
    assert backend.storing.wait(10)
    assert fs.reclaim(4 * BS, level=PressureLevel.NONE) == 0
    # both walks keep every pending page: nothing cancelled, nothing freed
    assert vmscan(fs) == {"nos": 0, "gon": 0, "bsy": 2, "can": 0, "wt": 0, "kep": 6}
    backend.gate.set()


def test_wait_for_store_with_timeout_counts_wt() -> None:
    backend = GatedBackend()
    fs = make_fs(backend, release_policy=WaitForStore(timeout=1.0))
    fs.cat_file("/rel/p.bin", 0, 2 * BS)
    assert backend.storing.wait(10)
    assert fs.reclaim(2 * BS) == BS  # page 1 cancelled; page 0 waited for, still storing
    # looked at again, with no time left to wait
    assert vmscan(fs) == {"nos": 0, "gon": 0, "bsy": 2, "can": 1, "wt": 1, "kep": 0}
    writeback = fs.context.writeback
    assert writeback is not None
    # the store is let go once reclaim found it busy and starts to wait: it finishes
    # while reclaim waits (on the store's own event; the timeout only bounds a store that
    # never ends). Let go any earlier, it could finish before reclaim's look, which would
    # then release the page without waiting.
    wait = writeback.wait_until_stored

    def let_go_then_wait(page: object, timeout: float | None) -> bool:
        backend.gate.set()
        return wait(page, timeout)  # type: ignore[arg-type]

    writeback.wait_until_stored = let_go_then_wait  # type: ignore[method-assign]
    assert fs.reclaim(BS) == BS  # waited, and the store finished in time
    assert vmscan(fs) == {"nos": 0, "gon": 1, "bsy": 2, "can": 1, "wt": 2, "kep": 0}
    # a later instance's policy, its settings included, is the shared cache's from then on
    make_fs(backend, release_policy=WaitForStore(timeout=10))
    assert fs.context.page_cache.release_policy.timeout == 10  # type: ignore[attr-defined]


def test_routine_eviction_never_cancels_a_store() -> None:
    backend = GatedBackend()
    mem = fsspec.filesystem("memory")
    data = payload(12 * BS, 5)
    mem.pipe_file("/ev/f.bin", data)
    fs = netcache.NetCacheFileSystem(fs=mem, cache_dir=backend, block_size=BS,
                                     memory_limit=4 * BS, writeback_workers=1)  # fmt: skip
    for i in range(12):
        assert fs.cat_file("/ev/f.bin", i * BS, (i + 1) * BS) == data[i * BS : (i + 1) * BS]
        assert backend.storing.wait(10)  # the worker holds page 0 before page 1 comes
    st = fs.stats()
    assert st.vmscan.can == 0
    assert st.pages.n <= 4
    # the page being stored stayed resident through all that eviction
    first = fs.context.page_cache._pages.get(next(iter(backend_keys(fs, 0))))
    assert first is not None and first.store_pending
    # the queue's share is a quarter of memory: past it the reader stored pages itself
    assert st.stores.ok == 12 and st.stores.own == 11 and st.unstored.pressure == 0
    assert st.evict.n == 12 - st.pages.n
    backend.gate.set()
    assert fs.flush(10)
    assert sorted(k.index for k in backend.stored) == list(range(12))  # every page


def backend_keys(fs: netcache.NetCacheFileSystem, index: int) -> list:  # type: ignore[type-arg]
    return [k for k in fs.context.page_cache._pages if k.index == index]


def test_flush_times_out_while_held_then_completes() -> None:
    backend = GatedBackend()
    fs = make_fs(backend)
    fs.cat_file("/rel/p.bin")
    assert fs.flush(timeout=0.05) is False
    assert fs.stats().stores.pend == 4 * BS
    backend.gate.set()
    assert fs.flush(timeout=10) is True
    st = fs.stats()
    assert st.stores.pend == 0 and st.stores.pgs == 4 and st.stores.run == 4


@pytest.mark.parametrize("policy", [CancelPending(), netcache.PressureGraded()])
def test_reclaim_with_nothing_pending_is_all_nos(policy: object) -> None:
    mem = fsspec.filesystem("memory")
    mem.pipe_file("/nos/f.bin", payload(5 * BS, 1))
    fs = netcache.NetCacheFileSystem(fs=mem, cache_dir=False, block_size=BS,
                                     release_policy=policy)  # fmt: skip
    fs.cat_file("/nos/f.bin")
    assert fs.reclaim(2 * BS + 1) == 3 * BS
    assert vmscan(fs) == {"nos": 3, "gon": 0, "bsy": 0, "can": 0, "wt": 0, "kep": 0}
    assert fs.stats().pages.bytes == 2 * BS


class Stalled(GatedBackend):
    """Eight pages a store, held by the gate (a stalled disk)."""

    store_batch_pages = 8


def test_wait_for_store_bounds_the_whole_reclaim_not_each_page() -> None:
    backend = Stalled()
    fs = make_fs(backend, release_policy=WaitForStore(timeout=0.5), memory_monitor=False)
    fs.fs.pipe_file("/rel/e.bin", payload(8 * BS, 9))
    fs.cat_file("/rel/e.bin")
    writeback = fs.context.writeback
    assert writeback is not None
    assert wait_for(lambda: len(writeback._storing) == 8)  # 8 pages being stored
    asked: list[float | None] = []
    wait = writeback.wait_until_stored

    def recording(page, timeout):  # type: ignore[no-untyped-def]
        asked.append(timeout)
        return wait(page, timeout)

    writeback.wait_until_stored = recording  # type: ignore[method-assign]
    assert fs.reclaim(8 * BS) == 0
    # one wait took the time the policy allows the whole call; no page got more after it
    assert len(asked) == 1 and asked[0] is not None and asked[0] <= 0.5
    assert vmscan(fs)["bsy"] == 16 and vmscan(fs)["wt"] == 1
    backend.gate.set()
    assert fs.flush(10)


def test_a_page_stored_while_the_walk_went_on_is_released_by_the_second_walk() -> None:
    backend = GatedBackend()
    fs = make_fs(backend, release_policy=CancelPending(), memory_monitor=False)
    fs.cat_file("/rel/p.bin", 0, BS)
    assert backend.storing.wait(10)  # page 0 being stored
    cache = fs.context.page_cache
    release = cache.release
    firsts: list[int] = []

    def storing_ends_after_the_first_look(page, *args):  # type: ignore[no-untyped-def]
        outcome = release(page, *args)
        if not firsts:
            firsts.append(page.key.index)
            backend.gate.set()  # the store ends while the walk goes on
            assert fs.flush(10)
        return outcome

    cache.release = storing_ends_after_the_first_look  # type: ignore[method-assign]
    assert fs.reclaim(BS) == BS  # busy at the first look, released at the second
    assert vmscan(fs) == {"nos": 1, "gon": 0, "bsy": 1, "can": 0, "wt": 0, "kep": 0}
