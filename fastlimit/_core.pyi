"""Stubs for the compiled core (fastlimit/_core.pyx)."""

from collections.abc import Callable, Iterable, Sequence
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

_Key: TypeAlias = str | bytes | int

MAX_TOLERANCE_NS: int

def monotonic_ns() -> int: ...
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

class TableView:
    secret0: int
    secret1: int
    def __init__(
        self,
        buffer: object,
        slots_offset: int,
        nbuckets: int,
        counters_offset: int,
        secret0: int,
        secret1: int,
    ) -> None: ...
    def release(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def _hold_claim(self, fp: int, now: int) -> int: ...

class Gcra:
    emission_interval_ns: int
    burst: int
    tolerance_ns: int
    on_full: int
    clock: Callable[[], int] | None
    name: str
    def __init__(
        self,
        table: TableView,
        name: str,
        emission_interval_ns: int,
        burst: int,
        clock: Callable[[], int] | None = None,
        on_full: int = 0,
    ) -> None: ...
    def fingerprint(self, key: _Key) -> int: ...
    def allow(self, key: _Key, cost: int = 1) -> bool: ...
    def hit(self, key: _Key, cost: int = 1) -> Decision: ...
    def peek(self, key: _Key, cost: int = 1) -> Decision: ...
    def refund(self, key: _Key, cost: int = 1) -> bool: ...
    def reset(self, key: _Key) -> None: ...
    def hit_many(
        self, keys: Sequence[_Key] | Iterable[_Key] | npt.NDArray[np.integer], cost: int = 1
    ) -> npt.NDArray[np.bool_]: ...
