"""The Redis backend's operations, sans I/O.

Each operation is a plan: a generator that yields the script calls it
needs, ``(script, keys, args)``, and is sent their replies (or has a
:class:`~.common.Failure` thrown in when Redis does not answer).  The sync
and asyncio backends drive the same plans, so they cannot answer apart.
Every answer is computed by the statements of the arithmetic,
:mod:`fastlimit.core.gcra` and :mod:`fastlimit.core.quota`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from fastlimit import _core
from fastlimit._core import Decision
from fastlimit.clock import NS_PER_S
from fastlimit.core import gcra, quota
from fastlimit.core.results import Acquired, OnFull, QuotaMode, Step
from fastlimit.errors import ConfigurationError
from fastlimit.stores.contract import check_clock, key_list
from fastlimit.stores.redis.common import (
    _KINDS,
    BackendBase,
    Fail,
    Failure,
    Key,
    Keyspace,
    Plan,
    key_slot,
    split_ns,
)

__all__ = ["LeasePlans", "LeaseStateBase", "QuotaPlans", "QuotaStateBase", "RateSpec",
           "RateStateBase", "hit_all", "lease_take"]

Check: TypeAlias = "tuple[Any, Key] | tuple[Any, Key, int]"

# the core's on_full codes, which Quota and ConcurrencyLimit read off a store's state
# ("local": what the store answers is the local table's, and a table that
# has no room for a key denies it)
_ON_FULL_CODE: dict[str, OnFull] = {"closed": OnFull.DENY, "open": OnFull.ALLOW,
                                    "raise": OnFull.RAISE, "local": OnFull.DENY}
# Redis lease tokens have this bit set; the local table's (fail="local"),
# which are lease indices, never do: a release goes where its lease is.
_REDIS_TOKEN = 1 << 62
_NS_PER_MS = 1_000_000
# Quota keys outlive their period by this much (on the writer's clock), so a
# host whose wall clock lags by less still finds the count at the period's
# end, rather than a missing key that would read as zero.
QUOTA_GRACE_S = 3600
_QUOTA_GRACE_MS = QUOTA_GRACE_S * 1000


class RateSpec(Keyspace):
    """One limiter on one backend: its keys, the deny cache and its
    operations as plans."""

    def __init__(self, backend: BackendBase, name: str, emission_interval_ns: int,
                 burst: int, clock: Callable[[], int] | None, fail: Fail) -> None:
        gcra.check_params(emission_interval_ns, burst)
        check_clock(clock)
        super().__init__(backend, name, fail)
        self.T = emission_interval_ns
        self.burst = burst
        self.tau = gcra.tolerance_ns(emission_interval_ns, burst)
        self.clock = clock
        self.on_full = _ON_FULL_CODE[fail]
        # Script arguments go as bytes: redis-py packs bytes as they are, and
        # encoding ints costs more than the rest of a check's client side.
        self._tau_args = tuple(b"%d" % v for v in split_ns(self.tau))
        self._group1 = (*(b"%d" % v for v in split_ns(self.T)), *self._tau_args, b"1")
        self._table = backend._deny_table
        self._checker: Any = None
        if self._table is not None:
            # The deny cache keeps, per key, the time a hit of cost 1 would
            # pass again, as the tat of a GCRA with T = 1 ns and burst 1
            # (denied iff tat > now; retry_after = tat - now).  The name has
            # the rate in it: a changed rate must not inherit old denials.
            self._deny_name = f"redis-deny:{backend.prefix}:{name}:{self.T}:{burst}"
            self._checker = self._table.rate_state(self._deny_name, 1, 1, clock=clock,
                                                   on_full="allow")
        # fail="local": the same limit on the host's local table, which
        # answers while Redis cannot (named per rate, as the deny cache)
        self._local: Any = None
        if fail == "local":
            table = backend._local_table("rates", injected=clock is not None)
            self._local = table.rate_state(f"redis-local:{name}:{self.T}:{burst}", self.T,
                                           burst, clock=clock)

    # -- arguments --------------------------------------------------------------

    def inc(self, cost: int) -> int:
        """``cost x T``, after the core's checks of ``cost``."""
        if type(cost) is int and cost == 1:  # Decimal('sNaN') == 1 raises
            return self.T
        n = gcra.check_cost(cost, self.burst, f"the burst of {self.burst}")
        return gcra.increment_ns(n, self.T)

    def group(self, inc: int, consume: bool) -> tuple[bytes, ...]:
        """A check's parameters for the script: inc (s, ns), tau (s, ns), consume."""
        if inc == self.T and consume:
            return self._group1
        inc_s, inc_ns = split_ns(inc)
        return (b"%d" % inc_s, b"%d" % inc_ns, *self._tau_args, b"1" if consume else b"0")

    def now(self) -> tuple[int | None, int | None]:
        """(local time for the deny cache, time to send to the script).

        The local time is read before the call, so a cached denial never
        outlasts the one Redis gave."""
        if self.clock is not None:
            t = int(self.clock())
            return t, t
        if self._table is not None:
            return _core.monotonic_ns(), None
        return None, None

    # -- decisions --------------------------------------------------------------

    def decision(self, allowed: bool, after: int, inc: int) -> Decision:
        return Decision(*gcra.answer(allowed, after, inc, self.T, self.burst))

    def result(self, key: Key, reply: Sequence[int], i: int, inc: int, consume: bool,
               t0: int | None) -> tuple[bool, int]:
        """(allowed, ahead after) of check ``i`` of a script reply; caches
        the denial the new state implies."""
        allowed = reply[3 * i] == 1
        ahead = reply[3 * i + 1] * NS_PER_S + reply[3 * i + 2]
        after = ahead + inc if allowed and consume else ahead
        self.remember(key, after, t0)
        return allowed, after

    def failed(self, failure: Failure, inc: int) -> Decision:
        """The failure policy's answer, as the core's when its table is full."""
        allow = self.failed_allows(failure)
        return Decision(*gcra.no_slot(allow, inc, self.T, self.burst))

    # -- the deny cache ----------------------------------------------------------

    def cached(self, key: Key, inc: int) -> Decision | None:
        """The denial the deny cache holds for ``key``, or None."""
        if self._checker is None:
            return None
        d = self._checker.peek(key)
        if d.allowed:
            return None
        self.backend._count("cache_hits")
        return Decision(*gcra.denied_for(d.retry_after_ns, inc, self.T, self.burst))

    def is_cached(self, key: Key) -> bool:
        if self._checker is None or self._checker.allow(key, 0):
            return False
        self.backend._count("cache_hits")
        return True

    def remember(self, key: Key, after: int, t0: int | None) -> None:
        """Cache the denial of cost 1 that the state ``tat = t0 + after`` implies."""
        wait = gcra.wait_ns(after, self.T, self.T, self.burst)
        if t0 is None or wait <= 0 or self._table is None:
            return
        # Stored on the table's own clock (the limiter's, as the checker
        # reads it), less the time since t0: tat = t0 + wait still.  A GCRA
        # with T = 1 ns and burst ``left`` admits a hit of cost ``left`` only
        # on a fresh key: a racing process's entry is kept, never stretched.
        left = wait - ((int(self.clock()) if self.clock is not None else _core.monotonic_ns())
                       - t0)
        if left <= 0:
            return
        setter = self._table.rate_state(self._deny_name, 1, left, clock=self.clock,
                                        on_full="allow")
        setter.allow(key, left)

    def forget(self, key: Key) -> None:
        if self._checker is not None:
            self._checker.reset(key)

    def reset_local(self, key: Key) -> None:
        if self._local is not None:
            self._local.reset(key)

    def local_check(self, key: Key, cost: int, consume: bool) -> Decision:
        """The local table's answer, counted (``fail="local"``)."""
        self.answered_locally()
        result: Decision = (self._local.hit if consume else self._local.peek)(key, cost)
        return result

    # -- plans ----------------------------------------------------------------------

    def allow(self, key: Key, cost: int) -> Plan[bool]:
        rkey = self.rkey(key)
        inc = self.inc(cost)
        if self.is_cached(key):
            return False
        t0, now = self.now()
        try:
            reply = yield "gcra", [rkey], self.backend._args(
                b"hit", now, (self.group(inc, cost != 0),))
        except Failure as f:
            if self.answered_locally():
                allowed: bool = self._local.allow(key, cost)
                return allowed
            return self.failed_allows(f)
        return self.result(key, reply, 0, inc, cost != 0, t0)[0]

    def check(self, key: Key, cost: int, consume: bool | None) -> Plan[Decision]:
        """``consume=None``: consume unless ``cost`` is 0 (decided once
        ``cost`` is known to be an int)."""
        rkey = self.rkey(key)
        inc = self.inc(cost)
        if consume is None:
            consume = cost != 0
        cached = self.cached(key, inc)
        if cached is not None:
            return cached
        t0, now = self.now()
        try:
            reply = yield "gcra", [rkey], self.backend._args(
                b"hit", now, (self.group(inc, consume),))
        except Failure as f:
            if self._local is not None:
                return self.local_check(key, cost, consume)
            return self.failed(f, inc)
        allowed, after = self.result(key, reply, 0, inc, consume, t0)
        return self.decision(allowed, after, inc)

    def refund(self, key: Key, cost: int) -> Plan[bool]:
        rkey = self.rkey(key)
        inc = self.inc(cost)
        if cost == 0:
            return False
        self.forget(key)
        _t0, now = self.now()
        try:
            reply = yield "gcra", [rkey], self.backend._args(
                b"refund", now, (self.group(inc, True),))
        except Failure as f:
            if self._local is not None:  # gives back what the local table counted
                refunded: bool = self._local.refund(key, cost)
                return refunded
            self.raise_if_loud(f)
            return False
        return reply[0] == 1

    def hit_many(self, keys: Any, cost: int) -> Plan[npt.NDArray[np.bool_]]:
        keys_ = key_list(keys)
        rkeys = [self.rkey(k) for k in keys_]
        inc = self.inc(cost)
        consume = cost != 0
        out = np.zeros(len(keys_), dtype=np.bool_)
        todo = [i for i, k in enumerate(keys_) if not self.is_cached(k)]
        if not todo:
            return out
        t0, now = self.now()
        args = self.backend._args(b"hit", now, (self.group(inc, consume),))
        for batch in self.backend._batches(rkeys, todo):
            try:
                reply = yield "gcra", [rkeys[i] for i in batch], args
            except Failure as f:
                if self.answered_locally(len(batch)):
                    out[batch] = self._local.hit_many([keys_[i] for i in batch], cost)
                else:
                    out[batch] = self.failed_allows(f, len(batch))
                continue
            for j, i in enumerate(batch):
                out[i] = self.result(keys_[i], reply, j, inc, consume, t0)[0]
        return out


