"""Clocks.  Rate state uses CLOCK_MONOTONIC nanoseconds, read in C unless a
clock is injected; tests inject a FakeClock and move time by hand."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from typing import Protocol, TypeVar

__all__ = ["Clock", "FakeClock", "monotonic_ns", "sleep_through", "asleep_through"]

T = TypeVar("T")

monotonic_ns = time.monotonic_ns  # CLOCK_MONOTONIC on Linux: what the core reads


class Clock(Protocol):
    """A callable returning the current time as int nanoseconds (>= 0)."""

    def __call__(self) -> int: ...


class FakeClock:
    """A clock that moves only when told: deterministic tests without sleeps.

    Example:
        >>> clock = FakeClock()
        >>> t0 = clock()
        >>> clock.advance(1.5)
        >>> clock() - t0
        1500000000
    """

    __slots__ = ("_ns",)

    def __init__(self, start_ns: int = 1_000_000_000_000) -> None:
        if start_ns < 0:
            raise ValueError(f"a clock starts at a time >= 0, got {start_ns}")
        self._ns = int(start_ns)

    def __call__(self) -> int:
        return self._ns

    def advance(self, seconds: float = 0.0, *, ns: int = 0) -> None:
        """Move forward by ``seconds`` plus ``ns`` nanoseconds."""
        step = round(seconds * 1_000_000_000) + ns
        if step < 0:
            raise ValueError(f"a monotonic clock cannot go back (step {step} ns)")
        self._ns += step

    def sleep(self, seconds: float) -> None:
        """Sleep by moving the clock: what ``Limiter.wait`` calls on it."""
        self.advance(max(0.0, seconds))

    def set(self, ns: int) -> None:
        """Jump to ``ns`` (not earlier than now)."""
        if ns < self._ns:
            raise ValueError(f"a monotonic clock cannot go back ({ns} < {self._ns})")
        self._ns = int(ns)

    def __repr__(self) -> str:
        return f"FakeClock({self._ns})"


def sleep_through(attempts: Generator[float, None, T], sleep: Callable[[float], None]) -> T:
    """Run a retry loop written as a generator that yields the pause before
    each retry and returns the outcome; sleep with ``sleep`` between."""
    try:
        while True:
            sleep(next(attempts))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def asleep_through(attempts: Generator[float, None, T],
                         fake_sleep: Callable[[float], None] | None = None) -> T:
    """:func:`sleep_through` for asyncio.  A fake clock's ``sleep`` moves time
    instead (the loop still yields to other tasks)."""
    try:
        while True:
            pause = next(attempts)
            if fake_sleep is not None:
                fake_sleep(pause)
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(pause)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
