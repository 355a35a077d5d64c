"""Clocks.  Rate state uses CLOCK_MONOTONIC nanoseconds, read in C unless a
clock is injected; tests inject a FakeClock and move time by hand."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Any, Protocol

__all__ = ["NS_PER_S", "Clock", "FakeClock", "monotonic_ns"]

NS_PER_S = 1_000_000_000
monotonic_ns = time.monotonic_ns  # CLOCK_MONOTONIC on Linux: what the core reads


class Clock(Protocol):
    """A callable returning the current time as int nanoseconds (>= 0)."""

    def __call__(self) -> int: ...


# How many turns of the event loop other tasks get before a FakeClock jumps
# to the next sleeper's deadline: enough for tasks that only compute and await
# each other to reach their next sleep.
_SETTLE_TURNS = 10


class FakeClock:
    """A clock that moves only when told: deterministic tests without sleeps.

    Waits on it take no real time.  A blocking sleep moves the clock by its
    length (one thread).  An asyncio sleep waits in virtual time: once other
    tasks have had their turns, the clock jumps to the earliest sleeper's
    deadline and wakes it, so concurrent tasks wake in deadline order, each at
    exactly its time (a task blocked on real I/O meanwhile may be overtaken).

    Example:
        >>> clock = FakeClock()
        >>> t0 = clock()
        >>> clock.advance(1.5)
        >>> clock() - t0
        1500000000
    """

    __slots__ = ("_ns", "_sleepers", "_seq", "_driver")

    def __init__(self, start_ns: int = 1_000_000_000_000) -> None:
        if start_ns < 0:
            raise ValueError(f"a clock starts at a time >= 0, got {start_ns}")
        self._ns = int(start_ns)
        # asyncio sleepers: a heap of (deadline, order, future)
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._driver: asyncio.Task[None] | None = None

    def __call__(self) -> int:
        return self._ns

    def advance(self, seconds: float = 0.0, *, ns: int = 0) -> None:
        """Move forward by ``seconds`` plus ``ns`` nanoseconds."""
        step = round(seconds * 1_000_000_000) + ns
        if step < 0:
            raise ValueError(f"a monotonic clock cannot go back (step {step} ns)")
        self._ns += step
        self._wake_due()

    def sleep(self, seconds: float) -> None:
        """Sleep by moving the clock by ``seconds``."""
        self.advance(max(0.0, seconds))

    def sleep_until(self, ns: int) -> None:
        """Sleep by moving the clock to ``ns`` (if it is not there yet): what
        ``Limiter.wait`` calls on it."""
        if ns > self._ns:
            self.set(ns)

    async def asleep_until(self, ns: int) -> None:
        """Await until the clock reads ``ns``, in virtual time (see the class
        docstring): what ``Limiter.acquire`` calls on it."""
        if ns <= self._ns:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._sleepers, (ns, next(self._seq), future))
        if self._driver is None or self._driver.done() or self._driver.get_loop() is not loop:
            self._driver = loop.create_task(self._jump())
        await future  # a cancelled sleeper is skipped by _jump and _wake_due

    async def _jump(self) -> None:
        while True:
            for _ in range(_SETTLE_TURNS):
                await asyncio.sleep(0)
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)  # cancelled: time need not move for it
            if not self._sleepers:
                return
            self.set(max(self._ns, self._sleepers[0][0]))

    def _wake_due(self) -> None:
        while self._sleepers and self._sleepers[0][0] <= self._ns:
            future = heapq.heappop(self._sleepers)[2]
            if not future.done():
                future.set_result(None)

    def set(self, ns: int) -> None:
        """Jump to ``ns`` (not earlier than now)."""
        if ns < self._ns:
            raise ValueError(f"a monotonic clock cannot go back ({ns} < {self._ns})")
        self._ns = int(ns)
        self._wake_due()

    def __reduce__(self) -> tuple[Any, ...]:
        # the time travels (to worker processes); asyncio sleepers do not
        return (FakeClock, (self._ns,))

    def __repr__(self) -> str:
        return f"FakeClock({self._ns})"