class QuotaPlans(Keyspace):
    """One calendar quota's counts on one backend (``quota.lua``): the
    store contract's QuotaCounts, as plans."""

    def __init__(self, backend: BackendBase, name: str, limit: int, fail: Fail) -> None:
        # the core's checks, with its messages, so both stores refuse alike
        if not 1 <= limit <= _core.QUOTA_MAX_COUNT:
            raise ValueError(f"a quota limit must be between 1 and {_core.QUOTA_MAX_COUNT}, "
                             f"got {limit}")
        super().__init__(backend, name, fail, _KINDS["quota"], "a quota name")
        self.limit = limit
        self._limit_arg = b"%d" % limit
        self.on_full = _ON_FULL_CODE[fail]
        # a denial for want of Redis lasts until the backend tries it again,
        # not until the period ends
        self.retry_after_ns = max(NS_PER_S, round(backend._retry_interval * NS_PER_S))
        self._local: Any = None
        if fail == "local":  # the same quota on the host's local quota table
            self._local = backend._local_table("quotas").quota_counts(
                f"redis-local:{name}", limit)

    def reset_local(self, key: Key) -> None:
        if self._local is not None:
            self._local.reset(key)

    def step(self, key: Key, tag: int, cost: int, mode: int,
             left_ns: int) -> Plan[tuple[Step, int]]:
        rkey = self.rkey(key)
        if not 1 <= tag <= _core.QUOTA_MAX_TAG:
            raise ValueError(f"period tag out of range: {tag}")
        if cost < 0:
            raise ValueError(f"cost must be >= 0, got {cost}")
        if mode not in (QuotaMode.PEEK, QuotaMode.CONSUME, QuotaMode.REFUND):
            raise ValueError(f"bad mode {mode}")
        keep_ms = -(-max(left_ns, 0) // _NS_PER_MS) + _QUOTA_GRACE_MS
        try:
            reply = yield "quota", [rkey], [
                b"%d" % mode, b"%d" % tag, b"%d" % cost, self._limit_arg, b"%d" % keep_ms]
        except Failure as f:
            if self._local is not None:
                if mode != QuotaMode.REFUND:
                    self.answered_locally()
                step: tuple[Step, int] = self._local.step(key, tag, cost, mode, left_ns)
                return step
            if mode == QuotaMode.REFUND:  # nothing to answer
                self.raise_if_loud(f)
            else:
                self.failed_allows(f)
            return Step.NO_SLOT, 0
        return Step(reply[0]), reply[1]

    def answer(self, key: Key, tag: int, cost: int, mode: int, left_ns: int) -> Plan[Decision]:
        result, count = yield from self.step(key, tag, cost, mode, left_ns)
        return Decision(*quota.answer(result, count, cost, left_ns, self.limit,
                                      self.on_full == OnFull.ALLOW, self.retry_after_ns))


class LeasePlans(Keyspace):
    """One concurrency limit's leases on one backend (``leases.lua``): the
    store contract's LeaseSlots, as plans.  A lease is a random 63-bit
    token in the key's sorted set, scored by the time it expires."""

    def __init__(self, backend: BackendBase, name: str, fail: Fail,
                 clock: Callable[[], int] | None) -> None:
        check_clock(clock)
        super().__init__(backend, name, fail, _KINDS["concurrency"], "a concurrency limit name")
        self.clock = clock
        self.on_full = _ON_FULL_CODE[fail]
        self._ttl = b"%d" % backend._lease_ttl_ms
        self.reclaimed = 0
        self._local: Any = None
        if fail == "local":  # leases on the host's local table (they end with their process)
            table = backend._local_table("rates", injected=clock is not None)
            self._local = table.lease_slots(f"redis-local:{name}", clock=clock)

    def now(self) -> bytes:
        """The script's ``now`` in ms: the injected clock's, else '' (the
        server's TIME, one clock for every host)."""
        return b"" if self.clock is None else b"%d" % (int(self.clock()) // _NS_PER_MS)

    def acquire(self, key: Key, limit: int) -> Plan[int]:
        rkey = self.rkey(key)
        if limit < 1:
            raise ValueError(f"a concurrency limit must be >= 1, got {limit}")
        # secrets, not random: forked workers must not draw the same tokens
        token = secrets.randbits(62) | _REDIS_TOKEN
        try:
            reply = yield "leases", [rkey], [
                b"acquire", self.now(), b"%d" % token, self._ttl, b"%d" % limit]
        except Failure as f:
            if self.answered_locally():
                got: int = self._local.acquire(key, limit)
                return got
            return Acquired.UNRECORDED if self.failed_allows(f) else Acquired.REFUSED
        if reply[1]:
            with self.backend._lock:
                self.reclaimed += reply[1]
        return token if reply[0] == 1 else Acquired.REFUSED

    def _token_call(self, mode: bytes, key: Key, token: int, unknown: bool) -> Plan[bool]:
        rkey = self.rkey(key)
        if self._local is not None and 0 <= token < _REDIS_TOKEN:
            # a lease of the local table: released there; it never expires
            # (it ends with its process), so a renew keeps it
            return True if mode == b"renew" else bool(self._local.release(key, token))
        try:
            reply = yield "leases", [rkey], [mode, self.now(), b"%d" % token, self._ttl]
        except Failure as f:
            self.raise_if_loud(f)
            return unknown
        return reply[0] == 1

    def release(self, key: Key, token: int) -> Plan[bool]:
        # unanswered: the lease stays in Redis and expires within its TTL
        return self._token_call(b"release", key, token, False)

    def renew(self, key: Key, token: int) -> Plan[bool]:
        # Unanswered: the lease stands until its TTL as far as anyone can
        # tell (acquires fail alike meanwhile), so the holder is not told it
        # lost it; the next renew that reaches Redis tells.
        return self._token_call(b"renew", key, token, True)

    def in_flight(self, key: Key, limit: int) -> Plan[int]:
        rkey = self.rkey(key)
        try:
            reply = yield "leases", [rkey], [b"count", self.now()]
        except Failure as f:
            if self._local is not None:
                held: int = self._local.in_flight(key, limit)
                return held
            self.raise_if_loud(f)
            return 0
        return reply[0]


class StateBase:
    """What every state object of both backends holds: the backend's plan
    driver, its plans, their name and failure policy."""

    def __init__(self, backend: Any, plans: Any) -> None:
        self._run = backend._run
        self._plans = plans
        self.name = plans.name
        self.on_full = plans.on_full


class RateStateBase(StateBase):
    """What the sync and asyncio rate states share: the plans they drive, and
    the parameters the store contract's RateState names."""

    def __init__(self, backend: Any, spec: RateSpec) -> None:
        super().__init__(backend, spec)
        self._spec = spec
        self.emission_interval_ns = spec.T
        self.burst = spec.burst
        self.tolerance_ns = spec.tau
        self.clock = spec.clock
        self.fail = spec.fail

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name!r} T={self.emission_interval_ns}ns "
                f"burst={self.burst}>")


