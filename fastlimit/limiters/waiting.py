"""Waiting for a limit in turn: reservations, the blocking and asyncio waits
built on them, and the ``@limiter.limit`` decorator.

On the shared table a wait books its hit at the earliest slot GCRA allows
(``Gcra.reserve``) and sleeps exactly until then: no polling, and waiters on
one key, in any process, are served in the order they asked.  A wait that is
interrupted (an exception in the sleeping thread, asyncio cancellation) gives
its booking back when nothing was booked after it.  Stores without bookings
(Redis) retry instead: hit, sleep the denial's ``retry_after``, hit again;
every waiter then races for each freed slot, so all progress but in no set
order.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import time
from collections.abc import Awaitable, Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

from fastlimit import _core
from fastlimit._core import Decision
from fastlimit.core import gcra
from fastlimit.core.results import Booked
from fastlimit.errors import RateLimitExceeded
from fastlimit.limiters.rate import NS_PER_S
from fastlimit.stores.contract import Bookable, Holdable

if TYPE_CHECKING:
    from fastlimit.limiters.limiter import Key, Limiter

__all__ = ["Reservation", "guard", "hold", "reserve", "wait", "wait_async"]

F = TypeVar("F", bound=Callable[..., Any])

# "No timeout": the longest wait the core books (2**61 ns, about 73 years).
NO_TIMEOUT_NS: int = gcra.MAX_TOLERANCE_NS


def timeout_ns(timeout: float | None) -> int:
    """``timeout`` seconds as nanoseconds; None means no bound."""
    if timeout is None:
        return NO_TIMEOUT_NS
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ValueError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
    if math.isinf(timeout):
        return NO_TIMEOUT_NS
    return min(NO_TIMEOUT_NS, round(timeout * NS_PER_S))


def clock_of(limiter: Limiter) -> Callable[[], int]:
    """The limiter's clock: what its store reads (CLOCK_MONOTONIC by default)."""
    return limiter.clock if limiter.clock is not None else _core.monotonic_ns


# -- sleeping until a time on a limiter's clock -------------------------------------

def _sleep_until(clock: Any, at_ns: int) -> None:
    if clock is not None:
        until = getattr(clock, "sleep_until", None)
        if until is not None:  # FakeClock: moves the clock
            until(at_ns)
            return
        sleep = getattr(clock, "sleep", None)
        if sleep is not None:  # a clock of the user's that sleeps itself
            left = at_ns - clock()
            if left > 0:
                sleep(left / NS_PER_S)
            return
    now = clock if clock is not None else _core.monotonic_ns
    # a loop only because a sleep may end a hair early (float rounding); it
    # is not polling: each pass sleeps all that is left
    while (left := at_ns - now()) > 0:
        time.sleep(left / NS_PER_S)


async def _asleep_until(clock: Any, at_ns: int) -> None:
    if clock is not None:
        until = getattr(clock, "asleep_until", None)
        if until is not None:  # FakeClock: virtual time
            await until(at_ns)
            return
        sleep = getattr(clock, "sleep", None)
        if sleep is not None:
            left = at_ns - clock()
            if left > 0:
                sleep(left / NS_PER_S)
            await asyncio.sleep(0)
            return
    now = clock if clock is not None else _core.monotonic_ns
    while (left := at_ns - now()) > 0:
        await asyncio.sleep(left / NS_PER_S)


def _stops(limiter: Limiter, key: Key, at_ns: int) -> Iterator[int]:
    """The times to sleep until on the way to ``at_ns``: ``at_ns`` alone, or,
    with a progress reporter (``progress=``), each time it asks to report.
    One schedule for the blocking and the asyncio pause."""
    reporter = limiter.progress
    if reporter is None:
        yield at_ns
        return
    now = clock_of(limiter)
    started = t = now()
    while t < at_ns:
        due = reporter.report(limiter, key, started, t, at_ns)
        yield min(at_ns, max(due, t + 1))
        t = now()


def pause(limiter: Limiter, key: Key, at_ns: int) -> None:
    """Sleep until ``at_ns`` on the limiter's clock, reporting progress to
    the limiter's reporter when it has one."""
    for until in _stops(limiter, key, at_ns):
        _sleep_until(limiter.clock, until)


async def apause(limiter: Limiter, key: Key, at_ns: int) -> None:
    """:func:`pause` for asyncio."""
    for until in _stops(limiter, key, at_ns):
        await _asleep_until(limiter.clock, until)


