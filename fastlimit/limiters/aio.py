"""Limiters for asyncio stores: :class:`AsyncLimiter`, :class:`AsyncQuota`
and :class:`AsyncConcurrencyLimit`, the methods of :class:`~fastlimit.Limiter`,
:class:`~fastlimit.Quota` and :class:`~fastlimit.ConcurrencyLimit` as
coroutines over an :class:`~fastlimit.stores.contract.AsyncStore` (an
:class:`~fastlimit.AsyncRedisBackend`), with the same decisions.  A
:class:`~fastlimit.Policy` on an asyncio store is made of these.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from datetime import tzinfo
from typing import Any

import numpy as np
import numpy.typing as npt

from fastlimit._core import Decision
from fastlimit.core.results import Acquired, QuotaMode, Step
from fastlimit.errors import ConfigurationError
from fastlimit.limiters._counting import Meter
from fastlimit.limiters.concurrency import _check_limit
from fastlimit.limiters.limiter import Key, configuration_errors, limiter_params
from fastlimit.limiters.quota import QuotaBase, QuotaReading, QuotaSpec, Usage
from fastlimit.limiters.rate import NS_PER_S, Rate
from fastlimit.stores.contract import AsyncQuotaCounts, AsyncRateState, AsyncStore, OnFullName

__all__ = ["AsyncConcurrencyLimit", "AsyncLease", "AsyncLimiter", "AsyncQuota"]


def _async_store(store: object, what: str) -> AsyncStore:
    if not isinstance(store, AsyncStore):
        raise ConfigurationError(f"{what} needs an asyncio store (an AsyncRedisBackend), "
                                 f"got {store!r}: a SharedTable or a RedisBackend is used "
                                 f"with the sync {what.removeprefix('Async')}")
    return store


class AsyncLimiter:
    """GCRA on an asyncio store: :class:`~fastlimit.Limiter`'s methods as
    coroutines.  ``backend.limiter(...)`` makes one too.

    Example:
        >>> backend = AsyncRedisBackend("redis://127.0.0.1:6379/0")  # doctest: +SKIP
        >>> api = AsyncLimiter("100/1h", backend, name="api")  # doctest: +SKIP
        >>> (await api.hit("user:42")).remaining  # doctest: +SKIP
        99
    """

    def __init__(self, rate: Rate | str, store: Any, *, name: str = "default",
                 burst: int | None = None, clock: Callable[[], int] | None = None,
                 on_full: OnFullName | None = None) -> None:
        self.rate, self.burst = limiter_params(rate, burst, name)
        self.store = _async_store(store, "AsyncLimiter")
        with configuration_errors(name):
            self._impl: AsyncRateState = self.store.rate_state(
                name, self.rate.emission_interval_ns, self.burst, clock=clock, on_full=on_full)
        self.name = name
        self.clock = clock
        # its parameters as a policy's decision path reads them (the
        # store counts a policy's whole request: the meter never counts)
        self._meter = Meter.of_rate(self, self._impl, self.rate)

    async def allow(self, key: Key, cost: int = 1) -> bool:
        """Count a hit of ``cost`` if it passes; return whether it did."""
        return await self._impl.allow(key, cost)

    async def hit(self, key: Key, cost: int = 1) -> Decision:
        """Count a hit of ``cost`` if it passes; return the Decision."""
        return await self._impl.hit(key, cost)

    async def peek(self, key: Key, cost: int = 1) -> Decision:
        """The Decision a hit of ``cost`` would get now, counting nothing."""
        return await self._impl.peek(key, cost)

    async def refund(self, key: Key, cost: int = 1) -> bool:
        """Give back a hit of ``cost`` counted earlier; False if no state."""
        return await self._impl.refund(key, cost)

    async def reset(self, key: Key) -> None:
        """Forget ``key``: its next hit sees a full burst."""
        await self._impl.reset(key)

    async def hit_many(self, keys: Iterable[Key] | npt.NDArray[np.integer[Any]],
                       cost: int = 1) -> npt.NDArray[np.bool_]:
        """Hit every key once, in order; a numpy bool array of results."""
        return await self._impl.hit_many(keys, cost)

    def window(self) -> Rate:
        return self.rate

    async def acquire(self, key: Key, cost: int = 1, timeout: float | None = None) -> bool:
        """Await until a hit of ``cost`` passes (and count it); False, counting
        nothing, if it cannot pass within ``timeout`` seconds.  A clock with
        a ``sleep`` method (FakeClock) is moved instead of sleeping."""
        fake_sleep = getattr(self.clock, "sleep", None)
        now = self.clock if self.clock is not None else time.monotonic_ns
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout}")
        deadline = None if timeout is None else now() + round(timeout * NS_PER_S)
        while True:
            d = await self.hit(key, cost)
            if d.allowed:
                return True
            if deadline is not None and now() + d.retry_after_ns > deadline:
                return False
            if fake_sleep is not None:
                fake_sleep(d.retry_after)
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(d.retry_after)

    def __repr__(self) -> str:
        return f"<AsyncLimiter {self.name!r} {self.rate} burst={self.burst}>"


class AsyncQuota(QuotaBase):
    """A calendar quota on an asyncio store: :class:`~fastlimit.Quota`'s
    methods as coroutines, with the same counts (on Redis, the same keys as
    a Quota of this name on a :class:`~fastlimit.RedisBackend`) and the same
    Decisions.  ``backend.quota(...)`` makes one too.

    Example:
        >>> backend = AsyncRedisBackend("redis://127.0.0.1:6379/0")  # doctest: +SKIP
        >>> ai = AsyncQuota("500/month", backend, name="ai")  # doctest: +SKIP
        >>> (await ai.hit("acct-7")).remaining  # doctest: +SKIP
        499
    """

    def __init__(self, spec: str | QuotaSpec, store: Any, *, name: str = "quota",
                 tz: str | tzinfo = "UTC", clock: Callable[[], int] | None = None,
                 on_full: OnFullName | None = None) -> None:
        super().__init__(spec, name=name, tz=tz, clock=clock)
        self.store = _async_store(store, "AsyncQuota")
        self._counter: AsyncQuotaCounts = self.store.quota_counts(
            name, self.spec.limit, on_full=on_full)
        self._meter = Meter.of_quota(self, self._counter, self.calendar, self.clock, self._what)

    async def hit(self, key: Key, cost: int = 1) -> Decision:
        """Count ``cost`` if it fits in the period; return the Decision."""
        if self._check_cost(cost) == 0:
            return await self.peek(key)
        return await self._answer(key, cost, QuotaMode.CONSUME)

    async def allow(self, key: Key, cost: int = 1) -> bool:
        """:meth:`hit`, returning only whether it passed."""
        return (await self.hit(key, cost)).allowed

    async def peek(self, key: Key, cost: int = 1) -> Decision:
        """The Decision a hit of ``cost`` would get, counting nothing."""
        return await self._answer(key, cost, QuotaMode.PEEK)

    async def decide(self, key: Key, cost: int = 1, *, consume: bool = True) -> QuotaReading:
        """:meth:`hit` (or :meth:`peek`, ``consume=False``) at one reading of
        the clock, with the period's window: :meth:`Quota.decide` as a
        coroutine (headers rendered from it reset at the period's end
        exactly)."""
        now = self.clock()
        if consume and self._check_cost(cost):
            decision = await self._answer(key, cost, QuotaMode.CONSUME, now)
        else:  # as hit(key, 0) does: what a hit of 1 would get
            decision = await self._answer(key, cost or 1, QuotaMode.PEEK, now)
        return QuotaReading(decision, self.window(now), now)

    async def refund(self, key: Key, cost: int = 1) -> bool:
        """Give back ``cost`` counted in the current period (never below 0)."""
        self._check_cost(cost)
        tag, _, left = self._now()
        result, _ = await self._counter.step(key, tag, cost, QuotaMode.REFUND, left)
        return result == Step.ALLOWED

    async def usage(self, key: Key) -> Usage:
        """Used and remaining in the current period, and when it resets."""
        tag, end, left = self._now()
        _, used = await self._counter.step(key, tag, 0, QuotaMode.PEEK, left)
        return self._usage(used, end)

    async def reset(self, key: Key) -> None:
        """Forget ``key``'s count."""
        await self._counter.reset(key)

    async def _answer(self, key: Key, cost: int, mode: int, now: int | None = None) -> Decision:
        cost = self._check_cost(cost)
        if now is None:
            now = self.clock()
        tag, _, end = self.calendar.period(now)
        return await self._counter.answer(key, tag, cost, mode, end - now)