class LeaseStateBase(StateBase):
    """What the sync and asyncio lease slots share."""

    _plans: LeasePlans

    @property
    def reclaimed(self) -> int:
        return self._plans.reclaimed

    @property
    def ttl(self) -> float:
        """Seconds a lease counts without a renew."""
        return self._plans.backend.lease_ttl

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} ttl={self.ttl}s>"


class QuotaStateBase(StateBase):
    """What the sync and asyncio quota counts share."""

    _plans: QuotaPlans

    def __init__(self, backend: Any, plans: QuotaPlans) -> None:
        super().__init__(backend, plans)
        self.limit = plans.limit
        self.retry_after_ns = plans.retry_after_ns

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} limit={self.limit}>"


def hit_all(backend: BackendBase, checks: Iterable[Check],
            kind: type[Any]) -> Plan[list[Decision | None]]:
    """Several limiters of ``backend`` (states of type ``kind``, or
    limiters holding one) counted all or none, in one script call."""
    items = []
    for check in checks:
        if not isinstance(check, tuple) or len(check) not in (2, 3):
            raise TypeError(f"a check is (limiter, key) or (limiter, key, cost), got {check!r}")
        lim, key = check[0], check[1]
        cost = check[2] if len(check) == 3 else 1
        state: Any = getattr(lim, "_impl", lim)  # a Limiter holds its state
        if not isinstance(state, kind) or state._spec.backend is not backend:
            raise ConfigurationError(f"hit_all takes limiters on this backend, got {lim!r}")
        spec: RateSpec = state._spec
        items.append((spec, key, spec.rkey(key), spec.inc(cost), cost != 0))
    if not items:
        return []
    if len({id(it[0].clock) for it in items}) > 1:
        raise ConfigurationError("hit_all needs every limiter on the same clock")
    if backend._cluster and len({key_slot(it[2]) for it in items}) > 1:
        raise ConfigurationError(
            "on Redis Cluster, hit_all needs every key in one hash slot: use one key per "
            "request across the limiters, or co-locate keys with hash_tag=")
    if backend._deny_table is not None:
        cached = [spec.cached(key, inc) for spec, key, _r, inc, _c in items]
        if any(d is not None for d in cached):
            return cached
    t0, now = items[0][0].now()
    try:
        reply = yield "gcra", [it[2] for it in items], backend._args(
            b"all", now, [spec.group(inc, consume) for spec, _k, _r, inc, consume in items])
    except Failure as f:
        if any(spec._local is not None for spec, *_ in items):
            return _local_all(f, items)
        return [spec.failed(f, inc) for spec, _k, _r, inc, _c in items]
    passed = all(reply[3 * i] == 1 for i in range(len(items)))
    out: list[Decision | None] = [None] * len(items)
    # A key named twice saw its first check's hit, stored only if all
    # passed: cache from its last check if so, else from its first (the
    # one that saw the stored state).  Backwards, the last comes first.
    order = range(len(items) - 1, -1, -1) if passed else range(len(items))
    seen: set[bytes] = set()
    for i in order:
        spec, key, rkey, inc, consume = items[i]
        allowed, after = spec.result(
            key, reply, i, inc, consume and passed, t0 if rkey not in seen else None)
        seen.add(rkey)
        out[i] = spec.decision(allowed, after, inc)
    return out


