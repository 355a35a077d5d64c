"""Limiter: one named rate applied to every key, over a shared store."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable
from typing import Any

import numpy as np

from fastlimit._core import Decision
from fastlimit.clock import asleep_through, sleep_through
from fastlimit.errors import ConfigurationError
from fastlimit.rate import NS_PER_S, Rate
from fastlimit.table import OnFull, SharedTable

__all__ = ["Key", "Limiter"]

Key = str | bytes | int


class Limiter:
    """GCRA: ``rate`` per key, with a burst of up to ``burst`` hits at once.

    Every process whose Limiter has the same ``name`` over the same table
    shares each key's state exactly.  Keys are ``str`` (hashed as UTF-8, so
    ``"a"`` and ``b"a"`` are one key), ``bytes`` or ``int`` (64-bit).

    Args:
        rate: a :class:`Rate` or its text, e.g. ``"100/1h"``.
        store: a :class:`SharedTable` (default: a new anonymous table, shared
            with forked children only) or a backend with the same protocol.
        name: the limiter's name in the store; limiters with different names
            never share state.
        burst: hits allowed at once from a fresh key (default: the rate's
            limit).  The tolerance is ``burst x emission interval``.
        clock: a callable returning monotonic int nanoseconds; default
            CLOCK_MONOTONIC, read in C.  Every user of a table must share one
            clock.  Tests pass a :class:`~fastlimit.FakeClock`.
        on_full: overrides the table's ``on_full`` for this limiter.

    Example:
        >>> from fastlimit import FakeClock
        >>> clock = FakeClock()
        >>> lim = Limiter("2/1s", clock=clock)
        >>> [lim.allow("k") for _ in range(3)]
        [True, True, False]
        >>> clock.advance(0.5)
        >>> lim.hit("k")
        Decision(allowed=True, limit=2, remaining=0, reset_after=1, retry_after=0)
    """

    def __init__(
        self,
        rate: Rate | str,
        store: Any = None,
        *,
        name: str = "default",
        burst: int | None = None,
        clock: Callable[[], int] | None = None,
        on_full: OnFull | None = None,
    ) -> None:
        self.rate = Rate.parse(rate)
        if burst is None:
            burst = self.rate.limit
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ConfigurationError(f"burst must be an int >= 1, got {burst!r}")
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a limiter name must be a non-empty str, got {name!r}")
        self.burst = burst
        self.name = name
        self.clock = clock
        self.on_full = on_full
        self.store = SharedTable.anonymous() if store is None else store
        try:
            impl = self.store._gcra(
                name, self.rate.emission_interval_ns, burst, clock=clock, on_full=on_full)
        except ValueError as e:
            if isinstance(e, ConfigurationError):
                raise
            raise ConfigurationError(f"limiter {name!r}: {e}") from None
        self._impl = impl
        # The hot methods are the compiled ones, bound on the instance: a call
        # is one C call with no Python frame in between.  The methods defined
        # below document them and are what a subclass would override.
        self.allow = impl.allow  # type: ignore[method-assign]
        self.hit = impl.hit  # type: ignore[method-assign]
        self.peek = impl.peek  # type: ignore[method-assign]
        self.reset = impl.reset  # type: ignore[method-assign]
        self.refund = impl.refund  # type: ignore[method-assign]
        self.hit_many = impl.hit_many  # type: ignore[method-assign]

    def allow(self, key: Key, cost: int = 1) -> bool:
        """Count a hit of ``cost`` on ``key`` if it passes; return whether it did.

        The hot path: one C call, no Decision object.

        Raises:
            CapacityError: ``cost`` exceeds the burst (it could never pass).
        """
        return bool(self._impl.allow(key, cost))

    def hit(self, key: Key, cost: int = 1) -> Decision:
        """Count a hit of ``cost`` if it passes; return the full Decision.

        A denied hit counts nothing.  ``cost=0`` answers as :meth:`peek`."""
        return self._impl.hit(key, cost)

    def peek(self, key: Key, cost: int = 1) -> Decision:
        """The Decision a hit of ``cost`` would get now, counting nothing."""
        return self._impl.peek(key, cost)

    def reset(self, key: Key) -> None:
        """Forget ``key``: its next hit sees a full burst."""
        self._impl.reset(key)

    def refund(self, key: Key, cost: int = 1) -> bool:
        """Give back a hit of ``cost`` counted earlier (composite checks use
        it when another limit denies).  False if the key has no state."""
        return bool(self._impl.refund(key, cost))

    def hit_many(self, keys: Iterable[Key] | np.ndarray, cost: int = 1) -> np.ndarray:
        """Hit every key once, in order; return a numpy bool array of results.

        A numpy integer array is the fast path (no GIL, prefetching)."""
        return self._impl.hit_many(keys, cost)

    def window(self) -> Rate:
        """What headers describe this limit over (``w``, ``t``): its rate."""
        return self.rate

    def wait(self, key: Key, cost: int = 1, timeout: float | None = None) -> bool:
        """Block until a hit of ``cost`` on ``key`` passes (and count it).

        Returns False, counting nothing, if it cannot pass within ``timeout``
        seconds.  Sleeps with the clock's ``sleep`` if it has one (FakeClock
        does), else ``time.sleep``."""
        return sleep_through(self._attempts(key, cost, timeout),
                             getattr(self.clock, "sleep", time.sleep))

    async def acquire(self, key: Key, cost: int = 1, timeout: float | None = None) -> bool:
        """Async :meth:`wait`: awaits until the hit passes, or False on timeout."""
        return await asleep_through(self._attempts(key, cost, timeout),
                                    getattr(self.clock, "sleep", None))

    def _attempts(self, key: Key, cost: int, timeout: float | None) -> Generator[float, None, bool]:
        """Hit until allowed, yielding each wait (the denial's retry_after);
        False once the next try would fall past the deadline."""
        now = self.clock or time.monotonic_ns
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout}")
        deadline = None if timeout is None else now() + round(timeout * NS_PER_S)
        while True:
            d = self.hit(key, cost)
            if d.allowed:
                return True
            if deadline is not None and now() + d.retry_after_ns > deadline:
                return False
            yield d.retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.rate, self.store, self.name, self.burst, self.clock, self.on_full))

    def __repr__(self) -> str:
        return f"<Limiter {self.name!r} {self.rate} burst={self.burst}>"


def _rebuild(rate: Rate, store: Any, name: str, burst: int, clock: Any, on_full: Any) -> Limiter:
    return Limiter(rate, store, name=name, burst=burst, clock=clock, on_full=on_full)
