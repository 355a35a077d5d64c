"""Stubs for the compiled core (fastlimit/_core.pyx)."""

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeAlias, final

import numpy as np
import numpy.typing as npt

from fastlimit.core.results import Step

_Key: TypeAlias = str | bytes | int

MAX_TOLERANCE_NS: int
MAX_CLOCK_NS: int
QUOTA_MAX_COUNT: int
QUOTA_MAX_TAG: int

def monotonic_ns() -> int: ...
def next_unit_ns(limit: int, reset_after_ns: int, emission_interval_ns: int) -> int: ...
def siphash13(k0: int, k1: int, data: bytes) -> int: ...
def siphash13_u64(k0: int, k1: int, word: int) -> int: ...
def _refresh_owner() -> None: ...
def _set_lock_wait_limit(ns: int) -> None: ...

class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_after_ns: int
    retry_after_ns: int
    def __init__(
        self,
        allowed: bool,
        limit: int,
        remaining: int,
        reset_after_ns: int = 0,
        retry_after_ns: int = 0,
    ) -> None: ...
    @property
    def reset_after(self) -> float: ...
    @property
    def retry_after(self) -> float: ...
    def __bool__(self) -> bool: ...

def metrics_stripe_bytes(nlimiters: int) -> int: ...
def header_cas(buffer: Any, offset: int, expected: int, value: int) -> int: ...

class TableView:
    secret0: int
    secret1: int
    def __new__(
        cls,
        buffer: object,
        slots_offset: int,
        nbuckets: int,
        counters_offset: int,
        secret0: int,
        secret1: int,
        metrics_offset: int,
        nlimiters: int,
        nstripes: int,
    ) -> TableView: ...
    def release(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def _hold_claim(self, fp: int, now: int) -> int: ...

class _Keyed:
    name: str
    on_full: int
    def fingerprint(self, key: _Key) -> int: ...
    def reset(self, key: _Key) -> None: ...

@final
class Gcra(_Keyed):
    emission_interval_ns: int
    burst: int
    tolerance_ns: int
    clock: Callable[[], int] | None
    def __new__(
        cls,
        table: TableView,
        name: str,
        emission_interval_ns: int,
        burst: int,
        clock: Callable[[], int] | None = None,
        on_full: int = 0,
        register: bool = True,
    ) -> Gcra: ...
    def allow(self, key: _Key, cost: int = 1) -> bool: ...
    def hit(self, key: _Key, cost: int = 1) -> Decision: ...
    def peek(self, key: _Key, cost: int = 1) -> Decision: ...
    def refund(self, key: _Key, cost: int = 1) -> bool: ...
    def reserve(self, key: _Key, cost: int = 1,
                max_wait_ns: int = ...) -> tuple[int, int]: ...
    def cancel(self, key: _Key, cost: int, tat_ns: int) -> bool: ...
    def hold(self, key: _Key, ahead_ns: int) -> int: ...
    def hit_many(
        self, keys: Sequence[_Key] | Iterable[_Key] | npt.NDArray[np.integer], cost: int = 1
    ) -> npt.NDArray[np.bool_]: ...

@final
class QuotaCounter(_Keyed):
    limit: int
    def __new__(cls, table: TableView, name: str, limit: int, on_full: int = 0,
                register: bool = True) -> QuotaCounter: ...
    def step(self, key: _Key, tag: int, cost: int, mode: int,
             left_ns: int = 0) -> tuple[Step, int]: ...
    def answer(self, key: _Key, tag: int, cost: int, mode: int,
               left_ns: int = 0) -> Decision: ...

@final
class Leases(_Keyed):
    reclaimed: int
    def __new__(cls, table: TableView, name: str, on_full: int = 0) -> Leases: ...
    @staticmethod
    def owner_word() -> int: ...
    def try_acquire(self, key: _Key, limit: int, start: int = 0) -> int: ...
    def acquire(self, key: _Key, limit: int, start: int = 0) -> int: ...
    def release(self, key: _Key, index: int) -> bool: ...
    def in_flight(self, key: _Key, limit: int) -> int: ...
