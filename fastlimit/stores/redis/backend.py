"""Redis backend: the shared table's GCRA, decision for decision, on Redis.

When limits must hold across hosts, pass a :class:`RedisBackend` where a
:class:`~fastlimit.SharedTable` would go; nothing else changes::

    backend = RedisBackend("redis://10.0.0.5:6379/0")
    api = fastlimit.Limiter("100/1h", store=backend, name="api")
    api.allow("user:42")

Every check is one round trip: one atomic Lua script (``gcra.lua``, shipped
as package data, run by EVALSHA with a NOSCRIPT fallback) reads the key's
tat, decides and stores it.  The decisions are the shared table's, to the
nanosecond: the script computes ``ahead = max(0, tat - now)`` and whether the
hit passes; Python turns that into ``remaining``, ``reset_after`` and
``retry_after`` with the same integer formulas as the core.

* **Time.** Production uses the Redis server's clock (``TIME``): one clock
  for every host, with tats in Unix-epoch nanoseconds.  A clock injected
  into the Limiter (tests) is sent with each call instead, so traces are
  deterministic.  Lua numbers are doubles and epoch nanoseconds exceed 2^53,
  so the script holds every time and duration as whole seconds plus
  nanoseconds; its arithmetic is exact for all values in ``[0, 2^63)`` ns,
  which covers every time and tolerance the core accepts (see ``gcra.lua``).
* **Keys.** ``<prefix>:<limiter name>:{<key>}`` for str and bytes keys
  (UTF-8 for str) and ``<prefix>:<limiter name>:#{<key>}`` for int keys, in
  unsigned decimal (64-bit two's complement, so -1 and 2**64-1 are one
  key).  The braces make the key the Redis Cluster hash tag, so every
  limiter's state for one key lives in one slot; ``hash_tag=`` chooses the
  tag instead (``<prefix>:<name>:{<tag>}:<key>``).  The value is the tat in
  decimal nanoseconds; the key expires (``PX``) when fully replenished, at
  ``ceil(reset_after)`` milliseconds on the server's clock.
* **Failures.** Connect and command timeouts; when Redis is down or slow a
  check fails ``"open"`` (allowed), ``"closed"`` (denied) or ``"raise"``
  (:class:`~fastlimit.BackendError`), logs a rate-limited warning and counts
  it in :meth:`RedisBackend.stats`.  After a failure the backend skips Redis
  for ``retry_interval`` seconds, so a dead server costs one timeout per
  interval, not one per request.
* **Two tiers.** With ``deny_cache=`` a :class:`~fastlimit.SharedTable`, a
  key Redis denied is answered locally, by every process on the host, until
  a hit could pass again: no round trip while a client hammers a limit.

Quotas and concurrency limits run on it too (``Quota(spec, store=backend)``,
``ConcurrencyLimit(n, backend)``), one script call per step, each with its
own script (``quota.lua``, ``leases.lua``) and the same failure policy:

* **Quotas.** ``<prefix>:<name>:quota{<key>}`` holds ``"<period tag>
  <count>"``.  The client computes the period from its wall clock (hosts'
  clocks must agree); the script counts, resets on a new period, never
  moves a key back to an older one, and keeps the key until ``QUOTA_GRACE_S``
  after its period ends.
* **Leases.** ``<prefix>:<name>:lease{<key>}`` is a sorted set of lease
  tokens scored by their expiry (ms, the server's TIME unless a clock is
  injected).  Acquiring drops the expired, counts and adds in one script;
  a lease lives ``lease_ttl`` seconds after its acquire or last renew.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any, Literal, TypeAlias, TypeVar
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt

try:
    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.asyncio.retry
    import redis.cluster
    import redis.retry
    from redis.backoff import NoBackoff
    from redis.crc import key_slot
    from redis.exceptions import RedisError
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fastlimit's Redis backend needs redis-py: pip install 'fastlimit[redis]'") from e

from fastlimit import _core
from fastlimit._core import Decision
from fastlimit.core.gcra import check_cost, check_params
from fastlimit.errors import BackendError, ConfigurationError
from fastlimit.limiters.limiter import Key, Limiter, configuration_errors, limiter_params
from fastlimit.limiters.quota import _Q_CONSUME, _Q_PEEK, _Q_REFUND, QuotaBase, QuotaSpec, Usage
from fastlimit.limiters.rate import NS_PER_S, Rate
from fastlimit.stores.table import OnFull, SharedTable

__all__ = ["AsyncRedisBackend", "AsyncRedisLimiter", "AsyncRedisQuota", "RedisBackend",
           "RedisGcra", "RedisLeases", "RedisQuotaCounter", "RedisStats"]

log = logging.getLogger("fastlimit")

Fail = Literal["open", "closed", "raise"]
Kind = Literal["rate", "quota", "lease"]
Check: TypeAlias = "tuple[Any, Key] | tuple[Any, Key, int]"
HashTag = Callable[[str, Key], str | bytes]
T = TypeVar("T")
# A script call: the script's name (a key of SCRIPTS), its keys, its args.
Call = tuple[str, list[bytes], list[bytes]]
# an operation: yields script calls, is sent their replies
Plan = Generator[Call, list[int], T]


def _lua(name: str) -> str:
    return importlib.resources.files("fastlimit.stores.redis").joinpath("lua", name).read_text(
        "utf-8")


# The scripts, shipped as package data: the GCRA of limiters, calendar-quota
# steps and concurrency leases.  Each call runs one of them, atomically.
SCRIPTS: dict[str, str] = {
    "gcra": _lua("gcra.lua"),
    "quota": _lua("quota.lua"),
    "leases": _lua("leases.lua"),
}
LUA: str = SCRIPTS["gcra"]

_FAILS = ("open", "closed", "raise")
_KINDS: dict[str, bytes] = {"rate": b"", "quota": b"quota", "lease": b"lease"}
# A Limiter's on_full, when given, overrides the backend's policy for it:
# "the store cannot answer" is what both mean.
_FAIL_OF_ON_FULL: dict[str, Fail] = {"allow": "open", "deny": "closed", "raise": "raise"}
_ON_FULL_OF_FAIL: dict[str, OnFull] = {"open": "allow", "closed": "deny", "raise": "raise"}
# the core's on_full codes, which Quota and ConcurrencyLimit read off a counter
_ON_FULL_CODE: dict[str, int] = {"closed": 0, "open": 1, "raise": 2}
# Seconds a concurrency lease counts without a renew (RedisBackend(lease_ttl=)).
DEFAULT_LEASE_TTL = 60.0
# Keys per script call in hit_many: one call blocks the server while it runs.
_CHUNK = 1000
_U64 = 1 << 64


@dataclass(frozen=True)
class RedisStats:
    """Counters of one backend object (this process only).

    Attributes:
        calls: script calls Redis answered.
        errors: script calls that failed (timeout, connection, error reply).
        skipped: script calls not attempted because Redis was marked down
            (within ``retry_interval`` of a failure).
        failed_open: checks allowed by the failure policy.
        failed_closed: checks denied by the failure policy.
        raised: BackendErrors raised (``fail="raise"``).
        cache_hits: checks denied by the local deny cache, with no round trip.
        down: whether the last call failed.
        last_error: the last failure, as text.
    """

    calls: int
    errors: int
    skipped: int
    failed_open: int
    failed_closed: int
    raised: int
    cache_hits: int
    down: bool
    last_error: str | None


class _Failure(Exception):
    """A call Redis did not answer; ``cause`` is redis-py's exception."""

    def __init__(self, message: str, cause: BaseException | None) -> None:
        super().__init__(message)
        self.cause = cause


