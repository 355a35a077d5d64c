"""Concurrency limits: at most N in flight per key, across every process."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

from fastlimit.core.results import Acquired
from fastlimit.errors import ConcurrencyLimitExceeded, ConfigurationError
from fastlimit.limiters.limiter import Key
from fastlimit.stores.contract import LeaseSlots, Renewable, require_sync
from fastlimit.stores.table import OnFull, SharedTable
from fastlimit.stores.workers import table_of_its_own

__all__ = ["MAX_LIMIT", "ConcurrencyLimit", "Lease"]

NS = 1_000_000_000
MAX_LIMIT = 100_000


class Lease:
    """One held unit of a concurrency limit; give it back with :meth:`release`
    or by leaving its ``with`` block.  Releasing twice is harmless.

    ``index`` is the store's token for the lease: its slot (0 to limit-1)
    in a shared table, a random 63-bit number on Redis, -1 for a lease
    nothing records (an unlimited key, or a store failing open)."""

    __slots__ = ("key", "index", "_owner")

    def __init__(self, owner: ConcurrencyLimit | None, key: Key, index: int) -> None:
        self._owner = owner
        self.key = key
        self.index = index

    @property
    def held(self) -> bool:
        return self._owner is not None

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None and self.index >= 0:
            owner._leases.release(self.key, self.index)

    def renew(self) -> bool:
        """Keep the lease alive: the heartbeat of work that may outlast the
        store's lease time to live.

        On Redis a lease expires ``lease_ttl`` seconds (default 60) after its
        acquire or its last renew, so that a holder on a host that died
        cannot keep it forever; call this more often than that (say every
        ``lease_ttl / 3``) while the work goes on.  On the shared table a
        lease ends only with its holder's process: this does nothing.

        Returns:
            True if the lease is still held (or is one nothing records, or
            Redis did not answer: the lease then stands until its TTL, and
            the next renew tells); False if it was released, or expired
            before this renew: another holder may have its place, so stop
            the work or acquire again.  A lease found expired is no longer
            :attr:`held`.

        Raises:
            BackendError: Redis failed and the failure policy is "raise".
        """
        if self.index < 0:
            return True
        owner = self._owner
        if owner is None:
            return False
        slots = owner._leases
        if not isinstance(slots, Renewable) or slots.renew(self.key, self.index):
            return True
        self._owner = None
        return False

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.held else "released"
        return f"<Lease {self.key!r} #{self.index} {state}>"


class ConcurrencyLimit:
    """At most ``limit`` holders of each key at once, across all processes.

    On a shared table, each key has ``limit`` lease slots.  A lease records
    its holder's pid and start time: when a holder dies without releasing
    (SIGKILL, OOM kill), its lease is taken over by the next acquirer that
    finds the key full, as soon as ``/proc`` shows the holder gone.  A live
    holder keeps its lease until it releases, however long that takes.

    On a :class:`~fastlimit.RedisBackend` the limit holds across hosts, and
    a holder's death cannot be seen by its pid, so leases expire: a lease
    counts for the backend's ``lease_ttl`` seconds (default 60) after its
    acquire or its last :meth:`Lease.renew`, on the Redis server's clock.
    A holder that dies frees its lease within ``lease_ttl``; work that runs
    longer must renew.

    Args:
        limit: leases per key; ``None`` means unlimited (every acquire
            succeeds and nothing is recorded).
        store: a SharedTable of kind "rates" (default: a new anonymous one;
            it may be the same table your limiters use), or a RedisBackend.
        name: the limit's name in the store.
        on_full: what an acquire gets when the store cannot answer (a full
            table; Redis down): ``"deny"`` (no lease), ``"allow"`` (a lease
            nothing records) or ``"raise"``; default the store's.
        retry_after: the wait (seconds) suggested to callers turned away.
        clock, sleep: monotonic ns and a sleep function for blocking
            acquires; a FakeClock provides both for tests.  A clock given
            here is also the time of lease expiry on Redis (instead of the
            server's), so tests can expire leases without waiting.

    Example:
        >>> uploads = ConcurrencyLimit(2)
        >>> a, b = uploads.try_acquire("acct"), uploads.try_acquire("acct")
        >>> uploads.try_acquire("acct") is None
        True
        >>> a.release()
        >>> with uploads.acquire("acct", timeout=1.0):
        ...     uploads.in_flight("acct")
        2
    """

    def __init__(
        self,
        limit: int | None,
        store: SharedTable | Any = None,
        *,
        name: str = "concurrency",
        on_full: OnFull | None = None,
        retry_after: float = 1.0,
        clock: Callable[[], int] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.limit = _check_limit(limit)
        self.name = name
        self.retry_after = retry_after
        self.store = table_of_its_own(f"ConcurrencyLimit {name!r}") if store is None else store
        require_sync(self.store, "ConcurrencyLimit needs a RedisBackend (sync): its acquire is "
                                 "one short round trip, and `async with limit.acquire(key)` "
                                 "works with it in asyncio code")
        self._leases: LeaseSlots = self.store.lease_slots(name, on_full=on_full, clock=clock)
        self.clock = clock or time.monotonic_ns
        self._sleep = sleep or getattr(clock, "sleep", None)
        self._spread = itertools.count()

    def try_acquire(self, key: Key, *, limit: int | None = None) -> Lease | None:
        """A lease on ``key`` if one is free right now, else None.

        ``limit`` overrides the default for this key (tiers differ)."""
        n = self._limit(limit)
        if n is None:
            return Lease(None, key, -1)
        token = self._leases.acquire(key, n, next(self._spread))
        if token >= 0:
            return Lease(self, key, token)
        if token == Acquired.UNRECORDED:  # the store could not record it, and admits
            return Lease(None, key, -1)
        return None

    def acquire(self, key: Key, *, timeout: float | None = None,
                limit: int | None = None) -> _Acquire:
        """Wait for a lease: ``with limit.acquire(key):`` or ``async with``.

        Raises ConcurrencyLimitExceeded when none frees up within
        ``timeout`` seconds (``None`` waits forever, 0 does not wait).
        Waiting polls with backoff (1 ms doubling to 50 ms): releases are
        not signalled across processes."""
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout}")
        return _Acquire(self, key, timeout, limit)

    def in_flight(self, key: Key, *, limit: int | None = None) -> int:
        """Leases of ``key`` held now (including any left by dead holders
        and not yet taken over; on Redis, not yet expired)."""
        n = self._limit(limit)
        return 0 if n is None else self._leases.in_flight(key, n)

    @property
    def reclaimed(self) -> int:
        """Leases of dead holders this process took over (on Redis: expired
        leases this process's acquires found and dropped; a key whose leases
        all expired is gone before anyone looks, and not counted)."""
        return self._leases.reclaimed

    def _limit(self, limit: int | None) -> int | None:
        return self.limit if limit is None else _check_limit(limit)

    def __repr__(self) -> str:
        return f"<ConcurrencyLimit {self.name!r} limit={self.limit}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.limit, self.store, self.name, self.retry_after))


class _Acquire:
    """The pending acquisition returned by ConcurrencyLimit.acquire."""

    __slots__ = ("_limiter", "_key", "_timeout", "_limit", "_lease")

    def __init__(self, limiter: ConcurrencyLimit, key: Key, timeout: float | None,
                 limit: int | None) -> None:
        self._limiter, self._key, self._timeout, self._limit = limiter, key, timeout, limit
        self._lease: Lease | None = None

    def _attempts(self) -> Any:
        """Yields the pause before each retry; the caller sleeps it."""
        lim = self._limiter
        deadline = None if self._timeout is None else lim.clock() + round(self._timeout * NS)
        pause = 0.001
        while True:
            self._lease = lim.try_acquire(self._key, limit=self._limit)
            if self._lease is not None:
                return
            if deadline is not None and lim.clock() + round(pause * NS) > deadline:
                n = lim._limit(self._limit)
                raise ConcurrencyLimitExceeded(self._key, n or 0, lim.retry_after)
            yield pause
            pause = min(pause * 2, 0.05)

    def __enter__(self) -> Lease:
        sleep = self._limiter._sleep or time.sleep
        for pause in self._attempts():
            sleep(pause)
        assert self._lease is not None
        return self._lease

    def __exit__(self, *exc: object) -> None:
        if self._lease is not None:
            self._lease.release()

    async def __aenter__(self) -> Lease:
        fake = self._limiter._sleep
        for pause in self._attempts():
            if fake is not None:
                fake(pause)
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(pause)
        assert self._lease is not None
        return self._lease

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()


def _check_limit(limit: int | None) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ConfigurationError(
            f"a concurrency limit must be an int between 1 and {MAX_LIMIT} (or None for "
            f"unlimited), got {limit!r}")
    return limit


def _rebuild(limit: int | None, store: Any, name: str, retry_after: float) -> ConcurrencyLimit:
    return ConcurrencyLimit(limit, store, name=name, retry_after=retry_after)

