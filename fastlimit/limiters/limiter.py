"""Limiter: one named rate applied to every key, over a shared store."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np

from fastlimit._core import Decision
from fastlimit.errors import ConfigurationError
from fastlimit.limiters import waiting
from fastlimit.limiters._counting import Meter
from fastlimit.limiters.progress import WaitLog, WaitReporter, make_reporter
from fastlimit.limiters.rate import Rate
from fastlimit.stores.contract import Bookable, Holdable, RateState, require_sync
from fastlimit.stores.table import OnFull
from fastlimit.stores.workers import table_of_its_own

__all__ = ["Key", "Limiter"]

Key = str | bytes | int
F = TypeVar("F", bound=Callable[..., Any])


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
        progress: off (None, the default), or log a line at most every so
            many seconds while :meth:`wait`, :meth:`acquire` or ``@limit``
            hold work back (a number, or a :class:`~fastlimit.WaitLog`), or
            any :class:`~fastlimit.progress.WaitReporter` (a progress bar).

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
        progress: WaitReporter | WaitLog | float | None = None,
    ) -> None:
        self.rate, self.burst = limiter_params(rate, burst, name)
        self.name = name
        self.clock = clock
        self.on_full = on_full
        self.progress = make_reporter(progress)
        self.store = table_of_its_own(f"Limiter {name!r}") if store is None else store
        require_sync(self.store, "Limiter's methods are synchronous: on an asyncio store use "
                                 "backend.limiter(...) or fastlimit.limiters.aio.AsyncLimiter, "
                                 "whose methods are coroutines")
        with configuration_errors(name):
            impl = self.store.rate_state(
                name, self.rate.emission_interval_ns, self.burst, clock=clock, on_full=on_full)
        self._impl: RateState = impl
        self._bookable = isinstance(impl, Bookable)
        self._holdable = isinstance(impl, Holdable)
        self._meter = Meter.of_rate(self, impl, self.rate)
        # The hot methods are the state's compiled ones, bound on the
        # instance (a call is one C call, no Python frame in between), unless
        # a subclass overrides them: then its methods are called.
        for method in _BOUND:
            if getattr(type(self), method) is getattr(Limiter, method):
                setattr(self, method, getattr(impl, method))

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
        """Block until a hit of ``cost`` on ``key`` is counted; True then.

        The hit is booked at the earliest time it passes and the call sleeps
        exactly until then, so waiters on one key, in any process, go in the
        order they asked.  Returns False at once, counting nothing, if that
        time is more than ``timeout`` seconds away (None: no bound).  An
        exception while sleeping gives the booking back if it was the last.
        Sleeps on the clock if it can (FakeClock moves instead), else
        ``time.sleep``.  On a store that cannot book (Redis) it hits, sleeps
        the denial's ``retry_after`` and tries again.

        Example:
            >>> from fastlimit import FakeClock
            >>> clock = FakeClock()
            >>> lim = Limiter("2/1s", clock=clock)
            >>> t0 = clock()
            >>> [lim.wait("k") for _ in range(4)], (clock() - t0) / 1e9
            ([True, True, True, True], 1.0)
            >>> lim.wait("k", timeout=0.1)   # the next slot is 0.5 s away
            False
        """
        return waiting.wait(self, key, cost, timeout) is None

    async def acquire(self, key: Key, cost: int = 1, timeout: float | None = None) -> bool:
        """Async :meth:`wait`: awaits the hit's turn; False, counting nothing,
        if it is more than ``timeout`` seconds away.  Cancelling the task
        gives the booking back if it was the last."""
        return await waiting.wait_async(self, key, cost, timeout) is None

    def reserve(self, key: Key, cost: int = 1,
                timeout: float | None = None) -> waiting.Reservation:
        """Book a hit of ``cost`` at the earliest time it passes, within
        ``timeout`` seconds; the caller sleeps until its slot.

        What :meth:`wait` is made of, for callers that want the slot's time
        (``r.at_ns``, on this limiter's clock) or to do something else first.
        The returned :class:`~fastlimit.waiting.Reservation` is truthy when
        granted (the hit is counted now); ``r.sleep()`` or ``await
        r.asleep()`` waits for the slot, ``r.cancel()`` gives it back if it
        is the last.  When refused, nothing is counted and ``r.decision`` is
        the denial.

        Raises:
            NotImplementedError: the store cannot book ahead (Redis).

        Example:
            >>> from fastlimit import FakeClock
            >>> lim = Limiter("1/1s", clock=FakeClock())
            >>> [lim.reserve("k").wait for _ in range(3)]
            [0.0, 1.0, 2.0]
            >>> r = lim.reserve("k", timeout=2.5)   # the next slot is 3 s away
            >>> bool(r), r.decision.retry_after
            (False, 3.0)
        """
        return waiting.reserve(self, key, cost, waiting.timeout_ns(timeout))

    def limit(self, key: Key | Callable[..., Key], *, cost: int | Callable[..., int] = 1,
              timeout: float | None = None, block: bool = True) -> Callable[[F], F]:
        """Decorate a function, sync or ``async``, so each call passes this
        limiter first.

        Args:
            key: the key every call counts against, or a function of the
                call's arguments that returns it.
            cost: what a call costs, or a function of its arguments.
            timeout: with ``block``, the longest a call waits for its turn.
            block: wait for the turn (:meth:`wait` / :meth:`acquire`); if
                False, a call that would not pass at once raises.

        Raises:
            RateLimitExceeded: (from the decorated function) the call could
                not pass at once, or within ``timeout``; its ``decision``
                says when it would.

        Example:
            >>> from fastlimit import FakeClock, RateLimitExceeded
            >>> lim = Limiter("1/1s", clock=FakeClock())
            >>> @lim.limit(key=lambda user: f"user:{user}", block=False)
            ... def fetch(user):
            ...     return f"data of {user}"
            >>> fetch("ann")
            'data of ann'
            >>> try:
            ...     fetch("ann")
            ... except RateLimitExceeded as e:
            ...     print(e.retry_after)
            1.0
        """
        return waiting.guard(self, key, cost, timeout, block)

    def hold(self, key: Key, remaining: int = 0, retry_after: float = 0.0) -> bool:
        """Make ``key`` no looser than what an upstream server reported: at
        most ``remaining`` hits pass now and, when ``remaining`` is 0, none
        before ``retry_after`` seconds (one emission interval if 0); the key
        then refills at this limiter's rate.  Never loosens a key.

        How a client throttle (:mod:`fastlimit.client`) follows
        ``RateLimit``, ``X-RateLimit-*`` and ``Retry-After`` for every
        process that shares the limiter.  Returns False if the store cannot
        (Redis) or found no slot for the key.

        Example:
            >>> from fastlimit import FakeClock
            >>> lim = Limiter("10/1s", clock=FakeClock())
            >>> lim.hold("api", remaining=0, retry_after=30)
            True
            >>> lim.peek("api").retry_after
            30.0
        """
        return waiting.hold(self, key, remaining, retry_after)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.rate, self.store, self.name, self.burst, self.clock, self.on_full,
                           self.progress))

    def __repr__(self) -> str:
        return f"<Limiter {self.name!r} {self.rate} burst={self.burst}>"


_BOUND = ("allow", "hit", "peek", "reset", "refund", "hit_many")


def limiter_params(rate: Rate | str, burst: int | None, name: str) -> tuple[Rate, int]:
    """A limiter's rate and burst (default: the rate's limit), checked with
    its name: what every kind of limiter accepts."""
    parsed = Rate.parse(rate)
    if burst is None:
        burst = parsed.limit
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ConfigurationError(f"burst must be an int >= 1, got {burst!r}")
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"a limiter name must be a non-empty str, got {name!r}")
    return parsed, burst


@contextlib.contextmanager
def configuration_errors(name: str) -> Iterator[None]:
    """A store refusing a limiter's parameters (ValueError) is a
    configuration error naming the limiter."""
    try:
        yield
    except ConfigurationError:
        raise
    except ValueError as e:
        raise ConfigurationError(f"limiter {name!r}: {e}") from None


def _rebuild(rate: Rate, store: Any, name: str, burst: int, clock: Any, on_full: Any,
             progress: Any = None) -> Limiter:
    return Limiter(rate, store, name=name, burst=burst, clock=clock, on_full=on_full,
                   progress=progress)