# -- reservations --------------------------------------------------------------

class Reservation:
    """A hit booked at its turn (see :meth:`Limiter.reserve`).

    Truthy when granted: the hit is already counted, for the slot at
    ``at_ns`` on the limiter's clock, ``wait`` seconds after it was booked.
    Sleep until then with :meth:`sleep` (or ``await`` :meth:`asleep`), then
    go.  When not granted nothing was counted, and ``decision`` is the
    denial (its ``retry_after`` is how long the hit would have had to wait).

    Attributes:
        key, cost: what was booked.
        at_ns: the slot, on the limiter's clock (granted only).
        wait: seconds from the booking to the slot (granted only).
        decision: the denial, when not granted; None when granted.
    """

    __slots__ = ("limiter", "key", "cost", "at_ns", "wait_ns", "decision", "_tat_ns")

    def __init__(self, limiter: Limiter, key: Key, cost: int, at_ns: int, wait_ns: int,
                 decision: Decision | None, tat_ns: int = 0) -> None:
        self.limiter = limiter
        self.key = key
        self.cost = cost
        self.at_ns = at_ns
        self.wait_ns = wait_ns
        self.decision = decision
        self._tat_ns = tat_ns

    @property
    def granted(self) -> bool:
        return self.decision is None

    def __bool__(self) -> bool:
        return self.decision is None

    @property
    def wait(self) -> float:
        return self.wait_ns / NS_PER_S

    def sleep(self) -> None:
        """Block until the slot.  An exception meanwhile (KeyboardInterrupt,
        a signal handler's) cancels the booking, then propagates."""
        if not self:
            raise ValueError("this reservation was not granted: there is nothing to wait for")
        try:
            pause(self.limiter, self.key, self.at_ns)
        except BaseException:
            self.cancel()
            raise

    async def asleep(self) -> None:
        """Await the slot.  Cancelling the task cancels the booking."""
        if not self:
            raise ValueError("this reservation was not granted: there is nothing to wait for")
        try:
            await apause(self.limiter, self.key, self.at_ns)
        except BaseException:
            self.cancel()
            raise

    def cancel(self) -> bool:
        """Give the booked hit back, if no hit was booked or counted on the
        key after it (undoing an earlier one would hand a later slot out
        twice).  True if it was given back; a reservation is given back once."""
        tat, self._tat_ns = self._tat_ns, 0
        if not self or tat == 0:
            return False
        state: Bookable = self.limiter._impl  # type: ignore[assignment]
        return bool(state.cancel(self.key, self.cost, tat))

    def __repr__(self) -> str:
        if self:
            return f"<Reservation {self.key!r} x{self.cost} granted, wait {self.wait:g} s>"
        return f"<Reservation {self.key!r} x{self.cost} refused: {self.decision!r}>"


def reserve(limiter: Limiter, key: Key, cost: int, max_wait_ns: int) -> Reservation:
    """Book ``cost`` on ``key`` at its slot if that is within ``max_wait_ns``."""
    if not limiter._bookable:
        raise NotImplementedError(
            f"{type(limiter.store).__name__} cannot book hits ahead (it has no reserve); "
            f"Limiter.wait and acquire retry on it instead")
    state: Bookable = limiter._impl  # type: ignore[assignment]
    now = clock_of(limiter)
    while True:
        at, tat = state.reserve(key, cost, max_wait_ns)
        if at >= 0:
            return Reservation(limiter, key, cost, at, max(0, at - now()), None, tat)
        if at == Booked.NO_SLOT:  # no slot in the table for the key, on_full="deny"
            inc = gcra.increment_ns(cost, limiter.rate.emission_interval_ns)
            return Reservation(limiter, key, cost, -1, 0, Decision(
                *gcra.no_slot(False, inc, limiter.rate.emission_interval_ns, limiter.burst)))
        d = limiter.peek(key, cost)
        if not d.allowed:
            return Reservation(limiter, key, cost, -1, 0, d)
        # the key freed up between the booking and the peek: book again


# -- waits: book and sleep, or retry where the store cannot book ----------------------

