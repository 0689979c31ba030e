"""Release policies: what reclaim does with a victim page whose store may be pending.

This is ``fscache_maybe_release_page()`` in user space. Reclaim (``fs.reclaim`` or the
memory-pressure monitor) walks victims coldest first and asks the policy about each; the
policy answers with exactly one :class:`Outcome`, which reclaim counts on the VmScan
line. To write one, subclass :class:`ReleasePolicy` and implement ``maybe_release_page``;
use ``request.stores`` to look at, cancel or wait for the page's store.
"""

from __future__ import annotations

import enum
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Protocol

from netcache.page import Page, StoreState


class PressureLevel(enum.IntEnum):
    """How badly memory is needed, as the memory-pressure monitor grades it."""

    NONE = 0
    MODERATE = 1
    HIGH = 2
    CRITICAL = 3


class Reason(enum.Enum):
    """Why reclaim runs: a caller asked (``fs.reclaim``) or the monitor saw pressure."""

    RECLAIM = "reclaim"
    PRESSURE = "pressure"


class Outcome(enum.Enum):
    """The answer for one victim, with the kernel's VmScan names."""

    NOS = "nos"  # no store pending: released
    GON = "gon"  # store pending at the first look, finished by the time of the lock: released
    BSY = "bsy"  # being stored: not released
    CAN = "can"  # store queued, not started: cancelled, released
    KEP = "kep"  # store queued and kept for now by the policy's choice: not released

    @property
    def released(self) -> bool:
        return self in _RELEASED


_RELEASED = frozenset({Outcome.NOS, Outcome.GON, Outcome.CAN})


class StoreControl(Protocol):
    """What a policy may do about a page's store (the write-back queue implements it)."""

    def cancel_if_pending(self, page: Page) -> StoreState:
        """Take the queue's lock; cancel the store if it has not started. Returns the
        state seen under the lock (``PENDING`` means it was cancelled). Never waits."""
        ...

    def wait_until_stored(self, page: Page, timeout: float | None) -> bool:
        """Wait until the page has no store pending; False on timeout. Counted in ``wt``."""
        ...


@dataclass(frozen=True)
class ReleaseRequest:
    """Why a policy is asked, and the handle on the page's store.

    ``attempt`` is 1 on reclaim's first walk over the victims and 2 on a second walk,
    made only when the first did not free enough and left pages kept (``KEP``) or busy
    (``BSY``). ``may_block`` is False where waiting could hold up a reader. ``started``
    is when the reclaim call began (``time.monotonic``), the same for every page it
    asks about: a policy that waits bounds the whole call by it.
    """

    reason: Reason
    level: PressureLevel
    attempt: int
    stores: StoreControl
    may_block: bool = True
    started: float = field(default_factory=time.monotonic)


class ReleasePolicy(ABC):
    """Decides, for one victim page, whether reclaim may drop it.

    Must be thread-safe and, unless documented otherwise, must never wait.
    """

    @abstractmethod
    def maybe_release_page(self, page: Page, request: ReleaseRequest) -> Outcome: ...


def _release_or_cancel(page: Page, stores: StoreControl) -> Outcome:
    """The seed commit: release a clean page, cancel a queued store, skip a running one."""
    if not page.store_pending:  # first look, without the lock
        return Outcome.NOS
    state = stores.cancel_if_pending(page)
    if state is StoreState.STORING:
        return Outcome.BSY
    if state is StoreState.PENDING:
        return Outcome.CAN
    return Outcome.GON


class CancelPending(ReleasePolicy):
    """Exactly ``fscache_maybe_release_page`` after the OOM fix: release or cancel, never
    wait, at any pressure."""

    def maybe_release_page(self, page: Page, request: ReleaseRequest) -> Outcome:
        return _release_or_cancel(page, request.stores)


class PressureGraded(ReleasePolicy):
    """The default. Cancels stores only as hard as the pressure demands.

    At ``MODERATE`` pressure (and for an explicit ``fs.reclaim``) pages with no store
    pending go first: pages with a store pending are kept on the first walk and cancelled
    only on the second, when the first did not free enough (the wish the seed commit's
    author left open). At ``HIGH`` and ``CRITICAL`` queued stores are cancelled at once.
    With no pressure at all it never cancels. Never waits.
    """

    def maybe_release_page(self, page: Page, request: ReleaseRequest) -> Outcome:
        cancel = request.level >= PressureLevel.HIGH or (
            request.level >= PressureLevel.MODERATE and request.attempt >= 2
        )
        if cancel:
            return _release_or_cancel(page, request.stores)
        state = page.state
        if state is StoreState.STORING:
            return Outcome.BSY
        if state is StoreState.PENDING:
            return Outcome.KEP
        return Outcome.NOS


class WaitForStore(ReleasePolicy):
    """Waits for a page's store instead of cancelling it: kept for comparison.

    ``timeout=None`` is FS-Cache before the OOM fix: wait, with no limit, until the store
    is done, then release. It deadlocks when the store itself needs the memory that
    reclaim is trying to free, and it is the one deliberate exception to "nothing blocks
    forever". With a timeout it is what later kernels did: cancel a queued store, and for
    a running one wait when the caller may block, then look once more without waiting.
    ``timeout`` bounds the waits of one whole reclaim call (from ``request.started``),
    not each page's: eight busy pages on a stalled disk hold reclaim ``timeout`` seconds,
    not eight times that.
    """

    def __init__(self, timeout: float | None = None) -> None:
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0
        ):
            raise ValueError(f"timeout={timeout!r} must be None or a number of seconds >= 0")
        self.timeout = timeout

    def maybe_release_page(self, page: Page, request: ReleaseRequest) -> Outcome:
        if not page.store_pending:
            return Outcome.NOS
        if self.timeout is None:
            request.stores.wait_until_stored(page, None)
            return Outcome.GON
        outcome = _release_or_cancel(page, request.stores)
        if outcome is not Outcome.BSY or not request.may_block:
            return outcome
        remaining = self.timeout - (time.monotonic() - request.started)
        if remaining > 0 and request.stores.wait_until_stored(page, remaining):
            return Outcome.GON
        return Outcome.BSY


def make_release_policy(spec: ReleasePolicy | None) -> ReleasePolicy:
    """The policy for ``release_policy=``; raises naming the argument."""
    if spec is None:
        return PressureGraded()
    if isinstance(spec, ReleasePolicy):
        return spec
    raise TypeError(
        f"release_policy={spec!r} must be None (PressureGraded) or a ReleasePolicy, such as "
        "CancelPending() or WaitForStore(timeout=1.0)"
    )
