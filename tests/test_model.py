"""A property-based test: random sequences of reads, seeks, cat_ranges, remote rewrites,
writes through netcache, invalidations, restarts and reclaims, checked against a plain
model of the remote's bytes (``check_interval=0``: no staleness allowed)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import uuid

import hypothesis.strategies as st
from fsspec.implementations.memory import MemoryFileSystem
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import netcache

PAGE = 4096
NAMES = ["a", "b", "c"]
EXAMPLES = int(os.environ.get("NETCACHE_HYPOTHESIS_EXAMPLES", "40"))


class TaggedMemory(MemoryFileSystem):
    """A memory target whose ``info`` carries an ETag of the content, as HTTP and S3
    targets do, so every rewrite is a new version."""

    def info(self, path, **kwargs):  # type: ignore[no-untyped-def]
        out = super().info(path, **kwargs)
        if out.get("type") == "file":
            out["ETag"] = hashlib.sha1(self.cat_file(path)).hexdigest()
        return out


contents = st.binary(min_size=0, max_size=6 * PAGE).map(lambda b: b * (1 + len(b) % 3))


class CacheAgainstModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"/model/{uuid.uuid4().hex}"
        self.target = TaggedMemory(skip_instance_cache=True)
        self.folder = tempfile.mkdtemp(prefix="netcache-model-")
        self.model: dict[str, bytes] = {}
        self.fs = self._open_cache()

    def _open_cache(self) -> netcache.NetCacheFileSystem:
        return netcache.NetCacheFileSystem(
            fs=self.target, cache_dir=self.folder, block_size=PAGE, memory_limit=6 * PAGE,
            disk_limit=20 * PAGE, check_interval=0, readahead=2 * PAGE,
            memory_monitor=False, skip_instance_cache=True,
        )  # fmt: skip

    def path(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    @rule(name=st.sampled_from(NAMES), data=contents)
    def remote_rewrite(self, name: str, data: bytes) -> None:
        self.target.pipe_file(self.path(name), data)
        self.model[name] = data

    @rule(name=st.sampled_from(NAMES), data=contents)
    def write_through(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(self.path(name), data)
        self.model[name] = data

    @rule(
        name=st.sampled_from(NAMES),
        reads=st.lists(
            st.tuples(st.integers(0, 40 * PAGE), st.integers(0, 3 * PAGE)), min_size=1, max_size=5
        ),
    )
    def open_seek_read(self, name: str, reads: list[tuple[int, int]]) -> None:
        if name not in self.model:
            return
        data = self.model[name]
        with self.fs.open(self.path(name), "rb") as f:
            assert f.size == len(data)
            for start, length in reads:
                f.seek(start)
                assert f.read(length) == data[start : start + length]

    @rule(name=st.sampled_from(NAMES), start=st.integers(0, 8 * PAGE), data=contents)
    def rewrite_while_open(self, name: str, start: int, data: bytes) -> None:
        if name not in self.model:
            return
        old = self.model[name]
        with self.fs.open(self.path(name), "rb") as f:
            f.read(PAGE)
            self.remote_rewrite(name, data)
            f.seek(start)
            # its own version, or an honest error: never bytes of two versions
            with contextlib.suppress(netcache.FileChangedError):
                assert f.read(2 * PAGE) == old[start : start + 2 * PAGE]

    @rule(ranges=st.lists(
        st.tuples(st.sampled_from(NAMES), st.integers(0, 30 * PAGE), st.integers(0, 30 * PAGE)),
        min_size=1, max_size=6,
    ))  # fmt: skip
    def cat_ranges(self, ranges: list[tuple[str, int, int]]) -> None:
        ranges = [r for r in ranges if r[0] in self.model]
        if not ranges:
            return
        out = self.fs.cat_ranges([self.path(n) for n, _, _ in ranges],
                                 [s for _, s, _ in ranges], [e for _, _, e in ranges])  # fmt: skip
        for (name, start, end), got in zip(ranges, out, strict=True):
            assert got == self.model[name][start:end]

    @rule(name=st.sampled_from(NAMES))
    def invalidate(self, name: str) -> None:
        self.fs.invalidate(self.path(name))

    @rule(nbytes=st.integers(0, 10 * PAGE))
    def reclaim(self, nbytes: int) -> None:
        self.fs.reclaim(nbytes)

    @rule()
    def restart(self) -> None:
        netcache.close_all()
        self.fs = self._open_cache()

    @invariant()
    def within_budgets(self) -> None:
        st_ = self.fs.stats()
        # memory may exceed its budget only by pages waiting for write-back
        assert st_.pages.bytes <= st_.pages.limit + st_.stores.pend + PAGE
        assert st_.disk.used <= st_.disk.limit

    def teardown(self) -> None:
        netcache.close_all()


CacheAgainstModel.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=25, deadline=None
)
TestCacheAgainstModel = CacheAgainstModel.TestCase