def _turns(limiter: Limiter, key: Key, cost: int,
           timeout: float | None) -> Generator[Reservation | int, None, Decision | None]:
    """One wait, for both drivers: yields the granted booking to sleep on
    (the wait is then over), or a time to pause until before trying again
    (a store that cannot book); returns None, or the denial when the hit
    cannot be counted within ``timeout``."""
    now = clock_of(limiter)
    deadline = now() + timeout_ns(timeout)
    can_book = limiter._bookable
    while True:
        if can_book:
            r = reserve(limiter, key, cost, max(0, deadline - now()))
            if r:
                yield r
                return None
            d = cast(Decision, r.decision)
        else:
            d = limiter.hit(key, cost)
            if d.allowed:
                return None
        t = now()
        if t + d.retry_after_ns > deadline:
            return d
        yield t + d.retry_after_ns  # a retry: no booking to be had


def wait(limiter: Limiter, key: Key, cost: int, timeout: float | None) -> Decision | None:
    """Block until a hit of ``cost`` on ``key`` is counted: None, or the
    denial when it cannot be within ``timeout``."""
    turns = _turns(limiter, key, cost, timeout)
    try:
        while True:
            step = next(turns)
            if isinstance(step, Reservation):
                step.sleep()
            else:
                pause(limiter, key, step)
    except StopIteration as done:
        return cast("Decision | None", done.value)


async def wait_async(limiter: Limiter, key: Key, cost: int,
                     timeout: float | None) -> Decision | None:
    """:func:`wait` for asyncio."""
    turns = _turns(limiter, key, cost, timeout)
    try:
        while True:
            step = next(turns)
            if isinstance(step, Reservation):
                await step.asleep()
            else:
                await apause(limiter, key, step)
    except StopIteration as done:
        return cast("Decision | None", done.value)


def hold(limiter: Limiter, key: Key, remaining: int, retry_after: float) -> bool:
    """Make ``key`` no looser than a server's report (see :meth:`Limiter.hold`)."""
    if isinstance(remaining, bool) or not isinstance(remaining, int) or remaining < 0:
        raise ValueError(f"remaining must be an int >= 0, got {remaining!r}")
    if (isinstance(retry_after, bool) or not isinstance(retry_after, (int, float))
            or not retry_after >= 0):
        raise ValueError(f"retry_after must be a number of seconds >= 0, got {retry_after!r}")
    if not limiter._holdable:
        return False
    state: Holdable = limiter._impl  # type: ignore[assignment]
    wait = timeout_ns(retry_after) if retry_after > 0 else None
    ahead = gcra.hold_ahead_ns(remaining, wait, limiter.rate.emission_interval_ns, limiter.burst)
    if ahead <= 0:
        return True
    return bool(state.hold(key, min(ahead, NO_TIMEOUT_NS)) != Booked.NO_SLOT)


# -- the decorator ----------------------------------------------------------------

def guard(limiter: Limiter, key: Key | Callable[..., Key], cost: int | Callable[..., int],
          timeout: float | None, block: bool) -> Callable[[F], F]:
    """``@limiter.limit(...)``: see :meth:`Limiter.limit`."""
    if not callable(key) and not isinstance(key, (str, bytes, int)) or isinstance(key, bool):
        raise TypeError(
            f"key must be a str, bytes or int key, or a function of the call's arguments "
            f"returning one, got {key!r}")
    if not callable(cost) and (isinstance(cost, bool) or not isinstance(cost, int) or cost < 0):
        raise ValueError(f"cost must be an int >= 0 or a function returning one, got {cost!r}")
    if not isinstance(block, bool):
        raise TypeError(f"block must be True or False, got {block!r}")
    timeout_ns(timeout)  # refuse a bad timeout now, not at the first call

    def resolve(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Key, int]:
        k = key(*args, **kwargs) if callable(key) else key
        c = cost(*args, **kwargs) if callable(cost) else cost
        return k, c

    def refused(k: Key, d: Decision) -> RateLimitExceeded:
        return RateLimitExceeded(d, key=k, limiter=limiter.name)

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                k, c = resolve(args, kwargs)
                if block:
                    d = await wait_async(limiter, k, c, timeout)
                else:
                    d = limiter.hit(k, c)
                    d = None if d.allowed else d
                if d is not None:
                    raise refused(k, d)
                return await cast(Callable[..., Awaitable[Any]], fn)(*args, **kwargs)

            return cast(F, guarded_async)

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            k, c = resolve(args, kwargs)
            if block:
                d = wait(limiter, k, c, timeout)
            else:
                d = limiter.hit(k, c)
                d = None if d.allowed else d
            if d is not None:
                raise refused(k, d)
            return fn(*args, **kwargs)

        return cast(F, guarded)

    return decorate
