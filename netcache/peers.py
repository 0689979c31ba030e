"""Pages from peers: other processes (Dask workers on other machines) that serve a page
before the remote is asked for it.

The fetch path asks the process's :class:`PeerSource`, if one is installed
(:func:`install`; ``netcache.dask.share_pages`` installs one on every worker), for the
pages that neither memory nor the disk tier holds; what it does not answer goes to the
remote. Nothing is installed by default, so nothing changes outside a cluster.

Who holds what: pages are grouped into runs of ``RUN_PAGES`` (file, version, run), and
each run has a *home*, chosen by rendezvous hashing over the live peers
(:func:`home_of`): no directory, and a peer joining or leaving moves only its share. A
page's home serves it from memory or its disk tier, or fetches it from the remote once
for everyone. A home never asks peers for what it serves (:func:`serving`), so a request
never waits on another request queued behind it. And a fetch gets the pages whose home
is its own worker before it asks peers for the others (:meth:`PeerSource.elsewhere`):
a peer asking for those waits on the remote only, never on this fetch's own asks, which
could wait in turn on a fetch of that peer's (a ring of fetches, each holding pages
another asks for, ended only by timeouts).

Answers are checked as data (:func:`check_answer`): the version asked, the pages asked,
each page's length, and each page's CRC32C, computed where the page was served.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import crc32c
from fsspec import AbstractFileSystem

from netcache.cookie import FileCookie
from netcache.page import PageKey

#: Pages in a run: the unit that has a home (4 MiB of 128 KiB pages), so one message
#: carries many pages and a sequential reader asks few homes.
RUN_PAGES = 32


class PeerAnswerError(ValueError):
    """A peer's answer is not what was asked (version, pages, length or checksum)."""


@dataclass
class PeerResult:
    """What peers served for one fetch: ``pages`` (key -> bytes, checked), ``asked``
    (pages asked of peers, in ``requests`` requests), ``fallback`` (pages asked whose
    peer failed, refused or answered wrong: the remote is asked), ``errors`` (peers that
    failed or answered wrong; a refusal under memory pressure is not an error)."""

    pages: dict[PageKey, bytes] = field(default_factory=dict)
    asked: int = 0
    requests: int = 0
    fallback: int = 0
    errors: int = 0


class PeerSource(Protocol):
    """Serves pages from peers; thread-safe, and never raises: failures are counted in
    the result and the caller asks the remote."""

    def elsewhere(self, keys: Sequence[PageKey]) -> list[PageKey]:
        """Those of ``keys`` whose home is another peer now (no I/O): the caller fetches
        the others itself, first."""
        ...

    def fetch(
        self,
        target: AbstractFileSystem,
        target_id: str,
        block_size: int,
        keys: Sequence[PageKey],
        cookies: dict[PageKey, FileCookie],
    ) -> PeerResult: ...


_source: PeerSource | None = None
_local = threading.local()


def install(source: PeerSource) -> None:
    """Make ``source`` this process's peer source (replacing any)."""
    global _source
    _source = source


def uninstall(source: PeerSource | None = None) -> None:
    """Remove the peer source (only if it is ``source``, when given)."""
    global _source
    if source is None or _source is source:
        _source = None


def current() -> PeerSource | None:
    """The peer source to ask, if any: none on a thread that is serving peers."""
    if getattr(_local, "serving", False):
        return None
    return _source


@contextlib.contextmanager
def serving() -> Iterator[None]:
    """While serving peers, this thread's fetches never ask peers themselves."""
    before = getattr(_local, "serving", False)
    _local.serving = True
    try:
        yield
    finally:
        _local.serving = before


def run_of(key: PageKey) -> tuple[str, str, int]:
    """The run ``key`` belongs to."""
    return key.file_id, key.version, key.index // RUN_PAGES


def homes_of(keys: Sequence[PageKey], peers: Sequence[str]) -> dict[PageKey, str]:
    """The home of each of ``keys`` among ``peers`` (not empty), one hash per run."""
    by_run: dict[tuple[str, str, int], str] = {}
    out = {}
    for key in keys:
        run = run_of(key)
        home = by_run.get(run)
        if home is None:
            home = by_run[run] = home_of(run, peers)
        out[key] = home
    return out


def home_of(run: tuple[str, str, int], peers: Sequence[str]) -> str:
    """The home of ``run`` among ``peers`` (rendezvous hashing: the peer whose hash with
    the run is the highest). ``peers`` must not be empty."""
    name = f"{run[0]}/{run[1]}/{run[2]}".encode()

    def weight(peer: str) -> bytes:
        return hashlib.blake2b(name, key=peer.encode()[:64], digest_size=8).digest()

    return max(peers, key=weight)


def page_crc(data: bytes | memoryview) -> int:
    """The CRC32C a served page carries."""
    return int(crc32c.crc32c(data))


def check_answer(answer: Any, cookie: FileCookie, asked: Sequence[int],
                 block_size: int) -> dict[int, bytes]:  # fmt: skip
    """The pages of a peer's ``answer`` (``{"version": ..., "pages": [[index, crc32c,
    bytes], ...]}``), index -> bytes, for ``cookie``'s version; raise
    :class:`PeerAnswerError` if anything in it is not what was asked."""
    if not isinstance(answer, dict) or answer.get("version") != cookie.version:
        raise PeerAnswerError("a peer answered for another version (or not at all)")
    entries = answer.get("pages")
    if not isinstance(entries, (list, tuple)) or len(entries) > len(asked):
        raise PeerAnswerError("a peer answered with more pages than asked (or none)")
    assert cookie.size is not None
    wanted, out = set(asked), {}
    for entry in entries:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
            raise PeerAnswerError("a peer's page is not [index, crc32c, bytes]")
        index, crc, data = entry
        if not isinstance(index, int) or index not in wanted or index in out:
            raise PeerAnswerError(f"a peer answered page {index!r}, not asked")
        expected = min(block_size, cookie.size - index * block_size)
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) != expected:
            raise PeerAnswerError(f"a peer's page {index} is not {expected} bytes")
        if page_crc(data) != crc:
            raise PeerAnswerError(f"a peer's page {index} fails its CRC32C")
        out[index] = data if isinstance(data, bytes) else bytes(data)
    return out
