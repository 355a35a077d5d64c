"""Fleet mode: one global limit, served at shared-memory speed on every host.

:class:`FleetBackend` wraps a :class:`~fastlimit.RedisBackend` (the global
state) and a host's :class:`~fastlimit.SharedTable` (the local one).  A key
that is hot on a host gets a *lease*: the host takes up to ``lease`` units of
the key's global GCRA budget from Redis in one script call
(``lua/fleet.lua``), and every worker process of the host serves checks from
that balance in the shared table, with a compare-and-swap and no round trip.
Cold keys (a few checks per lease period on a host) are checked on Redis one
by one, through the ordinary :class:`~fastlimit.RedisBackend` state: memory
and Redis traffic stay proportional to the traffic.

The flow of one key on one host::

    worker --hit--> lease balance (shared table) --empty/expired--> refill gate
                                                                (one worker)
                                                                     |
                        fleet.lua: give back r, take up to n  <------+
                        (Redis: n hits of cost 1 at now, paid before served)

Bounds (per key):

- **Never over**: a take of n units is the same state change, in Redis, as
  n hits of cost 1 at that moment, and a give-back is the GCRA's refund.
  With N the units paid net of returns since t0, the bucket keeps
  ``max(tat, now) >= t0 + N x T``, and a take passes only if its new tat is
  within ``now + tau``: so ``N <= B + (now - t0) / T`` at every take, which is
  one global GCRA's bound.  A host serves only units it has paid for (its
  balance holds nothing else), so the fleet admits at most that.
- **Under**: what a host holds and does not serve.  Leftovers are given back
  when the lease expires (``lease_period``) in the same call that takes the
  next one; what is never given back is the lease of a host that died or of
  a key that stopped being checked: at most ``lease`` units per host per key,
  so under-admission is at most ``lease x hosts`` per key per lease period.
  Redis forgets them as time passes (they are paid, as hits are).
- **Adaptive**: a lease is sized from what the host served of its previous
  one (x1.5, plus the check's cost) or, when it runs out early, from its
  pace so far, capped at ``lease``: a host serving 1% of a key's traffic
  asks for about 1% of it per period, not half the budget.  A key whose
  lease served fewer than ``hot`` units in a period gives its leftover back
  and goes cold again.

The host's shared table holds, per hot key: two lease balances (a lease
fills one while the other rests), the lease clock of each (a key with T = 1
ns whose tat is the lease's end, plus a grace), the units deposited in the
current lease, the host's view of the global bucket, a "global bucket empty
until" mark, a heat meter, and a refill gate (a concurrency lease of the
table: one worker per host refills, and a worker killed while refilling
frees the gate, as the table sees its process gone).

A balance is a GCRA state with a unit interval ``T_L = 2**32`` ns and a burst
``M = 4 x lease + 64``: ``remaining`` is the balance (a hit of cost c passes
iff the balance holds c, atomically, in the C core).  Two facts of GCRA keep
it exact: a key's tat moves by whole units except for the time that passes,
and a state only gains a unit every ``T_L`` (4.3 s) - so a balance is used
only while its lease is live (``lease_period`` <= 0.5 s) and is given back
only while its lease clock says it is younger than ``4 x lease_period``.  A
state the table does not hold reads as fresh (``M`` units): a check that
finds more than ``2 x lease + 32`` units knows the balance was never filled
and is not served from it.  The hot path (stores/_fleet.pyx) steps the
balance at the same clock reading that found the lease live, so a wait
between the two accrues nothing (a balance read at an earlier time holds
no more units).  The one gap is the slow path's, which reads the clock
again for its step: a worker stopped there for more than
``T_L - lease_period`` (3.8 s) between reading the lease's clock and the
table's compare-and-swap, on a key no other worker of the host checked
meanwhile, could be served the units such a wait accrues (one per 4.3 s).

Failure: a host that loses Redis keeps serving the lease it holds (an
expired lease is carried into the next without Redis), and once it is spent
answers by the Redis backend's ``fail`` policy (``"local"``: the host's
local table, at the same rate: per-host limits).  A host that dies strands
its lease.

Decisions: ``remaining`` is the host's balance plus what its view of the
global bucket has free (the bucket's state at this host's last take, as
time passed since); ``reset_after`` is that view's time to fully
replenished; a denial's ``retry_after`` is when this host will ask Redis
again (when a share of its next lease should be free), or the global
bucket's own retry for a check sent to Redis: never 0.  Cold keys and
checks sent to Redis answer as :class:`~fastlimit.RedisBackend` does.

Sync only (a :class:`~fastlimit.RedisBackend`, not the asyncio one);
``hit_many`` checks one key at a time, in C for keys with a live lease
(a key without one takes the slow path, one Redis call or a refill, as
``allow`` does); ``refund`` gives back on Redis.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fastlimit._core import Decision
from fastlimit.clock import NS_PER_S, monotonic_ns
from fastlimit.core import gcra
from fastlimit.errors import ConfigurationError
from fastlimit.stores._fleet import Held, LeaseFront
from fastlimit.stores.contract import Key, Kind, OnFullName, key_identity, key_list
from fastlimit.stores.table import SharedTable

if TYPE_CHECKING:
    from fastlimit.stores.redis.sync import (
        RedisBackend,
        RedisGcra,
        RedisLeases,
        RedisQuotaCounter,
    )

__all__ = ["FleetBackend", "FleetGcra", "FleetStats"]

T_L = 1 << 32           # a balance's unit interval (ns): it gains a unit only this often
_T_C = 1 << 32          # the deposit counter's unit interval
_C_BURST = 1 << 26      # the most units one lease counts
MAX_LEASE_PERIOD = 0.5  # seconds: a lease is used far within T_L
_GRACE = 4              # a lease clock lives this many periods: leftovers are given back within it


@dataclass(frozen=True)
class FleetStats:
    """Counters of one FleetBackend object (this process only).

    Attributes:
        leases: take calls Redis answered (each one round trip).
        taken: units those calls took.
        returned: units given back.
        short: takes that got fewer units than asked (the bucket was empty).
        direct: checks of hot keys sent to Redis one by one (the refill
            gate was busy, or the check's cost exceeded ``lease``).
        cold: checks of cold keys (Redis, one round trip each).
        denied: checks denied by the host with no round trip (the global
            bucket was known to be empty).
        failures: take calls Redis did not answer.
        stranded: units dropped without being given back (a lease older
            than its clock, or a balance found never filled).
    """

    leases: int = 0
    taken: int = 0
    returned: int = 0
    short: int = 0
    direct: int = 0
    cold: int = 0
    denied: int = 0
    failures: int = 0
    stranded: int = 0


class FleetBackend:
    """Global limits served from leases in each host's shared table.

    Pass it as ``store=`` of a Limiter, Quota, ConcurrencyLimit or Policy.
    Rate limits lease (see the module docstring for the bounds); quotas and
    concurrency limits are the Redis backend's own.

    Args:
        redis_backend: a :class:`~fastlimit.RedisBackend` (its prefix, hash
            tags, timeouts and ``fail`` policy apply).
        table: the host's :class:`~fastlimit.SharedTable` (kind "rates"),
            shared by every worker process of the host: named, or anonymous
            and inherited by forked workers.  Its ``on_full`` must not be
            "evict" (a forgotten balance would read as full).
        lease: the most units one lease holds (default: a tenth of the
            limiter's burst, at least 1).  The bound on under-admission is
            ``lease x hosts`` per key.
        lease_period: seconds a lease lasts before its leftover is given back
            and a new one sized (default 0.1, at most 0.5).
        hot: checks per lease period on a host that make a key hot (leased);
            below it, checks go to Redis one by one (default 4).

    Example:
        >>> redis = fastlimit.RedisBackend("redis://10.0.0.5:6379/0")  # doctest: +SKIP
        >>> table = fastlimit.SharedTable.open("api")  # doctest: +SKIP
        >>> fleet = fastlimit.FleetBackend(redis, table)  # doctest: +SKIP
        >>> api = fastlimit.Limiter("20000/1s", store=fleet, name="api")  # doctest: +SKIP
        >>> api.allow("tenant:7")  # doctest: +SKIP
        True
    """

    def __init__(self, redis_backend: RedisBackend, table: SharedTable, *,
                 lease: int | None = None, lease_period: float = 0.1, hot: int = 4) -> None:
        from fastlimit.stores.redis.sync import RedisBackend

        if not isinstance(redis_backend, RedisBackend):
            raise ConfigurationError(
                f"FleetBackend needs a (sync) RedisBackend, got {redis_backend!r}")
        if not isinstance(table, SharedTable) or table.kind != "rates":
            raise ConfigurationError(
                f"FleetBackend needs a SharedTable of kind 'rates', got {table!r}")
        if table.on_full == "evict":
            raise ConfigurationError(
                "FleetBackend's table must not evict (on_full='evict'): a forgotten lease "
                "balance would read as a full one; give it a table with on_full='deny'")
        if lease is not None and (isinstance(lease, bool) or not isinstance(lease, int)
                                  or not 1 <= lease <= 1 << 24):
            raise ConfigurationError(f"lease must be an int from 1 to 2**24 or None, got {lease!r}")
        if (isinstance(lease_period, bool) or not isinstance(lease_period, (int, float))
                or not 0.001 <= lease_period <= MAX_LEASE_PERIOD):
            raise ConfigurationError(
                f"lease_period must be a number of seconds from 0.001 to {MAX_LEASE_PERIOD}, "
                f"got {lease_period!r}")
        if isinstance(hot, bool) or not isinstance(hot, int) or not 1 <= hot <= 1 << 20:
            raise ConfigurationError(f"hot must be an int from 1 to 2**20, got {hot!r}")
        self.redis = redis_backend
        self.table = table
        self.lease = lease
        self.lease_period = float(lease_period)
        self.hot = hot
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(FleetStats.__dataclass_fields__, 0)

    # -- the store contract -----------------------------------------------------------

    @property
    def kinds(self) -> frozenset[Kind]:
        return self.redis.kinds

    def rate_state(self, name: str, emission_interval_ns: int, burst: int, *,
                   clock: Callable[[], int] | None = None,
                   on_full: OnFullName | None = None) -> FleetGcra:
        """GCRA state of the limiter ``name``, leased per host (see the module)."""
        return FleetGcra(self, name, emission_interval_ns, burst, clock, on_full)

    def quota_counts(self, name: str, limit: int, *,
                     on_full: OnFullName | None = None) -> RedisQuotaCounter:
        """Calendar counts of the quota ``name``: the Redis backend's."""
        return self.redis.quota_counts(name, limit, on_full=on_full)

    def lease_slots(self, name: str, *, on_full: OnFullName | None = None,
                    clock: Callable[[], int] | None = None) -> RedisLeases:
        """Leases of the concurrency limit ``name``: the Redis backend's."""
        return self.redis.lease_slots(name, on_full=on_full, clock=clock)

    @property
    def local_tables(self) -> dict[str, SharedTable]:
        """The Redis backend's tables for ``fail="local"`` (a Policy reads
        its limits' ``fail`` when the store has them)."""
        return self.redis.local_tables

    def stats(self) -> FleetStats:
        """This process's counters (Redis's own: ``redis.stats()``)."""
        with self._lock:
            return FleetStats(**self._counts)

    def close(self) -> None:
        """Close the Redis backend (the table is the caller's)."""
        self.redis.close()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.redis, self.table, self.lease, self.lease_period, self.hot))

    def __repr__(self) -> str:
        return (f"<FleetBackend {self.redis!r} table={self.table.name!r} lease={self.lease} "
                f"lease_period={self.lease_period}s hot={self.hot}>")

    # -- Redis: one take (give back r, take up to n) ------------------------------------

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self._counts[what] += n

    def take(self, rkey: bytes, now: int | None, T: int, tau: int, give: int,
             want: int) -> tuple[int, int] | None:
        """One fleet.lua call: ``(granted, ahead_ns after)``, or None when
        Redis did not answer.  It is the Redis backend's own call (its
        plan driver: its skip, retry, failure kinds, stats and batcher);
        a call that gives units back is never sent twice."""
        from fastlimit.stores.redis.plans import lease_take

        got = self.redis._run(lease_take(rkey, now, T, tau, give, want))
        self._taken(got, give, want)
        return got

    def _taken(self, got: tuple[int, int] | None, give: int, want: int) -> None:
        with self._lock:
            if got is None:
                self._counts["failures"] += 1
                return
            self._counts["leases"] += 1
            self._counts["taken"] += got[0]
            self._counts["returned"] += give
            if got[0] < want:
                self._counts["short"] += 1


