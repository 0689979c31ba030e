"""Eviction policies (which page leaves memory) and release policies (what reclaim does
with a page whose store is pending)."""

from netcache.policies.eviction import LRU, EvictionPolicy, TwoQ, make_eviction_policy
from netcache.policies.release import (
    CancelPending,
    Outcome,
    PressureGraded,
    PressureLevel,
    Reason,
    ReleasePolicy,
    ReleaseRequest,
    StoreControl,
    WaitForStore,
    make_release_policy,
)

__all__ = [
    "LRU",
    "CancelPending",
    "EvictionPolicy",
    "Outcome",
    "PressureGraded",
    "PressureLevel",
    "Reason",
    "ReleasePolicy",
    "ReleaseRequest",
    "StoreControl",
    "TwoQ",
    "WaitForStore",
    "make_eviction_policy",
    "make_release_policy",
]
