"""A policy's request on Redis in one round trip (``request.lua``).

A request under a :class:`~fastlimit.Policy` may need several limits: its
rates, its quotas and its concurrency leases.  One by one they cost a round
trip each, and a denial more (refunds, releases).  On a Redis backend the
policy's decision path (``policy/_plan.pyx``) hands the request to
:func:`request` instead: one script takes the leases, counts the rates and
quotas all or nothing, and says what each answered; the lease release at
the request's end is one more call.  The decisions are the decision path's
on a shared table, limit for limit (``tests/test_redis_request.py``
compares the two), and every answer is computed here by the statements of
the arithmetic, as the single-limit plans do (:mod:`.plans`).

When the script cannot run as one call (a Redis Cluster request whose keys
are in more than one hash slot, limits on different clocks or backends) or
Redis does not answer, :func:`request` returns None and the decision path
counts limit by limit; after a failure it does so with :func:`failed`
states, which answer each limit by its own failure policy without another
call (``fail="local"``: the local tables, all or nothing as the shared
table's loop does).

All state of one user key shares a hash slot (the key is the hash tag), so
on a cluster a request whose limits all count its caller (the usual: a
tier, its routes, its quotas and leases) is one script; one that mixes a
caller's key with a per-IP key takes the limit-by-limit path.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any, NamedTuple

from fastlimit._core import Decision
from fastlimit.clock import NS_PER_S
from fastlimit.core import quota
from fastlimit.core.results import OnFull
from fastlimit.stores.redis.common import BackendBase, Failure, Key, Plan, key_slot, split_ns
from fastlimit.stores.redis.plans import (
    _NS_PER_MS,
    _QUOTA_GRACE_MS,
    _REDIS_TOKEN,
    LeasePlans,
    QuotaPlans,
    RateSpec,
)

__all__ = ["LeaseOp", "QuotaOp", "RateOp", "Request", "failed", "request"]


class RateOp(NamedTuple):
    """A rate's hit: its state (a Redis rate state), key, cost, whether it
    is a shadow, whether it consumes (a cost of 0 does not)."""

    state: Any
    key: Key
    cost: int
    shadow: bool
    consume: bool


class QuotaOp(NamedTuple):
    """A quota's step: its counts, key, cost (>= 1), whether it is a shadow
    and consumes, the period's tag and the ns left of it."""

    state: Any
    key: Key
    cost: int
    shadow: bool
    consume: bool
    tag: int
    left_ns: int


class LeaseOp(NamedTuple):
    """A concurrency lease to take: the lease slots, key and limit."""

    state: Any
    key: Key
    limit: int


class Request(NamedTuple):
    """What the script answered: the index of the lease that found no room
    (-1: none), the tokens of the leases taken (when the request passed),
    and one Decision per hit, in order (None where no op was given)."""

    full: int
    tokens: list[int]
    decisions: list[Decision | None]


def _specs(backend: BackendBase, leases: Sequence[LeaseOp],
           hits: Sequence[RateOp | QuotaOp | None]) -> list[Any] | None:
    """Each op's plans (RateSpec, QuotaPlans, LeasePlans), or None when the
    ops cannot go in one script of ``backend``."""
    found: list[Any] = []
    clocks = set()
    for op in (*leases, *hits):
        if op is None:
            continue
        plans = getattr(op.state, "_spec", None) if isinstance(op, RateOp) else \
            getattr(op.state, "_plans", None)
        if not isinstance(plans, (RateSpec, QuotaPlans, LeasePlans)) or \
                plans.backend is not backend:
            return None
        if not isinstance(plans, QuotaPlans):  # quotas count on the client's wall clock
            clocks.add(id(plans.clock))
        found.append(plans)
    if len(clocks) > 1:
        return None
    return found