def _split(ns: int) -> tuple[int, int]:
    # the script's time representation: whole seconds and nanoseconds
    return divmod(ns, NS_PER_S)


def _check_fail(fail: Any) -> Fail:
    if fail not in _FAILS:
        raise ConfigurationError(f"fail must be one of 'open', 'closed', 'raise', got {fail!r}")
    result: Fail = fail
    return result


def _check_timeout(what: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigurationError(f"{what} must be a number of seconds > 0 or None, got {value!r}")
    return float(value)


def _no_braces(what: str, text: Any) -> str:
    if not isinstance(text, str) or not text:
        raise ConfigurationError(f"{what} must be a non-empty str, got {text!r}")
    if "{" in text or "}" in text:
        raise ConfigurationError(
            f"{what} {text!r} must not contain '{{' or '}}': the key part is the "
            f"Redis Cluster hash tag")
    return text


def _key_list(keys: Any) -> list[Key]:
    if isinstance(keys, np.ndarray):
        if keys.dtype.kind not in "iu":
            raise TypeError(f"key arrays must hold integers, got dtype {keys.dtype}")
        if keys.ndim != 1:
            raise ValueError(f"key arrays must be one-dimensional, got shape {keys.shape}")
        as_ints: list[Key] = np.ascontiguousarray(keys).astype(np.uint64, copy=False).tolist()
        return as_ints
    return keys if isinstance(keys, list) else list(keys)


class _Keyspace:
    """One name on one backend, for one kind of state: its Redis keys and
    its failure policy.  Limiters, quotas and concurrency limits build on
    it, and each of their operations is a plan (below), shared by the sync
    and async front ends.

    ``kind`` goes between the name and the key's hash tag: b"" for limiters
    (``<prefix>:<name>:{<key>}``), b"quota" and b"lease" for the others
    (``<prefix>:<name>:quota{<key>}``).  The byte before the first brace
    tells the kinds apart (names have no braces), so a limiter and a quota
    of one name never share a key, and all state of one user key still
    shares its hash slot."""

    def __init__(self, backend: _BackendBase, name: str, fail: Fail, kind: bytes = b"",
                 what: str = "a limiter name") -> None:
        self.backend = backend
        self.name = _no_braces(what, name)
        self.fail = fail
        base = f"{backend.prefix}:{name}:".encode() + kind
        self._base = base
        self._str_base = base + b"{"
        self._int_base = base + b"#{"
        self._hash_tag = backend._hash_tag

    def rkey(self, key: Key) -> bytes:
        """The Redis key holding ``key``'s state (see the module docstring)."""
        if isinstance(key, str):
            kb, is_int = key.encode("utf-8"), False
        elif isinstance(key, bytes):
            kb, is_int = key, False
        elif isinstance(key, int):
            if not -(1 << 63) <= key < _U64:
                raise ValueError(f"int keys must fit in 64 bits, got {key}")
            kb, is_int = b"%d" % (key % _U64), True
        else:
            raise TypeError(f"keys must be str, bytes or int, got {type(key).__name__}")
        if self._hash_tag is None:
            return (self._int_base if is_int else self._str_base) + kb + b"}"
        tag = self._hash_tag(self.name, key)
        tb = tag.encode("utf-8") if isinstance(tag, str) else tag
        if not isinstance(tb, bytes) or not tb or b"}" in tb or b"{" in tb:
            raise ConfigurationError(
                f"hash_tag returned {tag!r} for key {key!r}: it must be a non-empty str "
                f"or bytes without braces")
        # the tag ends at the first '}', so what follows is the key verbatim
        return self._base + b"{" + tb + (b"}#" if is_int else b"}:") + kb

    def failed_allows(self, failure: _Failure, checks: int = 1) -> bool:
        """Whether the failure policy allows ``checks`` checks Redis could
        not answer (counted); raises BackendError under ``"raise"``."""
        self.raise_if_loud(failure)
        self.backend._count("failed_open" if self.fail == "open" else "failed_closed", checks)
        return self.fail == "open"

    def raise_if_loud(self, failure: _Failure) -> None:
        if self.fail == "raise":
            self.backend._count("raised")
            raise BackendError(str(failure)) from failure.cause

    def forget(self, key: Key) -> None:
        """Drop what is known locally about ``key`` (a limiter's deny cache)."""

    def reset(self, key: Key) -> Plan[None]:
        rkey = self.rkey(key)
        self.forget(key)
        try:
            # gcra.lua's 'reset' deletes its keys, whatever they hold
            yield "gcra", [rkey], [b"reset"]
        except _Failure as f:
            self.raise_if_loud(f)


class _Spec(_Keyspace):
    """One limiter on one backend: its keys, the deny cache, the decision
    arithmetic and its operations as plans."""

    def __init__(self, backend: _BackendBase, name: str, emission_interval_ns: int,
                 burst: int, clock: Callable[[], int] | None, fail: Fail) -> None:
        check_params(emission_interval_ns, burst)
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be callable or None, got {clock!r}")
        super().__init__(backend, name, fail)
        self.T = emission_interval_ns
        self.burst = burst
        self.tau = burst * emission_interval_ns
        self.clock = clock
        # Script arguments go as bytes: redis-py packs bytes as they are, and
        # encoding ints costs more than the rest of a check's client side.
        self._tau_args = tuple(b"%d" % v for v in _split(self.tau))
        self._group1 = (*(b"%d" % v for v in _split(self.T)), *self._tau_args, b"1")
        self._table = backend._deny_table
        self._checker: Any = None
        if self._table is not None:
            # The deny cache keeps, per key, the time a hit of cost 1 would
            # pass again, as the tat of a GCRA with T = 1 ns and burst 1
            # (denied iff tat > now; retry_after = tat - now).  The name has
            # the rate in it: a changed rate must not inherit old denials.
            self._deny_name = f"redis-deny:{backend.prefix}:{name}:{self.T}:{burst}"
            self._checker = self._table._gcra(self._deny_name, 1, 1, clock=clock, on_full="allow")

    # -- arguments --------------------------------------------------------------

    def inc(self, cost: int) -> int:
        """``cost x T``, after the core's checks of ``cost``."""
        if type(cost) is int and cost == 1:  # Decimal('sNaN') == 1 raises
            return self.T
        return (check_cost(cost, self.burst, f"the burst of {self.burst}") or 1) * self.T

    def group(self, inc: int, consume: bool) -> tuple[bytes, ...]:
        """A check's parameters for the script: inc (s, ns), tau (s, ns), consume."""
        if inc == self.T and consume:
            return self._group1
        inc_s, inc_ns = _split(inc)
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

    def decision(self, allowed: bool, ahead: int, after: int, inc: int) -> Decision:
        # _core.Gcra._decision, on the same integers
        remaining = (self.tau - after) // self.T
        remaining = 0 if remaining < 0 else min(remaining, self.burst)
        retry = 0 if allowed else ahead + inc - self.tau
        return Decision(allowed, self.burst, remaining, after, retry)

    def result(self, key: Key, reply: Sequence[int], i: int, inc: int, consume: bool,
               t0: int | None) -> tuple[bool, int, int]:
        """(allowed, ahead, after) of check ``i`` of a script reply; caches
        the denial the new state implies."""
        allowed = reply[3 * i] == 1
        ahead = reply[3 * i + 1] * NS_PER_S + reply[3 * i + 2]
        after = ahead + inc if allowed and consume else ahead
        self.remember(key, after, t0)
        return allowed, ahead, after

    def failed(self, failure: _Failure, inc: int) -> Decision:
        """The failure policy's answer, as the core's when its table is full:
        open = a first hit's Decision, closed = denied for one hit."""
        if self.failed_allows(failure):
            return self.decision(True, 0, inc, inc)
        return Decision(False, self.burst, 0, 0, inc)

    # -- the deny cache ----------------------------------------------------------

    def cached(self, key: Key, inc: int) -> Decision | None:
        """The denial the deny cache holds for ``key``, or None."""
        if self._checker is None:
            return None
        d = self._checker.peek(key)
        if d.allowed:
            return None
        self.backend._count("cache_hits")
        # cost-1 retry r = tat + T - tau - now, so tat - now = r + tau - T,
        # and a cost-c hit waits r + (c - 1) T; remaining is 0 (r > 0)
        r = d.retry_after_ns
        return Decision(False, self.burst, 0, r + self.tau - self.T, r + inc - self.T)

    def is_cached(self, key: Key) -> bool:
        if self._checker is None or self._checker.allow(key, 0):
            return False
        self.backend._count("cache_hits")
        return True

    def remember(self, key: Key, after: int, t0: int | None) -> None:
        """Cache the denial of cost 1 that the state ``tat = t0 + after`` implies."""
        wait = after + self.T - self.tau
        if t0 is None or wait <= 0 or self._table is None:
            return
        # A GCRA with T = 1 ns and burst ``wait`` admits a hit of cost
        # ``wait`` only on a fresh key, and then stores tat = t0 + wait: a
        # racing process's entry is kept, never stretched.
        setter = self._table._gcra(self._deny_name, 1, wait, clock=lambda: t0, on_full="allow")
        setter.allow(key, wait)

    def forget(self, key: Key) -> None:
        if self._checker is not None:
            self._checker.reset(key)

    # -- plans ----------------------------------------------------------------------
    # Each operation is a generator that yields the script calls it needs,
    # (keys, args), and gets the replies back (or a _Failure thrown in); the
    # sync and async backends drive the same plans.

    def allow(self, key: Key, cost: int) -> Plan[bool]:
        rkey = self.rkey(key)
        inc = self.inc(cost)
        if self.is_cached(key):
            return False
        t0, now = self.now()
        try:
            reply = yield "gcra", [rkey], self.backend._args(
                b"hit", now, (self.group(inc, cost != 0),))
        except _Failure as f:
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
        except _Failure as f:
            return self.failed(f, inc)
        allowed, ahead, after = self.result(key, reply, 0, inc, consume, t0)
        return self.decision(allowed, ahead, after, inc)

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
        except _Failure as f:
            self.raise_if_loud(f)
            return False
        return reply[0] == 1

    def hit_many(self, keys: Any, cost: int) -> Plan[npt.NDArray[np.bool_]]:
        key_list = _key_list(keys)
        rkeys = [self.rkey(k) for k in key_list]
        inc = self.inc(cost)
        consume = cost != 0
        out = np.zeros(len(key_list), dtype=np.bool_)
        todo = [i for i, k in enumerate(key_list) if not self.is_cached(k)]
        if not todo:
            return out
        t0, now = self.now()
        args = self.backend._args(b"hit", now, (self.group(inc, consume),))
        for batch in self.backend._batches(rkeys, todo):
            try:
                reply = yield "gcra", [rkeys[i] for i in batch], args
            except _Failure as f:
                out[batch] = self.failed_allows(f, len(batch))
                continue
            for j, i in enumerate(batch):
                out[i] = self.result(key_list[i], reply, j, inc, consume, t0)[0]
        return out


# Quota keys outlive their period by this much (on the writer's clock), so a
# host whose wall clock lags by less still finds the count at the period's
# end, rather than a missing key that would read as zero.
QUOTA_GRACE_S = 3600
_QUOTA_GRACE_MS = QUOTA_GRACE_S * 1000
_NS_PER_MS = 1_000_000


class _QuotaPlans(_Keyspace):
    """One calendar quota's counts on one backend (``quota.lua``): the
    contract of ``_core.QuotaCounter.step``, as plans."""

    def __init__(self, backend: _BackendBase, name: str, limit: int, fail: Fail) -> None:
        # the core's checks, with its messages, so both stores refuse alike
        if not 1 <= limit <= _core.QUOTA_MAX_COUNT:
            raise ValueError(f"a quota limit must be between 1 and {_core.QUOTA_MAX_COUNT}, "
                             f"got {limit}")
        super().__init__(backend, name, fail, _KINDS["quota"], "a quota name")
        self.limit = limit
        self._limit_arg = b"%d" % limit
        # what Quota reads when the store cannot answer (see QuotaBase._decision)
        self.on_full = _ON_FULL_CODE[fail]
        # a denial for want of Redis lasts until the backend tries it again,
        # not until the period ends
        self.retry_after_ns = max(NS_PER_S, round(backend._retry_interval * NS_PER_S))

    def step(self, key: Key, tag: int, cost: int, mode: int, left_ns: int) -> Plan[tuple[int, int]]:
        rkey = self.rkey(key)
        if not 1 <= tag <= _core.QUOTA_MAX_TAG:
            raise ValueError(f"period tag out of range: {tag}")
        if cost < 0:
            raise ValueError(f"cost must be >= 0, got {cost}")
        if mode not in (0, 1, 2):
            raise ValueError(f"bad mode {mode}")
        keep_ms = -(-max(left_ns, 0) // _NS_PER_MS) + _QUOTA_GRACE_MS
        try:
            reply = yield "quota", [rkey], [
                b"%d" % mode, b"%d" % tag, b"%d" % cost, self._limit_arg, b"%d" % keep_ms]
        except _Failure as f:
            if mode == 2:  # a refund: nothing to answer
                self.raise_if_loud(f)
            else:
                self.failed_allows(f)
            return -1, 0
        return reply[0], reply[1]


class _LeasePlans(_Keyspace):
    """One concurrency limit's leases on one backend (``leases.lua``): the
    contract of ``_core.Leases``, as plans.  A lease is a random 63-bit
    token in the key's sorted set, scored by the time it expires."""

    def __init__(self, backend: _BackendBase, name: str, fail: Fail,
                 clock: Callable[[], int] | None) -> None:
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be callable or None, got {clock!r}")
        super().__init__(backend, name, fail, _KINDS["lease"], "a concurrency limit name")
        self.clock = clock
        self.on_full = _ON_FULL_CODE[fail]
        self._ttl = b"%d" % backend._lease_ttl_ms
        self.reclaimed = 0

    def now(self) -> bytes:
        """The script's ``now`` in ms: the injected clock's, else '' (the
        server's TIME, one clock for every host)."""
        return b"" if self.clock is None else b"%d" % (int(self.clock()) // _NS_PER_MS)

    def try_acquire(self, key: Key, limit: int) -> Plan[int]:
        rkey = self.rkey(key)
        if limit < 1:
            raise ValueError(f"a concurrency limit must be >= 1, got {limit}")
        # secrets, not random: forked workers must not draw the same tokens
        token = secrets.randbits(63)
        try:
            reply = yield "leases", [rkey], [
                b"acquire", self.now(), b"%d" % token, self._ttl, b"%d" % limit]
        except _Failure as f:
            self.failed_allows(f)
            return -2
        if reply[1]:
            with self.backend._lock:
                self.reclaimed += reply[1]
        return token if reply[0] == 1 else -1

    def _token_call(self, mode: bytes, key: Key, token: int, unknown: bool) -> Plan[bool]:
        rkey = self.rkey(key)
        try:
            reply = yield "leases", [rkey], [mode, self.now(), b"%d" % token, self._ttl]
        except _Failure as f:
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

    def in_flight(self, key: Key) -> Plan[int]:
        rkey = self.rkey(key)
        try:
            reply = yield "leases", [rkey], [b"count", self.now()]
        except _Failure as f:
            self.raise_if_loud(f)
            return 0
        return reply[0]


class _BackendBase:
    """Options, counters, logging and the failure state shared by the sync
    and async backends."""

    _cluster: bool
    _client: Any

    def __init__(
        self,
        url_or_client: Any,
        *,
        prefix: str,
        fail: Fail,
        connect_timeout: float | None,
        timeout: float | None,
        deny_cache: SharedTable | None,
        hash_tag: HashTag | None,
        retry_interval: float,
        log_interval: float,
        lease_ttl: float,
    ) -> None:
        self.prefix = _no_braces("prefix", prefix)
        self.fail: Fail = _check_fail(fail)
        self.connect_timeout = _check_timeout("connect_timeout", connect_timeout)
        self.timeout = _check_timeout("timeout", timeout)
        if deny_cache is not None and not isinstance(deny_cache, SharedTable):
            raise ConfigurationError(
                f"deny_cache must be a SharedTable or None, got {deny_cache!r}")
        if hash_tag is not None and not callable(hash_tag):
            raise ConfigurationError(f"hash_tag must be callable or None, got {hash_tag!r}")
        for what, value in (("retry_interval", retry_interval), ("log_interval", log_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(f"{what} must be a number of seconds >= 0, got {value!r}")
        if (isinstance(lease_ttl, bool) or not isinstance(lease_ttl, (int, float))
                or not 0.001 <= lease_ttl <= 365 * 86400):
            raise ConfigurationError(
                f"lease_ttl must be a number of seconds from 0.001 to 365 days, got {lease_ttl!r}")
        self.lease_ttl = float(lease_ttl)
        self._lease_ttl_ms = math.ceil(lease_ttl * 1000)
        self._deny_table = deny_cache
        self._hash_tag = hash_tag
        self._retry_interval = float(retry_interval)
        self._log_interval = float(log_interval)
        self._url = url_or_client if isinstance(url_or_client, str) else None
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(
            ("calls", "errors", "skipped", "failed_open", "failed_closed", "raised",
             "cache_hits"), 0)
        self._down = False
        self._down_until = 0.0
        self._last_error: str | None = None
        self._next_log = 0.0
        self._unlogged = 0

    # -- public helpers -----------------------------------------------------------

    def redis_key(self, name: str, key: Key, kind: Kind = "rate") -> bytes:
        """The Redis key that holds ``key``'s state for the limiter (or
        quota, or concurrency limit: ``kind``) ``name``.

        Example:
            >>> RedisBackend("redis://127.0.0.1:6379/0").redis_key("api", "user:42")
            b'fastlimit:api:{user:42}'
            >>> RedisBackend("redis://127.0.0.1:6379/0").redis_key("ai", "acct", "quota")
            b'fastlimit:ai:quota{acct}'
        """
        if kind not in _KINDS:
            raise ValueError(f"kind must be 'rate', 'quota' or 'lease', got {kind!r}")
        return _Keyspace(self, name, self.fail, _KINDS[kind]).rkey(key)

    def stats(self) -> RedisStats:
        """This process's counters: calls, failures, policy answers, cache hits."""
        with self._lock:
            return RedisStats(**self._counts, down=self._down, last_error=self._last_error)

    @property
    def deny_cache(self) -> SharedTable | None:
        """The local deny cache, if any."""
        return self._deny_table

    @property
    def address(self) -> str:
        """Where Redis is, for messages (never with credentials)."""
        if self._url is not None:
            parts = urlsplit(self._url)
            where = parts.hostname or parts.path or "?"
            if parts.port:
                where = f"{where}:{parts.port}"
            return f"{parts.scheme}://{where}"
        kw = getattr(getattr(self._client, "connection_pool", None), "connection_kwargs", {})
        if "path" in kw:
            return f"unix://{kw['path']}"
        if "host" in kw:
            return f"{kw['host']}:{kw.get('port', 6379)}"
        return type(self._client).__name__

    # -- failure state -------------------------------------------------------------

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self._counts[what] += n

    def _skip(self) -> _Failure | None:
        """The failure to answer at once while Redis is marked down, or None."""
        if not self._down or time.monotonic() >= self._down_until:
            return None
        with self._lock:
            self._counts["skipped"] += 1
            self._unlogged += 1
        return _Failure(f"Redis at {self.address} is marked down after {self._last_error}", None)

    def _failure(self, exc: BaseException) -> _Failure:
        now = time.monotonic()
        text = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._counts["errors"] += 1
            self._last_error = text
            self._down = True
            self._down_until = now + self._retry_interval
            emit = now >= self._next_log
            if emit:
                unlogged, self._unlogged = self._unlogged, 0
                self._next_log = now + self._log_interval
            else:
                self._unlogged += 1
        if emit:
            more = f"; {unlogged} more failures since the last warning" if unlogged else ""
            log.warning(
                "fastlimit: Redis at %s failed (%s); checks answer by their failure policy "
                "(backend default fail=%r)%s", self.address, text, self.fail, more)
        return _Failure(f"Redis at {self.address} failed: {text}", exc)

    def _success(self) -> None:
        with self._lock:
            self._counts["calls"] += 1
            if not self._down:
                return
            self._down = False
            unlogged, self._unlogged = self._unlogged, 0
            self._next_log = 0.0
        log.warning("fastlimit: Redis at %s answers again (%d failures since the last warning)",
                    self.address, unlogged)

    # -- building calls --------------------------------------------------------------

    def _fail_of(self, on_full: str | None, fail: Fail | None = None) -> Fail:
        """The failure policy of a limiter, quota or concurrency limit."""
        if fail is None:
            if on_full is not None and on_full not in _FAIL_OF_ON_FULL:
                raise ConfigurationError(
                    f"on_full must be one of 'deny', 'allow', 'raise', got {on_full!r}")
            fail = self.fail if on_full is None else _FAIL_OF_ON_FULL[on_full]
        return _check_fail(fail)

    def _spec(self, name: str, emission_interval_ns: int, burst: int,
              clock: Callable[[], int] | None, on_full: str | None,
              fail: Fail | None = None) -> _Spec:
        return _Spec(self, name, emission_interval_ns, burst, clock,
                     self._fail_of(on_full, fail))

    def _args(self, mode: bytes, now: int | None,
              groups: Sequence[Sequence[bytes]]) -> list[bytes]:
        if now is None:
            args = [mode, b"", b"", b"%d" % len(groups)]
        else:
            now_s, now_ns = _split(now)
            args = [mode, b"%d" % now_s, b"%d" % now_ns, b"%d" % len(groups)]
        for g in groups:
            args.extend(g)
        return args

    def _batches(self, rkeys: Sequence[bytes], todo: list[int]) -> list[list[int]]:
        """Indices of ``todo`` in script-sized batches, in order.  On a cluster
        a script's keys must share a slot: batch per slot (a key's own checks
        stay in order; checks of different keys are independent)."""
        if not self._cluster:
            return [todo[i:i + _CHUNK] for i in range(0, len(todo), _CHUNK)]
        by_slot: dict[int, list[int]] = {}
        for i in todo:
            by_slot.setdefault(key_slot(rkeys[i]), []).append(i)
        return [g[i:i + _CHUNK] for g in by_slot.values() for i in range(0, len(g), _CHUNK)]

    def _hit_all(self, checks: Iterable[Check], kind: type[Any]) -> Plan[list[Decision | None]]:
        items = []
        for check in checks:
            if not isinstance(check, tuple) or len(check) not in (2, 3):
                raise TypeError(f"a check is (limiter, key) or (limiter, key, cost), got {check!r}")
            lim, key = check[0], check[1]
            cost = check[2] if len(check) == 3 else 1
            impl: Any = lim._impl if isinstance(lim, Limiter) else lim
            if not isinstance(impl, kind) or impl._spec.backend is not self:
                raise ConfigurationError(f"hit_all takes limiters on this backend, got {lim!r}")
            spec: _Spec = impl._spec
            items.append((spec, key, spec.rkey(key), spec.inc(cost), cost != 0))
        if not items:
            return []
        if len({id(it[0].clock) for it in items}) > 1:
            raise ConfigurationError("hit_all needs every limiter on the same clock")
        if self._cluster and len({key_slot(it[2]) for it in items}) > 1:
            raise ConfigurationError(
                "on Redis Cluster, hit_all needs every key in one hash slot: use one key per "
                "request across the limiters, or co-locate keys with hash_tag=")
        if self._deny_table is not None:
            cached = [spec.cached(key, inc) for spec, key, _r, inc, _c in items]
            if any(d is not None for d in cached):
                return cached
        t0, now = items[0][0].now()
        try:
            reply = yield "gcra", [it[2] for it in items], self._args(
                b"all", now, [spec.group(inc, consume) for spec, _k, _r, inc, consume in items])
        except _Failure as f:
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
            allowed, ahead, after = spec.result(
                key, reply, i, inc, consume and passed, t0 if rkey not in seen else None)
            seen.add(rkey)
            out[i] = spec.decision(allowed, ahead, after, inc)
        return out


_HIT_ALL_DOC = """Check several limits at once and count all of them or none.

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


# -- sync -----------------------------------------------------------------------


class RedisGcra:
    """One limiter's GCRA on Redis: what a :class:`~fastlimit.Limiter` on a
    :class:`RedisBackend` binds as its methods (see Limiter for each)."""

    def __init__(self, backend: RedisBackend, spec: _Spec) -> None:
        self._run = backend._run
        self._spec = spec
        self.name = spec.name
        self.emission_interval_ns = spec.T
        self.burst = spec.burst
        self.tolerance_ns = spec.tau
        self.clock = spec.clock
        self.fail = spec.fail

    def allow(self, key: Key, cost: int = 1) -> bool:
        return self._run(self._spec.allow(key, cost))

    def hit(self, key: Key, cost: int = 1) -> Decision:
        return self._run(self._spec.check(key, cost, None))

    def peek(self, key: Key, cost: int = 1) -> Decision:
        return self._run(self._spec.check(key, cost, False))

    def refund(self, key: Key, cost: int = 1) -> bool:
        return self._run(self._spec.refund(key, cost))

    def reset(self, key: Key) -> None:
        self._run(self._spec.reset(key))

    def hit_many(self, keys: Iterable[Key] | npt.NDArray[np.integer[Any]],
                 cost: int = 1) -> npt.NDArray[np.bool_]:
        return self._run(self._spec.hit_many(keys, cost))

    def __repr__(self) -> str:
        return f"<RedisGcra {self.name!r} T={self.emission_interval_ns}ns burst={self.burst}>"


class RedisQuotaCounter:
    """One quota's counts on Redis: what a :class:`~fastlimit.Quota` on a
    :class:`RedisBackend` calls (the contract of ``_core.QuotaCounter``).

    ``step`` answers ``(result, count)``: result 1 allowed, 0 denied, -1
    Redis failed (the Quota then answers by ``on_full``: 0 deny, 1 allow;
    ``"raise"`` raised BackendError here)."""

    def __init__(self, backend: RedisBackend, plans: _QuotaPlans) -> None:
        self._run = backend._run
        self._plans = plans
        self.name = plans.name
        self.limit = plans.limit
        self.on_full = plans.on_full
        self.retry_after_ns = plans.retry_after_ns

    def step(self, key: Key, tag: int, cost: int, mode: int, left_ns: int = 0) -> tuple[int, int]:
        return self._run(self._plans.step(key, tag, cost, mode, left_ns))

    def reset(self, key: Key) -> None:
        self._run(self._plans.reset(key))

    def __repr__(self) -> str:
        return f"<RedisQuotaCounter {self.name!r} limit={self.limit}>"


class RedisLeases:
    """One concurrency limit's leases on Redis: what a
    :class:`~fastlimit.ConcurrencyLimit` on a :class:`RedisBackend` calls
    (the contract of ``_core.Leases``, plus ``renew``).

    ``try_acquire`` answers a token >= 0, -1 when the key is full, or -2
    when Redis failed (the ConcurrencyLimit then answers by ``on_full``).
    Leases expire ``lease_ttl`` seconds after their acquire or last renew;
    ``reclaimed`` counts the expired leases this process's acquires found
    and dropped (a key whose leases have all expired is gone, Redis having
    expired it: nothing to count)."""

    def __init__(self, backend: RedisBackend, plans: _LeasePlans) -> None:
        self._run = backend._run
        self._plans = plans
        self.name = plans.name
        self.on_full = plans.on_full

    @property
    def reclaimed(self) -> int:
        return self._plans.reclaimed

    @property
    def ttl(self) -> float:
        """Seconds a lease counts without a renew."""
        return self._plans.backend.lease_ttl

    def try_acquire(self, key: Key, limit: int, start: int = 0) -> int:
        # (start spreads acquirers over the table's lease slots; a set has none)
        return self._run(self._plans.try_acquire(key, limit))

    def release(self, key: Key, token: int) -> bool:
        return self._run(self._plans.release(key, token))

    def renew(self, key: Key, token: int) -> bool:
        return self._run(self._plans.renew(key, token))

    def in_flight(self, key: Key, limit: int) -> int:
        return self._run(self._plans.in_flight(key))

    def __repr__(self) -> str:
        return f"<RedisLeases {self.name!r} ttl={self.ttl}s>"


class RedisBackend(_BackendBase):
    """GCRA state in Redis, for limits shared by many hosts (sync, redis-py).

    Pass it as a Limiter's ``store``: each check is then one Lua script on
    Redis, with the shared table's exact decisions.  A Quota's or a
    ConcurrencyLimit's ``store`` too, and a Policy's: then every limit it
    enforces is shared by every host.

    Args:
        url_or_client: a ``redis://``, ``rediss://`` or ``unix://`` URL, or a
            ``redis.Redis`` or ``redis.cluster.RedisCluster`` client (whose
            own timeouts and retries then apply).
        prefix: the first part of every key (no braces).
        fail: what a check answers when Redis fails or times out: ``"open"``
            (allowed), ``"closed"`` (denied; ``retry_after`` one hit) or
            ``"raise"`` (:class:`~fastlimit.BackendError`).  A Limiter's
            ``on_full`` overrides it for that limiter (allow = open, deny =
            closed, raise = raise), as does ``limiter(fail=...)``.
        connect_timeout: seconds to connect (with a URL).
        timeout: seconds to wait for a reply (with a URL).
        deny_cache: a :class:`~fastlimit.SharedTable` (named, or anonymous and
            inherited by forked workers): denials Redis gave are answered
            from it by every process on the host until they end.  One table
            per Redis deployment.
        hash_tag: ``f(limiter_name, key) -> str``: the Redis Cluster hash tag
            of a key (default: the key itself).
        retry_interval: after a failure, seconds during which checks answer
            by the failure policy without trying Redis.
        log_interval: at most one failure warning per this many seconds.
        lease_ttl: seconds a ConcurrencyLimit's lease counts after its
            acquire or last :meth:`~fastlimit.Lease.renew` (default 60): a
            holder that dies frees its lease within this time.
        **redis_options: more options for ``redis.Redis.from_url``.

    Example:
        >>> backend = RedisBackend("redis://127.0.0.1:6379/0", fail="closed")  # doctest: +SKIP
        >>> api = fastlimit.Limiter("100/1h", store=backend, name="api")  # doctest: +SKIP
        >>> api.hit("user:42").remaining  # doctest: +SKIP
        99
    """

    def __init__(
        self,
        url_or_client: str | redis.Redis | redis.cluster.RedisCluster = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "fastlimit",
        fail: Fail = "open",
        connect_timeout: float | None = 0.5,
        timeout: float | None = 0.5,
        deny_cache: SharedTable | None = None,
        hash_tag: HashTag | None = None,
        retry_interval: float = 1.0,
        log_interval: float = 10.0,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        **redis_options: Any,
    ) -> None:
        super().__init__(
            url_or_client, prefix=prefix, fail=fail, connect_timeout=connect_timeout,
            timeout=timeout, deny_cache=deny_cache, hash_tag=hash_tag,
            retry_interval=retry_interval, log_interval=log_interval, lease_ttl=lease_ttl)
        self._options = dict(
            prefix=prefix, fail=fail, connect_timeout=connect_timeout, timeout=timeout,
            deny_cache=deny_cache, hash_tag=hash_tag, retry_interval=retry_interval,
            log_interval=log_interval, lease_ttl=lease_ttl, **redis_options)
        client: redis.Redis | redis.cluster.RedisCluster
        if isinstance(url_or_client, str):
            # No retries inside redis-py: a failure must reach the policy
            # after one timeout, not after several with backoff between.
            options: dict[str, Any] = dict(
                socket_connect_timeout=self.connect_timeout, socket_timeout=self.timeout,
                retry=redis.retry.Retry(NoBackoff(), 0))
            options.update(redis_options)
            client = redis.Redis.from_url(url_or_client, **options)
        elif isinstance(url_or_client, (redis.Redis, redis.cluster.RedisCluster)):
            if redis_options:
                raise ConfigurationError("redis options go with a URL, not with a client")
            client = url_or_client
        else:
            raise ConfigurationError(
                f"RedisBackend takes a URL or a redis.Redis client, got {url_or_client!r}")
        self._client = client
        self._cluster = isinstance(client, redis.cluster.RedisCluster)
        self._scripts = {name: client.register_script(text) for name, text in SCRIPTS.items()}

    @property
    def client(self) -> redis.Redis | redis.cluster.RedisCluster:
        """The redis-py client in use."""
        client: redis.Redis | redis.cluster.RedisCluster = self._client
        return client

    def _gcra(
        self,
        name: str,
        emission_interval_ns: int,
        burst: int,
        *,
        clock: Callable[[], int] | None = None,
        on_full: OnFull | None = None,
    ) -> RedisGcra:
        return RedisGcra(self, self._spec(name, emission_interval_ns, burst, clock, on_full))

    def _quota_counter(self, name: str, limit: int, *,
                       on_full: OnFull | None = None) -> RedisQuotaCounter:
        return RedisQuotaCounter(self, _QuotaPlans(self, name, limit, self._fail_of(on_full)))

    def _leases(self, name: str, *, on_full: OnFull | None = None,
                clock: Callable[[], int] | None = None) -> RedisLeases:
        return RedisLeases(self, _LeasePlans(self, name, self._fail_of(on_full), clock))

    def limiter(self, rate: Rate | str, *, name: str = "default", burst: int | None = None,
                clock: Callable[[], int] | None = None, fail: Fail | None = None) -> Limiter:
        """A :class:`~fastlimit.Limiter` on this backend; ``fail`` overrides
        the backend's failure policy for it."""
        on_full = None if fail is None else _ON_FULL_OF_FAIL[_check_fail(fail)]
        return Limiter(rate, self, name=name, burst=burst, clock=clock, on_full=on_full)

    def _run(self, plan: Plan[T]) -> T:
        try:
            request = next(plan)
            while True:
                try:
                    reply = self._eval(*request)
                except _Failure as f:
                    request = plan.throw(f)
                else:
                    request = plan.send(reply)
        except StopIteration as stop:
            result: T = stop.value
            return result

    def _eval(self, script: str, keys: list[bytes], args: list[bytes]) -> list[int]:
        skipped = self._skip()
        if skipped is not None:
            raise skipped
        try:
            reply = self._scripts[script](keys=keys, args=args)
        except (RedisError, OSError) as e:
            raise self._failure(e) from e
        self._success()
        return [int(x) for x in reply.split()]

    def hit_all(self, checks: Iterable[Check]) -> list[Decision | None]:
        return self._run(self._hit_all(checks, RedisGcra))

    hit_all.__doc__ = _HIT_ALL_DOC + """
        Example:
            >>> user = backend.limiter("1000/1h", name="user")  # doctest: +SKIP
            >>> login = backend.limiter("5/1m", name="login")  # doctest: +SKIP
            >>> ds = backend.hit_all([(user, "u42"), (login, "u42")])  # doctest: +SKIP
            >>> all(d.allowed for d in ds)  # doctest: +SKIP
            True
        """

    def ping(self) -> bool:
        """Ask Redis now, even within ``retry_interval`` of a failure: True if
        it answers (which ends the marked-down period), False if not."""
        try:
            self._client.ping()
        except (RedisError, OSError) as e:
            self._failure(e)
            return False
        self._success()
        return True

    def close(self) -> None:
        """Close the connections of a client made from a URL (a client
        passed in is the caller's to close)."""
        if self._url is not None:
            self._client.close()

    def __enter__(self) -> RedisBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        if self._url is None:
            raise TypeError(
                "a RedisBackend made from a client cannot be pickled: make it from a URL "
                "to send it to another process")
        return (_rebuild, (self._url, self._options))

    def __repr__(self) -> str:
        return f"<RedisBackend {self.address} prefix={self.prefix!r} fail={self.fail!r}>"


def _rebuild(url: str, options: dict[str, Any]) -> RedisBackend:
    return RedisBackend(url, **options)


# -- asyncio --------------------------------------------------------------------


class AsyncRedisLimiter:
    """A limiter on an :class:`AsyncRedisBackend`: the methods of
    :class:`~fastlimit.Limiter` as coroutines, with the same decisions.
    Make it with :meth:`AsyncRedisBackend.limiter`.

    Example:
        >>> backend = AsyncRedisBackend("redis://127.0.0.1:6379/0")  # doctest: +SKIP
        >>> api = backend.limiter("100/1h", name="api")  # doctest: +SKIP
        >>> (await api.hit("user:42")).remaining  # doctest: +SKIP
        99
    """

    def __init__(self, backend: AsyncRedisBackend, rate: Rate | str, *, name: str = "default",
                 burst: int | None = None, clock: Callable[[], int] | None = None,
                 fail: Fail | None = None) -> None:
        self.rate, burst = limiter_params(rate, burst, name)
        with configuration_errors(name):
            spec = backend._spec(name, self.rate.emission_interval_ns, burst, clock, None, fail)
        self._spec = spec
        self._run = backend._run
        self.name = name
        self.burst = burst
        self.clock = clock

    async def allow(self, key: Key, cost: int = 1) -> bool:
        """Count a hit of ``cost`` if it passes; return whether it did."""
        return await self._run(self._spec.allow(key, cost))

    async def hit(self, key: Key, cost: int = 1) -> Decision:
        """Count a hit of ``cost`` if it passes; return the Decision."""
        return await self._run(self._spec.check(key, cost, None))

    async def peek(self, key: Key, cost: int = 1) -> Decision:
        """The Decision a hit of ``cost`` would get now, counting nothing."""
        return await self._run(self._spec.check(key, cost, False))

    async def refund(self, key: Key, cost: int = 1) -> bool:
        """Give back a hit of ``cost`` counted earlier; False if no state."""
        return await self._run(self._spec.refund(key, cost))

    async def reset(self, key: Key) -> None:
        """Forget ``key``: its next hit sees a full burst."""
        await self._run(self._spec.reset(key))

    async def hit_many(self, keys: Iterable[Key] | npt.NDArray[np.integer[Any]],
                       cost: int = 1) -> npt.NDArray[np.bool_]:
        """Hit every key once, in order; a numpy bool array of results."""
        return await self._run(self._spec.hit_many(keys, cost))

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
        return f"<AsyncRedisLimiter {self.name!r} {self.rate} burst={self.burst}>"


class AsyncRedisQuota(QuotaBase):
    """A calendar quota on an :class:`AsyncRedisBackend`: the methods of
    :class:`~fastlimit.Quota` as coroutines, with the same counts (the same
    Redis keys as a Quota of this name on a :class:`RedisBackend`) and the
    same Decisions.  Make it with :meth:`AsyncRedisBackend.quota`.

    Example:
        >>> backend = AsyncRedisBackend("redis://127.0.0.1:6379/0")  # doctest: +SKIP
        >>> ai = backend.quota("500/month", name="ai")  # doctest: +SKIP
        >>> (await ai.hit("acct-7")).remaining  # doctest: +SKIP
        499
    """

    def __init__(self, backend: AsyncRedisBackend, spec: str | QuotaSpec, *,
                 name: str = "quota", tz: str | tzinfo = "UTC",
                 clock: Callable[[], int] | None = None, fail: Fail | None = None) -> None:
        super().__init__(spec, name=name, tz=tz, clock=clock)
        self.store = backend
        self._counter = _QuotaPlans(backend, name, self.spec.limit, backend._fail_of(None, fail))
        self._run = backend._run

    async def hit(self, key: Key, cost: int = 1) -> Decision:
        """Count ``cost`` if it fits in the period; return the Decision."""
        if self._check_cost(cost) == 0:
            return await self.peek(key)
        return await self._step(key, cost, _Q_CONSUME)

    async def allow(self, key: Key, cost: int = 1) -> bool:
        """:meth:`hit`, returning only whether it passed."""
        return (await self.hit(key, cost)).allowed

    async def peek(self, key: Key, cost: int = 1) -> Decision:
        """The Decision a hit of ``cost`` would get, counting nothing."""
        return await self._step(key, cost, _Q_PEEK)

    async def refund(self, key: Key, cost: int = 1) -> bool:
        """Give back ``cost`` counted in the current period (never below 0)."""
        self._check_cost(cost)
        tag, _, left = self._now()
        result, _ = await self._run(self._counter.step(key, tag, cost, _Q_REFUND, left))
        return result == 1

    async def usage(self, key: Key) -> Usage:
        """Used and remaining in the current period, and when it resets."""
        tag, end, left = self._now()
        _, used = await self._run(self._counter.step(key, tag, 0, _Q_PEEK, left))
        return self._usage(used, end)

    async def reset(self, key: Key) -> None:
        """Forget ``key``'s count."""
        await self._run(self._counter.reset(key))

    async def _step(self, key: Key, cost: int, mode: int) -> Decision:
        self._check_cost(cost)
        tag, _, left = self._now()
        result, count = await self._run(self._counter.step(key, tag, cost, mode, left))
        return self._decision(result, count, cost, left, self._counter)


class AsyncRedisBackend(_BackendBase):
    """:class:`RedisBackend` for asyncio code, on redis.asyncio: the same
    options, keys, scripts and decisions.  Limiters come from
    :meth:`limiter` and quotas from :meth:`quota`; their methods are
    coroutines.  (ConcurrencyLimit takes a sync RedisBackend, and works in
    asyncio code with ``async with``.)  Make it in the loop that uses it.

    Example:
        >>> backend = AsyncRedisBackend("redis://127.0.0.1:6379/0")  # doctest: +SKIP
        >>> api = backend.limiter("100/1h", name="api")  # doctest: +SKIP
        >>> await api.allow("user:42")  # doctest: +SKIP
        True
    """

    def __init__(
        self,
        url_or_client: (str | redis.asyncio.Redis
                        | redis.asyncio.cluster.RedisCluster) = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "fastlimit",
        fail: Fail = "open",
        connect_timeout: float | None = 0.5,
        timeout: float | None = 0.5,
        deny_cache: SharedTable | None = None,
        hash_tag: HashTag | None = None,
        retry_interval: float = 1.0,
        log_interval: float = 10.0,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        **redis_options: Any,
    ) -> None:
        super().__init__(
            url_or_client, prefix=prefix, fail=fail, connect_timeout=connect_timeout,
            timeout=timeout, deny_cache=deny_cache, hash_tag=hash_tag,
            retry_interval=retry_interval, log_interval=log_interval, lease_ttl=lease_ttl)
        client: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
        if isinstance(url_or_client, str):
            options: dict[str, Any] = dict(
                socket_connect_timeout=self.connect_timeout, socket_timeout=self.timeout,
                retry=redis.asyncio.retry.Retry(NoBackoff(), 0))
            options.update(redis_options)
            client = redis.asyncio.Redis.from_url(url_or_client, **options)
        elif isinstance(url_or_client, (redis.asyncio.Redis, redis.asyncio.cluster.RedisCluster)):
            if redis_options:
                raise ConfigurationError("redis options go with a URL, not with a client")
            client = url_or_client
        else:
            raise ConfigurationError(
                f"AsyncRedisBackend takes a URL or a redis.asyncio.Redis client, got "
                f"{url_or_client!r}")
        self._client = client
        self._cluster = isinstance(client, redis.asyncio.cluster.RedisCluster)
        self._scripts = {name: client.register_script(text) for name, text in SCRIPTS.items()}

    @property
    def client(self) -> redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster:
        """The redis.asyncio client in use."""
        client: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster = self._client
        return client

    def limiter(self, rate: Rate | str, *, name: str = "default", burst: int | None = None,
                clock: Callable[[], int] | None = None,
                fail: Fail | None = None) -> AsyncRedisLimiter:
        """An :class:`AsyncRedisLimiter` on this backend; ``fail`` overrides
        the backend's failure policy for it."""
        return AsyncRedisLimiter(self, rate, name=name, burst=burst, clock=clock, fail=fail)

    def quota(self, spec: str | QuotaSpec, *, name: str = "quota", tz: str | tzinfo = "UTC",
              clock: Callable[[], int] | None = None,
              fail: Fail | None = None) -> AsyncRedisQuota:
        """An :class:`AsyncRedisQuota` on this backend; ``fail`` overrides
        the backend's failure policy for it."""
        return AsyncRedisQuota(self, spec, name=name, tz=tz, clock=clock, fail=fail)

    def _gcra(self, name: str, emission_interval_ns: int, burst: int, **_: Any) -> Any:
        raise ConfigurationError(
            "Limiter's methods are synchronous: on an AsyncRedisBackend use "
            "backend.limiter(...), whose methods are coroutines")

    def _quota_counter(self, name: str, limit: int, **_: Any) -> Any:
        raise ConfigurationError(
            "Quota's methods are synchronous: on an AsyncRedisBackend use "
            "backend.quota(...), whose methods are coroutines")

    def _leases(self, name: str, **_: Any) -> Any:
        raise ConfigurationError(
            "ConcurrencyLimit needs a RedisBackend (sync): its acquire is one short "
            "round trip, and `async with limit.acquire(key)` works with it in asyncio code")

    async def _run(self, plan: Plan[T]) -> T:
        try:
            request = next(plan)
            while True:
                try:
                    reply = await self._eval(*request)
                except _Failure as f:
                    request = plan.throw(f)
                else:
                    request = plan.send(reply)
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def _eval(self, script: str, keys: list[bytes], args: list[bytes]) -> list[int]:
        skipped = self._skip()
        if skipped is not None:
            raise skipped
        try:
            reply = await self._scripts[script](keys=keys, args=args)
        except (RedisError, OSError) as e:
            raise self._failure(e) from e
        self._success()
        return [int(x) for x in reply.split()]

    async def hit_all(self, checks: Iterable[Check]) -> list[Decision | None]:
        return await self._run(self._hit_all(checks, AsyncRedisLimiter))

    hit_all.__doc__ = _HIT_ALL_DOC

    async def ping(self) -> bool:
        """Ask Redis now: True if it answers (ending a marked-down period)."""
        try:
            await self._client.ping()
        except (RedisError, OSError) as e:
            self._failure(e)
            return False
        self._success()
        return True

    async def aclose(self) -> None:
        """Close the connections of a client made from a URL."""
        if self._url is not None:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncRedisBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<AsyncRedisBackend {self.address} prefix={self.prefix!r} fail={self.fail!r}>"