class AsyncLease:
    """One held unit of an :class:`AsyncConcurrencyLimit`: give it back with
    ``await lease.release()`` or by leaving its ``async with`` block."""

    __slots__ = ("key", "index", "_owner")

    def __init__(self, owner: AsyncConcurrencyLimit | None, key: Key, index: int) -> None:
        self._owner = owner
        self.key = key
        self.index = index

    @property
    def held(self) -> bool:
        return self._owner is not None

    async def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None and self.index >= 0:
            await owner._leases.release(self.key, self.index)

    async def renew(self) -> bool:
        """:meth:`fastlimit.Lease.renew`, awaited."""
        if self.index < 0:
            return True
        owner = self._owner
        if owner is None:
            return False
        if await owner._leases.renew(self.key, self.index):
            return True
        self._owner = None
        return False

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()

    def __repr__(self) -> str:
        return f"<AsyncLease {self.key!r} #{self.index} {'held' if self.held else 'released'}>"


class AsyncConcurrencyLimit:
    """At most ``limit`` holders of each key at once across every host, on
    an asyncio store: :class:`~fastlimit.ConcurrencyLimit`'s leases (the
    same Redis keys) with coroutine methods.

    Example:
        >>> uploads = AsyncConcurrencyLimit(2, backend, name="uploads")  # doctest: +SKIP
        >>> lease = await uploads.try_acquire("acct")  # doctest: +SKIP
        >>> await lease.release()  # doctest: +SKIP
    """

    def __init__(self, limit: int | None, store: Any, *, name: str = "concurrency",
                 on_full: OnFullName | None = None, retry_after: float = 1.0,
                 clock: Callable[[], int] | None = None) -> None:
        self.limit = _check_limit(limit)
        self.name = name
        self.retry_after = retry_after
        self.store = _async_store(store, "AsyncConcurrencyLimit")
        lease_slots = getattr(self.store, "lease_slots", None)  # not every asyncio store has leases
        if lease_slots is None:
            raise ConfigurationError(f"AsyncConcurrencyLimit needs a store with leases (an "
                                     f"AsyncRedisBackend), got {store!r}")
        self._leases: Any = lease_slots(name, on_full=on_full, clock=clock)

    async def try_acquire(self, key: Key, *, limit: int | None = None) -> AsyncLease | None:
        """A lease on ``key`` if one is free now, else None."""
        n = self.limit if limit is None else _check_limit(limit)
        if n is None:
            return AsyncLease(None, key, -1)
        token = await self._leases.acquire(key, n)
        if token >= 0:
            return AsyncLease(self, key, token)
        return AsyncLease(None, key, -1) if token == Acquired.UNRECORDED else None

    async def in_flight(self, key: Key, *, limit: int | None = None) -> int:
        """Leases of ``key`` held now (on Redis: not yet expired)."""
        n = self.limit if limit is None else _check_limit(limit)
        return 0 if n is None else int(await self._leases.in_flight(key, n))

    @property
    def reclaimed(self) -> int:
        return int(self._leases.reclaimed)

    def __repr__(self) -> str:
        return f"<AsyncConcurrencyLimit {self.name!r} limit={self.limit}>"
