"""Page buffers: a dropped page's buffer carries a later page only when nothing else
can still read it, and every byte read is right while buffers change hands."""

from __future__ import annotations

import gc
import random
import threading
import weakref
from collections.abc import Iterator

import pytest
from conftest import BS, MiB, http_fs, payload

import netcache
from netcache import buffers
from netcache.buffers import RECYCLE_BYTES, drop_recycled, page_buffer, recycled_bytes
from netcache.page import Page, PageKey
from netcache.testing.httpserver import RangeServer

pytestmark = pytest.mark.skipif(
    not buffers._RECYCLING, reason="buffers are reused only where CPython counts every holder"
)


@pytest.fixture(autouse=True)
def _nothing_kept() -> Iterator[None]:
    # Caches of earlier tests would drop pages during a test (a reclaim by the memory
    # monitor, a collection): their buffers would be kept too, and counted.
    netcache.close_all()
    gc.collect()
    drop_recycled()
    yield
    drop_recycled()


def make_page(data: bytes, index: int = 0) -> Page:
    return Page(PageKey("file", "v1", index), page_buffer(data))


def test_a_dropped_page_lends_its_buffer_to_the_next() -> None:
    page = make_page(payload(BS, 1))
    old = weakref.ref(page.data)
    del page
    assert old() is not None and recycled_bytes() == BS  # kept, not unmapped
    second = payload(BS, 2)
    buf = page_buffer(second)
    assert buf is old()
    assert buf[:] == second and recycled_bytes() == 0


def test_a_page_someone_could_bring_back_keeps_its_buffer() -> None:
    """The write-back queue remembers deferred pages by weak reference: while the page
    dies, such a reference still returns it, so its buffer must not be handed on."""
    page = make_page(payload(BS, 1))
    deferred = weakref.ref(page)
    del page
    assert deferred() is None and recycled_bytes() == 0


@pytest.mark.parametrize("holder", ["view", "reference"])
def test_a_buffer_someone_still_holds_is_not_reused(holder: str) -> None:
    first = payload(BS, 1)
    page = make_page(first)
    # a reader mid-copy holds a view; a backend that keeps what it is given, the buffer
    kept = memoryview(page.data) if holder == "view" else page.data
    del page
    assert recycled_bytes() == 0
    buf = page_buffer(payload(BS, 2))
    assert buf is not (kept.obj if isinstance(kept, memoryview) else kept)
    assert bytes(kept) == first  # what they hold still reads as the page they had


@pytest.mark.parametrize("sizes", ["one", "many"])
def test_buffers_kept_are_bounded_and_given_back(sizes: str) -> None:
    """Whether the pages are all full ones or the last pages of files of every size,
    what is kept stays under ``RECYCLE_BYTES`` in all."""
    n = 2 * RECYCLE_BYTES // BS
    lengths = [BS if sizes == "one" else BS - 1000 * i for i in range(n)]
    pages = [make_page(payload(length, i), i) for i, length in enumerate(lengths)]
    refs = [weakref.ref(page.data) for page in pages]
    del pages
    kept = [ref() for ref in refs if ref() is not None]
    assert recycled_bytes() == sum(map(len, kept)) <= RECYCLE_BYTES
    assert recycled_bytes() > RECYCLE_BYTES - BS  # and it does keep up to that
    del kept
    drop_recycled()
    assert recycled_bytes() == 0 and all(ref() is None for ref in refs)


def test_streaming_past_the_memory_limit_reuses_buffers_and_reads_right(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Four threads read one file through a cache of 8 pages: every page admitted evicts
    one, so buffers change hands all the time, while other threads copy out of them."""
    content = payload(6 * MiB + 777, 5)
    fresh = 0
    make_fresh = buffers.empty_page_buffer

    def counting(nbytes: int):  # type: ignore[no-untyped-def]
        nonlocal fresh
        fresh += 1
        return make_fresh(nbytes)

    monkeypatch.setattr(buffers, "empty_page_buffer", counting)
    errors: list[str] = []
    with RangeServer({"f.bin": content}) as server:
        fs = http_fs(False, memory_limit=8 * BS, check_interval=None)
        url = f"{server.url}/f.bin"

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            with fs.open(url, "rb") as f:
                for _ in range(60):
                    if rng.random() < 0.5:  # a sequential stretch: read-ahead at work
                        start = rng.randrange(len(content))
                        f.seek(start)
                        for _ in range(8):
                            at = f.tell()
                            got = f.read(BS // 2 + 1)
                            if got != content[at : at + BS // 2 + 1]:
                                errors.append(f"thread {seed}: wrong bytes at {at}")
                    else:
                        start = rng.randrange(len(content))
                        f.seek(start)
                        got = f.read(3 * BS)
                        if got != content[start : start + 3 * BS]:
                            errors.append(f"thread {seed}: wrong bytes at {start}")

        threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        fetched = fs.stats().retrievals.remote
    assert errors == []
    assert fetched > 200  # far more pages than fit: the cache turned over many times
    assert fresh < fetched // 2  # most pages were carried by buffers of dropped ones
