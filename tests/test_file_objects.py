"""Files netcache opens behave as Python's binary files: the same bytes, positions and
kinds of error as ``open()``, over random sequences of operations (hypothesis), with a
closed file and a read-only file's write among them."""

from __future__ import annotations

import io
import os
import random
from typing import Any

import fsspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import netcache

BS = 4096
#: Lines of every length around the page size, empty ones, and no newline at the end.
_rng = random.Random(7)
DATA = (
    b"".join(
        _rng.randbytes(_rng.choice([0, 1, 5, 80, BS - 1, BS, BS + 3])).replace(b"\n", b"x") + b"\n"
        for _ in range(40)
    )
    + b"tail without a newline"
)
SIZE = len(DATA)
EXAMPLES = 1500

offsets = st.integers(min_value=-SIZE - 10, max_value=SIZE + 10)
sizes = st.one_of(st.none(), st.integers(min_value=-3, max_value=SIZE + 10))
OPERATION = st.one_of(
    st.tuples(st.just("read"), sizes),
    st.tuples(st.just("read1"), sizes),
    st.tuples(st.just("readinto"), st.integers(min_value=0, max_value=2 * BS)),
    st.tuples(st.just("readinto1"), st.integers(min_value=0, max_value=2 * BS)),
    st.tuples(st.just("readline"), sizes),
    st.tuples(st.just("readlines"), sizes),
    st.tuples(st.just("seek"), offsets, st.integers(min_value=-1, max_value=5)),
    st.tuples(st.just("seek_float"), st.floats(allow_nan=False, allow_infinity=False)),
    st.tuples(st.just("tell")),
    st.tuples(st.just("next")),
    st.tuples(st.just("write"), st.binary(max_size=8)),
    st.tuples(st.just("close")),
    st.tuples(st.just("flags")),
)


def apply(f: Any, op: tuple[Any, ...]) -> Any:
    """One operation's outcome: its value, or the kind of error it raised."""
    name, *args = op
    try:
        if name in ("readinto", "readinto1"):
            buf = bytearray(args[0])
            n = getattr(f, name)(buf)
            return n, bytes(buf[:n])
        if name == "seek_float":
            return f.seek(args[0])
        if name == "next":
            return next(f, "end")
        if name == "close":
            return f.close()
        if name == "flags":
            return f.closed, f.readable(), f.seekable(), f.writable()
        return getattr(f, name)(*args)
    except Exception as exc:  # the kind must match; messages may differ
        return ("raised", io.UnsupportedOperation if isinstance(exc, io.UnsupportedOperation)
                else type(exc))  # fmt: skip


def _sized(op: tuple[Any, ...]) -> bool:
    return isinstance(op[1], int)


def _one_read_answer(f: Any, op: tuple[Any, ...], pos: int) -> bool:
    """Whether ``f``'s answer to a read1/readinto1 from ``pos`` is one Python allows."""
    name, size = op
    rest = DATA[pos:] if pos < SIZE else b""
    if name == "readinto1":
        buf = bytearray(size)
        got = bytes(buf[: f.readinto1(buf)])
    elif size < -1:
        return apply(f, op) == ("raised", ValueError)
    else:
        got = f.read1(size)
    wanted = len(rest) if size < 0 else min(size, len(rest))
    return rest.startswith(got) and (0 < len(got) <= wanted or wanted == 0 == len(got))


@pytest.fixture(scope="module")
def local_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = os.fspath(tmp_path_factory.mktemp("files") / "lines.bin")
    with open(path, "wb") as f:
        f.write(DATA)
    return path


@pytest.fixture(scope="module")
def cache(local_file: str) -> netcache.NetCacheFileSystem:
    return netcache.NetCacheFileSystem(fs=fsspec.filesystem("file"), cache_dir=False,
                                       block_size=BS, memory_limit="64KiB",
                                       memory_monitor=False, skip_instance_cache=True)  # fmt: skip


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(ops=st.lists(OPERATION, max_size=25))
def test_a_netcache_file_answers_as_python_open(
    local_file: str, cache: netcache.NetCacheFileSystem, ops: list[tuple[Any, ...]]
) -> None:
    with open(local_file, "rb") as theirs, cache.open(local_file, "rb") as ours:
        for op in ops:
            if op[0] in ("read1", "readinto1") and not theirs.closed and _sized(op):
                # "at most one raw read": any count from 1 to the size (all the rest for
                # -1) is Python's answer, and Python's own depends on its buffer. Ours
                # must be one of them; then both files go on from the same place.
                assert _one_read_answer(ours, op, theirs.tell()), op
                theirs.seek(ours.tell())
                continue
            assert apply(ours, op) == apply(theirs, op), op
            if not theirs.closed:
                assert ours.tell() == theirs.tell(), op


def test_the_cases_the_issue_names(local_file: str, cache: netcache.NetCacheFileSystem) -> None:
    with cache.open(local_file, "rb") as f:
        assert f.readline(3) == DATA[:3]
        f.seek(0)
        first = DATA[: DATA.index(b"\n") + 1]
        assert f.readlines(1) == [first]
        assert f.read1(4) == DATA[len(first) : len(first) + 4]
        with pytest.raises(ValueError):
            f.read(-2)
        with pytest.raises(OSError):
            f.seek(-1)
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"x")
        f.seek(0, io.SEEK_END)
        assert f.readlines() == []
    for op in (f.read, f.tell, lambda: f.seek(0), f.readline):
        with pytest.raises(ValueError):
            op()