def request(backend: BackendBase, leases: Sequence[LeaseOp],
            hits: Sequence[RateOp | QuotaOp | None]) -> Plan[Request | Failure | None]:
    """The request's leases and hits in one script call (see the module
    docs).  None: count limit by limit; a Failure: Redis did not answer,
    count limit by limit with :func:`failed` states."""
    specs = _specs(backend, leases, hits)
    if specs is None:
        return None
    keys: list[bytes] = []
    args: list[bytes] = []
    lease_specs: list[LeasePlans] = specs[:len(leases)]
    hit_specs = iter(specs[len(leases):])
    clock = None
    tokens = []
    for op, plans in zip(leases, lease_specs, strict=True):
        if op.limit < 1:
            raise ValueError(f"a concurrency limit must be >= 1, got {op.limit}")
        token = secrets.randbits(62) | _REDIS_TOKEN  # secrets: forked workers draw apart
        tokens.append(token)
        keys.append(plans.rkey(op.key))
        args += (b"%d" % token, plans._ttl, b"%d" % op.limit)
        clock = clock or plans.clock
    asked: list[tuple[int, Any, Any, int]] = []  # (hit index, op, plans, inc)
    for i, hit in enumerate(hits):
        if hit is None:
            continue
        plans = next(hit_specs)
        flags = b"%d" % (2 * hit.shadow + hit.consume)
        keys.append(plans.rkey(hit.key))
        if isinstance(hit, RateOp):
            inc = plans.inc(hit.cost)
            cached = None if hit.shadow else plans.cached(hit.key, inc)
            if cached is not None:  # denied by the deny cache: Redis is not asked
                decisions: list[Decision | None] = [None] * len(hits)
                decisions[i] = cached
                return Request(-1, [], decisions)
            inc_s, inc_ns = split_ns(inc)
            args += (b"r", flags, b"%d" % inc_s, b"%d" % inc_ns, *plans._tau_args)
            clock = clock or plans.clock
        else:
            inc = 0
            keep_ms = -(-max(hit.left_ns, 0) // _NS_PER_MS) + _QUOTA_GRACE_MS
            args += (b"q", flags, b"%d" % hit.tag, b"%d" % hit.cost, plans._limit_arg,
                     b"%d" % keep_ms)
        asked.append((i, hit, plans, inc))
    if not keys:  # nothing to ask (no limit applies, or only a shadow above its burst)
        return Request(-1, [], [None] * len(hits))
    if backend._cluster and len({key_slot(k) for k in keys}) > 1:
        return None
    t0: int | None = None
    if clock is not None:
        t0 = int(clock())
        now_s, now_ns = split_ns(t0)
        head = [b"%d" % now_s, b"%d" % now_ns]
    else:
        head = [b"", b""]
        if backend._deny_table is not None:
            from fastlimit import _core

            t0 = _core.monotonic_ns()  # read before the call: no cached denial outlasts Redis's
    try:
        reply = yield "request", keys, [*head, b"%d" % len(leases), b"%d" % len(asked), *args]
    except Failure as f:
        return f
    return _answers(reply, leases, lease_specs, tokens, hits, asked, t0)


def _answers(reply: list[int], leases: Sequence[LeaseOp], lease_specs: list[LeasePlans],
             tokens: list[int], hits: Sequence[RateOp | QuotaOp | None],
             asked: list[tuple[int, Any, Any, int]], t0: int | None) -> Request:
    full = reply[0] - 1
    for plans, dropped in zip(lease_specs, reply[1:1 + len(leases)], strict=True):
        if dropped:
            with plans.backend._lock:
                plans.reclaimed += dropped
    base = 1 + len(leases)
    denied = full >= 0
    passed = not denied and all(
        reply[base + 3 * j] == 1 or op.shadow for j, (_i, op, _p, _inc) in enumerate(asked))
    decisions: list[Decision | None] = [None] * len(hits)
    for j, (i, op, plans, inc) in enumerate(asked):
        allowed = reply[base + 3 * j] == 1
        # counted (then given back if the request was denied) as the decision
        # path counts: every hit before the one that denied
        counted = op.consume and not denied and allowed
        if isinstance(op, RateOp):
            ahead = reply[base + 3 * j + 1] * NS_PER_S + reply[base + 3 * j + 2]
            after = ahead + inc if counted else ahead
            plans.remember(op.key, ahead + inc if counted and passed else ahead, t0)
            decisions[i] = plans.decision(allowed, after, inc)
        else:
            count = reply[base + 3 * j + 1] + (op.cost if counted else 0)
            decisions[i] = Decision(*quota.answer(
                1 if allowed else 0, count, op.cost, op.left_ns, plans.limit,
                plans.on_full == OnFull.ALLOW, plans.retry_after_ns))
        if not allowed and not op.shadow:
            denied = True
    return Request(full, tokens if passed else [], decisions)


def _answered(plan: Plan[Any], failure: Failure) -> Any:
    """What ``plan`` answers when every script call it makes fails with
    ``failure``: its failure policy's answer, with no call made."""
    try:
        next(plan)
        while True:
            plan.throw(failure)
    except StopIteration as stop:
        return stop.value


class _FailedRate:
    """A rate state answering by its failure policy (the RateState contract)."""

    def __init__(self, spec: RateSpec, failure: Failure) -> None:
        self._spec, self._failure = spec, failure
        self.burst = spec.burst

    def hit(self, key: Key, cost: int = 1) -> Decision:
        return _answered(self._spec.check(key, cost, None), self._failure)  # type: ignore[no-any-return]

    def peek(self, key: Key, cost: int = 1) -> Decision:
        return _answered(self._spec.check(key, cost, False), self._failure)  # type: ignore[no-any-return]

    def refund(self, key: Key, cost: int = 1) -> bool:
        return bool(_answered(self._spec.refund(key, cost), self._failure))


class _FailedQuota:
    def __init__(self, plans: QuotaPlans, failure: Failure) -> None:
        self._plans, self._failure = plans, failure

    def answer(self, key: Key, tag: int, cost: int, mode: int, left_ns: int = 0) -> Decision:
        return _answered(self._plans.answer(key, tag, cost, mode, left_ns), self._failure)  # type: ignore[no-any-return]


class _FailedLeases:
    def __init__(self, plans: LeasePlans, failure: Failure) -> None:
        self._plans, self._failure = plans, failure

    def acquire(self, key: Key, limit: int, start: int = 0) -> int:
        return int(_answered(self._plans.acquire(key, limit), self._failure))

    def release(self, key: Key, token: int) -> bool:
        return bool(_answered(self._plans.release(key, token), self._failure))


def failed(state: Any, failure: Failure) -> Any:
    """``state`` (a Redis rate state, quota counts or lease slots) answering
    by its failure policy, with no call to Redis: what the decision path
    counts with when the request's script failed."""
    spec = getattr(state, "_spec", None)
    if isinstance(spec, RateSpec):
        return _FailedRate(spec, failure)
    plans = state._plans
    if isinstance(plans, QuotaPlans):
        return _FailedQuota(plans, failure)
    return _FailedLeases(plans, failure)

