"""MappingBackend's locking: its own index under its own lock, and calls into the
mapping serialised only for mappings that are not thread-safe."""

from __future__ import annotations

import threading
from collections.abc import Iterator, MutableMapping

import pytest
import zict

from netcache.backends import MappingBackend
from netcache.page import PageKey

BS = 4096


class Watched(MutableMapping[str, bytes]):
    """A mapping that records the most calls inside it at once, and can hold a write
    (``slow``) until ``release`` is set."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.inside = 0
        self.most_inside = 0
        self.count_lock = threading.Lock()
        self.slow: str | None = None
        self.entered = threading.Event()
        self.release = threading.Event()

    def _enter(self) -> None:
        with self.count_lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)

    def _leave(self) -> None:
        with self.count_lock:
            self.inside -= 1

    def __getitem__(self, key: str) -> bytes:
        self._enter()
        try:
            return self.data[key]
        finally:
            self._leave()

    def __setitem__(self, key: str, value: bytes) -> None:
        self._enter()
        try:
            if key.endswith(".page") and self.slow is not None:
                self.entered.set()
                assert self.release.wait(10), "never released"
            self.data[key] = value
        finally:
            self._leave()

    def __delitem__(self, key: str) -> None:
        del self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.data))

    def __len__(self) -> int:
        return len(self.data)


def _key(i: int) -> PageKey:
    return PageKey("ab" * 16, "cd" * 16, i)


def test_a_mapping_write_holds_no_lock_that_bookkeeping_needs() -> None:
    mapping = Watched()
    mapping.slow = "yes"
    backend = MappingBackend(mapping, BS, 64 * BS, thread_safe=True)
    writer = threading.Thread(target=backend.store_page, args=(_key(0), b"x" * BS))
    writer.start()
    assert mapping.entered.wait(10)
    # the write is inside the mapping: the index answers at once, and so do other calls
    assert backend.usage().pages == 0 and not backend.holds(_key(0))
    mapping.slow = None
    backend.store_page(_key(1), b"y" * BS)  # concurrently with the held write
    assert backend.holds(_key(1))
    mapping.release.set()
    writer.join(10)
    assert bytes(backend.load_page(_key(0)) or b"") == b"x" * BS
    assert mapping.most_inside == 2


def test_a_mapping_that_is_not_thread_safe_is_called_one_call_at_a_time() -> None:
    mapping = Watched()
    backend = MappingBackend(mapping, BS, 1024 * BS)  # a user's mapping: serialised
    barrier = threading.Barrier(8)

    def work(n: int) -> None:
        barrier.wait()
        for i in range(50):
            backend.store_page(_key(n * 100 + i), bytes([n]) * BS)
            assert backend.load_page(_key(n * 100 + i)) == bytes([n]) * BS

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert mapping.most_inside == 1 and backend.usage().pages == 400


def test_thread_safety_defaults_follow_the_mapping(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import contextlib

    assert isinstance(MappingBackend({}, BS, 64 * BS)._calls, contextlib.nullcontext)
    zf = zict.File(str(tmp_path / "z"))
    assert isinstance(MappingBackend(zf, BS, 64 * BS)._calls, contextlib.nullcontext)
    assert not isinstance(MappingBackend(Watched(), BS, 64 * BS)._calls, contextlib.nullcontext)
    with pytest.raises(TypeError, match="thread_safe="):
        MappingBackend({}, BS, 64 * BS, thread_safe="yes")  # type: ignore[arg-type]