def _rebuild(redis: RedisBackend, table: SharedTable, lease: int | None, lease_period: float,
             hot: int) -> FleetBackend:
    return FleetBackend(redis, table, lease=lease, lease_period=lease_period, hot=hot)


def _local_key(key: Key) -> bytes:
    identity = key_identity(key)
    if isinstance(identity, int):
        return b"i%d" % identity
    return b"s" + identity


class FleetGcra(LeaseFront):
    """One limiter's GCRA in fleet mode: the store contract's RateState.

    The hot path (:meth:`allow` or :meth:`hit` of a key leased on this
    host) is compiled (stores/_fleet.pyx, the base class): a dict lookup, a
    clock reading and one compare-and-swap on the shared table; the rest,
    from :meth:`_check`, is here."""

    def __init__(self, fleet: FleetBackend, name: str, emission_interval_ns: int, burst: int,
                 clock: Callable[[], int] | None, on_full: OnFullName | None) -> None:
        self.fleet = fleet
        remote: RedisGcra = fleet.redis.rate_state(name, emission_interval_ns, burst,
                                                   clock=clock, on_full=on_full)
        self._remote = remote
        self._spec = remote._spec
        self.name = name
        self.emission_interval_ns = T = emission_interval_ns
        self.burst = burst
        self.tolerance_ns = tau = gcra.tolerance_ns(T, burst)
        self.clock = clock
        self._now: Callable[[], int] = monotonic_ns if clock is None else clock
        self.lease = fleet.lease if fleet.lease is not None else max(1, burst // 10)
        self.lease = min(self.lease, burst)
        self._P = max(1, round(fleet.lease_period * NS_PER_S))
        self._K0 = _GRACE * self._P
        self._hot_n = fleet.hot
        # a balance: remaining = units; a never-filled one reads as M
        self._M = 4 * self.lease + 64
        self._valid = 2 * self.lease + 32
        table = fleet.table
        base = f"fleet:{fleet.redis.prefix}:{name}:{T}:{burst}"

        def state(part: str, t: int, b: int, full: OnFullName = "deny") -> Any:
            return table.rate_state(f"{base}:{part}", t, b, clock=clock, on_full=full,
                                    register=False)

        self._bal = state("bal", T_L, self._M)
        self._clk = state("clock", 1, self._K0)        # tat = the lease clock's end
        self._cnt = state("count", _T_C, _C_BURST)     # units deposited in the lease
        self._view = state("view", T, burst)           # the global bucket, as last seen
        self._wait = state("wait", 1, 1, "allow")      # global bucket empty until tat
        self._heat = state("heat", max(1, self._P // self._hot_n), self._hot_n, "allow")
        self._gate = table.lease_slots(f"{base}:gate", on_full="deny")
        self._tau = tau
        self._hot = {}  # this process's leased keys (see _remember)

    @property
    def on_full(self) -> int:
        code: int = self._remote.on_full
        return code

    # -- beside the hot path (allow and hit: LeaseFront's) -------------------------------

    def peek(self, key: Key, cost: int = 1) -> Decision:
        e = self._hot.get(key)
        if e is not None and 1 <= cost <= self.lease and self._now() < e.end_ns:
            d = self._bal.peek(e.balance, cost)
            if d.allowed and d.remaining < self._valid:
                return self._served(e.kb, d.remaining - cost)
        return self._remote.peek(key, cost)

    def refund(self, key: Key, cost: int = 1) -> bool:
        return self._remote.refund(key, cost)

    def reset(self, key: Key) -> None:
        kb = _local_key(key)
        self._hot.pop(key, None)
        for part in (b"a", b"b"):
            self._clk.reset(kb + part)
            self._bal.reset(kb + part)
        for st in (self._cnt, self._view, self._wait, self._heat):
            st.reset(kb)
        self._remote.reset(key)

    def hit_many(self, keys: Iterable[Key] | npt.NDArray[np.integer[Any]],
                 cost: int = 1) -> npt.NDArray[np.bool_]:
        return np.frombuffer(self._allow_each(key_list(keys), cost), dtype=np.bool_)

    # -- decisions (served: LeaseFront._served) ----------------------------------------

    def _denied(self, kb: bytes, retry_ns: int, key: Key | None = None,
                now: int = 0) -> Decision:
        v = self._view.peek(kb)
        e = self._hot.get(key) if key is not None else None
        if e is not None and now:
            # denied in this process too, with no table call, until then
            # (``now`` was read before the wait was: never past its end)
            e.denied_until_ns = now + retry_ns
            e.full_at_ns = now + v.reset_after_ns
        return Decision(False, self.burst, 0, v.reset_after_ns, max(1, retry_ns))

    # -- the slow path ------------------------------------------------------------------

    def _lease_of(self, kb: bytes) -> tuple[bytes | None, int]:
        """The host's current lease of ``kb``: its balance key and its clock's
        time ahead (0: no lease younger than the grace)."""
        best: bytes | None = None
        ahead = 0
        for part in (b"a", b"b"):
            ra = self._clk.peek(kb + part).reset_after_ns
            if ra > ahead:
                best, ahead = kb + part, ra
        return best, ahead

    def _check(self, key: Key, cost: int) -> Decision:
        inc = self._spec.inc(cost)  # the contract's checks of cost (CapacityError...)
        if cost == 0:
            return self.peek(key, 1)
        if cost > self.lease:
            self.fleet._count("direct")
            return self._remote.hit(key, cost)
        kb = _local_key(key)
        now = self._now()
        bkey, ahead = self._lease_of(kb)
        live = ahead > self._K0 - self._P
        if live and bkey is not None:
            answered = self._from_lease(key, kb, bkey, cost, now, ahead)
            if answered is not None:
                return answered
        elif bkey is None and self._heat.allow(kb):
            self._hot.pop(key, None)
            self.fleet._count("cold")
            return self._remote.hit(key, cost)
        token = self._gate.try_acquire(kb, 1)
        if token < 0:
            served = self._after_refill(key, kb, cost)
            if served is not None:
                return served
            # the refill is slow (Redis is): this one check is counted on
            # Redis itself (paid there, as a cold check)
            self.fleet._count("direct")
            return self._remote.hit(key, cost)
        try:
            return self._refill(key, kb, cost, inc)
        finally:
            self._gate.release(kb, token)

    def _after_refill(self, key: Key, kb: bytes, cost: int) -> Decision | None:
        """Another worker of the host holds the refill gate: wait for it
        (a round trip's time, checked every 50 us, for at most ~2 ms) and be
        served from what it took; None if it takes longer."""
        for _ in range(40):
            time.sleep(0.00005)
            if self._gate.in_flight(kb, 1):
                continue
            now = self._now()
            bkey, ahead = self._lease_of(kb)
            if bkey is None or ahead <= self._K0 - self._P:
                return None
            return self._from_lease(key, kb, bkey, cost, now, ahead)
        return None

    def _from_lease(self, key: Key, kb: bytes, bkey: bytes, cost: int, now: int,
                    ahead: int) -> Decision | None:
        """The answer of the host's live lease: served from its balance, or
        denied while Redis said the bucket is empty; None: a refill is due."""
        answer = self._serve_from(key, kb, bkey, cost, now, ahead)
        if answer is not None:
            return answer
        w = self._wait.peek(kb)
        if not w.allowed:
            self.fleet._count("denied")
            self._remember(key, kb, bkey, now, ahead)
            return self._denied(kb, w.retry_after_ns, key, now)
        return None

    def _serve_from(self, key: Key, kb: bytes, bkey: bytes, cost: int, now: int,
                    ahead: int) -> Decision | None:
        """Served from the balance ``bkey`` of a live lease, or None (it
        lacks ``cost`` units, or was never filled)."""
        left = self._bal.take(bkey, cost)
        if not 0 <= left < self._valid:
            return None
        self._remember(key, kb, bkey, now, ahead)
        return self._served(kb, left)

    def _remember(self, key: Key, kb: bytes, bkey: bytes, now: int, ahead: int) -> None:
        if len(self._hot) > 65536:
            self._hot.clear()
        # the lease ends at its clock's tat - (K0 - P); ``now`` was read
        # before the clock was, so this end is never later than the lease's
        self._hot[key] = Held(now + ahead - (self._K0 - self._P), bkey, kb,
                              self._bal.fingerprint(bkey))

    def _refill(self, key: Key, kb: bytes, cost: int, inc: int) -> Decision:
        """Under the host's refill gate: a lease that ran out takes more; an
        expired one is given back and replaced (one Redis call either way)."""
        now = self._now()
        bkey, ahead = self._lease_of(kb)
        P, K0 = self._P, self._K0
        send_now = None if self.clock is None else now
        if bkey is not None and ahead > K0 - P:
            # refilled while this one waited for the gate?
            answer = self._serve_from(key, kb, bkey, cost, now, ahead)
            if answer is not None:
                return answer
            w = self._wait.peek(kb)
            if not w.allowed:
                self.fleet._count("denied")
                self._remember(key, kb, bkey, now, ahead)
                return self._denied(kb, w.retry_after_ns, key, now)
            age = max(K0 - ahead, 1)
            deposited = self._deposited(kb)
            pace = deposited * (P - age) // max(age, P // 16)
            want = min(self.lease, max(cost, pace * 5 // 4 + cost))
            got = self.fleet.take(self._spec.rkey(key), send_now, self.emission_interval_ns,
                                  self._tau, 0, want)
            if got is None:
                return self._remote.hit(key, cost)  # the fail policy (Redis is marked down)
            granted, seen = got
            self._after_take(kb, want, granted, seen, cost)
            if granted:
                self._bal.refund(bkey, granted)
                self._cnt.hit(kb, granted)
            answer = self._serve_from(key, kb, bkey, cost, now, ahead)
            if answer is not None:
                return answer
            return self._denied(kb, self._retry(kb, seen, inc))
        # rollover: drain the old lease (its units are then nobody's)
        left = 0
        served = 0
        had = bkey is not None
        for part in (b"a", b"b"):
            drained = self._drain(kb + part)
            if kb + part == bkey:
                left = drained
            elif drained:
                self.fleet._count("stranded", drained)
        if had:
            served = max(0, self._deposited(kb) - left)
        elif left:
            self.fleet._count("stranded", left)
            left = 0
        if had and served < self._hot_n:
            # not hot any more: give everything back, go cold
            if left:
                got = self.fleet.take(self._spec.rkey(key), send_now,
                                      self.emission_interval_ns, self._tau, left, 0)
                if got is None:
                    self.fleet._count("stranded", left)
            self._forget(kb)
            self._hot.pop(key, None)
            self.fleet._count("cold")
            return self._remote.hit(key, cost)
        if had:
            want = min(self.lease, max(cost, served * 3 // 2 + cost))
        else:
            want = min(self.lease, max(cost, self._hot_n))
        give, ask = (left - want, 0) if left >= want else (0, want - left)
        if ask and not self._wait.peek(kb).allowed:
            ask = 0  # the global bucket is empty for a while: carry only
        balance = left
        g_ahead: int | None = None
        if give or ask:
            got = self.fleet.take(self._spec.rkey(key), send_now, self.emission_interval_ns,
                                  self._tau, give, ask)
            if got is not None:
                granted, g_ahead = got
                balance = left - give + granted
                self._after_take(kb, ask, granted, g_ahead, cost)
        # the new lease goes in the other balance, freshly aligned
        new = kb + (b"b" if bkey == kb + b"a" else b"a")
        self._fill(new, balance)
        self._cnt.reset(kb)
        if balance:
            self._cnt.hit(kb, balance)
        for part in (b"a", b"b"):
            self._clk.reset(kb + part)
        self._clk.hit(new, K0)
        now = self._now()
        ahead = self._clk.peek(new).reset_after_ns
        answer = self._serve_from(key, kb, new, cost, now, ahead)
        if answer is not None:
            return answer
        if g_ahead is None and balance == 0 and not (give or ask) and self._wait.peek(kb).allowed:
            return self._remote.hit(key, cost)
        if g_ahead is None and (give or ask):
            return self._remote.hit(key, cost)  # Redis failed and the lease is spent
        self._remember(key, kb, new, now, ahead)
        w = self._wait.peek(kb)
        self.fleet._count("denied")
        if not w.allowed:
            return self._denied(kb, w.retry_after_ns, key, now)
        return self._denied(kb, self._retry(kb, g_ahead if g_ahead is not None else 0, inc))

    def _after_take(self, kb: bytes, want: int, granted: int, ahead: int, cost: int) -> None:
        """Record what the take saw: the host's view of the bucket, and when
        the bucket is empty, until when (a share of the next lease free)."""
        self._view.hold(kb, ahead)
        if granted < want:
            # a share of a lease, not one unit: a host whose demand exceeds
            # what the bucket has asks again once that much is free
            share = max(cost, want // 4, self.lease // 4)
            wait = gcra.wait_ns(ahead, share * self.emission_interval_ns,
                                self.emission_interval_ns, self.burst)
            # ... and not sooner than a quarter period: other hosts take from
            # the bucket too, so a host that polled as soon as its share was
            # free would mostly find less (the bucket keeps what accrues
            # meanwhile, as long as a wait is short of its tolerance)
            wait = min(max(wait, self._P // 4), self._tau // 4, self._P)
            if wait > 0:
                self._wait.hold(kb, wait)

    def _retry(self, kb: bytes, g_ahead: int, inc: int) -> int:
        return max(1, gcra.wait_ns(g_ahead, inc, self.emission_interval_ns, self.burst))

    def _deposited(self, kb: bytes) -> int:
        ra = self._cnt.peek(kb).reset_after_ns
        return -(-ra // _T_C) if ra > 0 else 0

    def _drain(self, bkey: bytes) -> int:
        """Take a balance to 0: the units it held (0 for one never filled)."""
        while True:
            r = self._bal.peek(bkey).remaining
            if r >= self._valid:
                # never filled (or forgotten): reads as M; nothing legit in it
                self._bal.reset(bkey)
                return 0
            if r == 0 or self._bal.take(bkey, r) >= 0:
                units: int = r
                return units

    def _fill(self, bkey: bytes, units: int) -> None:
        """Make ``bkey`` hold ``units``: from fresh (M), one hit of M - units;
        stray hits meanwhile (a worker that read an old clock) are drained."""
        self._bal.reset(bkey)
        while self._bal.take(bkey, self._M - units) < 0:
            r = self._bal.peek(bkey).remaining
            if r <= units:
                # (cannot happen without M - units stray units) keep it empty
                self._drain(bkey)
                if units:
                    self._bal.refund(bkey, units)
                return
            if self._bal.take(bkey, r - units) >= 0:
                return

    def _forget(self, kb: bytes) -> None:
        for part in (b"a", b"b"):
            self._clk.reset(kb + part)
            self._bal.reset(kb + part)
        self._cnt.reset(kb)
        self._heat.reset(kb)

    def __repr__(self) -> str:
        return (f"<FleetGcra {self.name!r} T={self.emission_interval_ns}ns burst={self.burst} "
                f"lease={self.lease}>")
