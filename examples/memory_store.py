"""A store of one's own, in the fewest lines the contract allows: GCRA state
in a dict, for one process (README: "Writing a store").

It holds rates only (``kinds``); a :class:`~fastlimit.Policy` on it counts
quotas in a quota file beside it, and a ``ConcurrencyLimit`` refuses it by
name.  A Memcached or Postgres store has the same shape: keep ``tat`` per
(limiter, key), change it only as :func:`fastlimit.core.gcra.step` says, in
one atomic step (a compare-and-set, a row lock, a script), and answer with
:func:`fastlimit.core.gcra.answer`.

Example:
    >>> import fastlimit
    >>> from fastlimit.examples.memory_store import MemoryStore
    >>> limiter = fastlimit.Limiter("2/1s", MemoryStore(), clock=fastlimit.FakeClock())
    >>> [limiter.allow("alice") for _ in range(3)]
    [True, True, False]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from fastlimit import ConfigurationError, Decision
from fastlimit.core import gcra
from fastlimit.core.results import OnFull
from fastlimit.stores.contract import (
    Kind,
    LeaseSlots,
    OnFullName,
    QuotaCounts,
    check_clock,
    key_identity,
    key_list,
    on_full_code,
)

Key = str | bytes | int


class MemoryRate:
    """One limiter's GCRA: the contract's ``RateState``."""

    on_full = OnFull.DENY  # a dict never fills: there is no full to act on

    def __init__(self, name: str, emission_interval_ns: int, burst: int,
                 clock: Callable[[], int] | None, tat: dict[bytes | int, int],
                 lock: threading.Lock) -> None:
        gcra.check_params(emission_interval_ns, burst)  # the one rule, its messages
        check_clock(clock)
        self.name, self.emission_interval_ns, self.burst = name, emission_interval_ns, burst
        self.tolerance_ns = gcra.tolerance_ns(emission_interval_ns, burst)
        self.clock = clock
        self._now = clock or time.monotonic_ns
        # Shared by every state of this name: two limiters of one name are
        # one limit, and a changed rate applies to the keys at once.
        self._tat, self._lock = tat, lock

    def _check(self, key: Key, cost: int, consume: bool) -> Decision:
        n = gcra.check_cost(cost, self.burst, f"the burst of {self.burst}")
        inc = gcra.increment_ns(n, self.emission_interval_ns)
        ident = key_identity(key)  # "a" and b"a" are one key, -1 and 2**64-1 too
        with self._lock:
            now = self._now()
            allowed, tat = gcra.step(self._tat.get(ident, 0), now, inc, self.tolerance_ns,
                                     consume and n > 0)
            if allowed and consume and n > 0:
                self._tat[ident] = tat
        return Decision(*gcra.answer(allowed, tat - now, inc, self.emission_interval_ns,
                                     self.burst))

    def allow(self, key: Key, cost: int = 1) -> bool:
        return self._check(key, cost, True).allowed

    def hit(self, key: Key, cost: int = 1) -> Decision:
        return self._check(key, cost, True)

    def peek(self, key: Key, cost: int = 1) -> Decision:
        return self._check(key, cost, False)

    def refund(self, key: Key, cost: int = 1) -> bool:
        n = gcra.check_cost(cost, self.burst, f"the burst of {self.burst}")
        ident = key_identity(key)
        with self._lock:
            if ident not in self._tat or n == 0:
                return False
            self._tat[ident] -= n * self.emission_interval_ns
            return True

    def reset(self, key: Key) -> None:
        with self._lock:
            self._tat.pop(key_identity(key), None)

    def hit_many(self, keys: Iterable[Key] | npt.NDArray[np.integer[Any]],
                 cost: int = 1) -> npt.NDArray[np.bool_]:
        gcra.check_cost(cost, self.burst, f"the burst of {self.burst}")  # even with no keys
        listed = [key_identity(k) for k in key_list(keys)]  # a bad key counts none of them
        return np.array([self.allow(k, cost) for k in listed], dtype=bool)


class MemoryStore:
    """GCRA state in this process's memory: the contract's ``Store``."""

    kinds: frozenset[Kind] = frozenset({"rate"})

    def __init__(self) -> None:
        self._tats: dict[str, dict[bytes | int, int]] = {}
        self._lock = threading.Lock()  # one step at a time: the atomicity a store owes

    def rate_state(self, name: str, emission_interval_ns: int, burst: int, *,
                   clock: Callable[[], int] | None = None,
                   on_full: OnFullName | None = None) -> MemoryRate:
        if on_full is not None:
            on_full_code(on_full)  # a bad value is refused, as by every store
        tat = self._tats.setdefault(name, {})
        return MemoryRate(name, emission_interval_ns, burst, clock, tat, self._lock)

    def quota_counts(self, name: str, limit: int, *,
                     on_full: OnFullName | None = None) -> QuotaCounts:
        raise ConfigurationError(f"MemoryStore holds rates only, not the quota {name!r}")

    def lease_slots(self, name: str, *, on_full: OnFullName | None = None,
                    clock: Callable[[], int] | None = None) -> LeaseSlots:
        raise ConfigurationError(
            f"MemoryStore holds rates only, not the concurrency limit {name!r}")

    def close(self) -> None:
        pass