def lease_take(rkey: bytes, now: int | None, T: int, tau: int, give: int,
               want: int) -> Plan[tuple[int, int] | None]:
    """Fleet mode's refill (``fleet.lua``, :mod:`fastlimit.stores.fleet`):
    give back ``give`` units of ``rkey``'s GCRA (T, tau), then take up to
    ``want``; ``(granted, ahead_ns after)``, or None when Redis did not
    answer (the backend counted and logged it; the fleet answers by its
    lease, then the failure policy).  ``now`` None: the server's TIME.
    A call that gives back is not resent after a timeout (retry_safe)."""
    args = [b"", b""] if now is None else [b"%d" % v for v in split_ns(now)]
    args += [b"%d" % v for v in (*split_ns(T), *split_ns(tau), give, want)]
    try:
        reply = yield "fleet", [rkey], args
    except Failure:
        return None
    granted, a_s, a_ns = reply
    return granted, a_s * NS_PER_S + a_ns


def _local_all(f: Failure, items: list[tuple[RateSpec, Key, bytes, int, bool]]
               ) -> list[Decision | None]:
    """hit_all's answers when Redis failed and some limiters answer from
    the local table: all or nothing as far as this process goes (the local
    checks are peeked, and counted only if every check passes; another
    process may count between the two)."""
    def peek(spec: RateSpec, key: Key, inc: int, cost: int) -> Decision:
        if spec._local is None:
            return spec.failed(f, inc)
        return spec.local_check(key, cost, False)

    costs = [inc // spec.T for spec, _k, _r, inc, _c in items]  # inc is cost x T
    peeks = [peek(spec, key, inc, c)
             for (spec, key, _r, inc, _c), c in zip(items, costs, strict=True)]
    if not all(d.allowed for d in peeks):
        return list(peeks)
    return [spec._local.hit(key, c) if spec._local is not None and consume else d
            for (spec, key, _r, _i, consume), c, d in zip(items, costs, peeks, strict=True)]


HIT_ALL_DOC = """Check several limits at once and count all of them or none.

        One script: one round trip and one atomic step, so concurrent
        requests never see a half-counted composite.

        Args:
            checks: ``(limiter, key)`` or ``(limiter, key, cost)`` tuples;
                the limiters must be on this backend and share one clock.

        Returns:
            One Decision per check, in order; the request passes iff every
            one allows.  When one denies nothing is counted, and the checks
            that would have passed report what a hit would get (allowed,
            uncounted).  With a deny cache, when a check is denied from it
            Redis is not asked: those checks get the cached denial and the
            others ``None`` (not evaluated, nothing counted).  When Redis
            fails, each check answers by its limiter's failure policy.

        Raises:
            ConfigurationError: limiters of another backend or clock, or (on
                Redis Cluster) keys in different hash slots.
            CapacityError: a cost above its limiter's burst.
            BackendError: Redis failed and a limiter's policy is ``"raise"``.
        """
