"""Composite checks: one request under several limits.

A request passes only if every enforced limit allows it, and a denied
request consumes nothing from any of them.  Limits are hit in order; when
one denies, the hits already counted are given back with
:meth:`Limiter.refund`, which restores each key's state exactly (a key's
state is a time: refunding moves it back by ``cost x T``).

Between the hit and its refund (microseconds), another process may see the
first limits' keys one request fuller than they end up: it can be denied
spuriously, never admitted beyond a limit.  Checking with ``peek`` first
would not help: a peek is stale the moment it returns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from fastlimit._core import Decision
from fastlimit.errors import CapacityError
from fastlimit.http.headers import Window
from fastlimit.limiters.limiter import Key

__all__ = ["CompositeResult", "LimitCheck", "hit_all", "peek_all"]

log = logging.getLogger("fastlimit")


class Meter(Protocol):
    """What a composite check needs of a limit: a Limiter, or a Quota."""

    @property
    def burst(self) -> int: ...
    def hit(self, key: Key, cost: int = 1) -> Decision: ...
    def peek(self, key: Key, cost: int = 1) -> Decision: ...
    def refund(self, key: Key, cost: int = 1) -> bool: ...
    def window(self) -> Window: ...


class LimitCheck(NamedTuple):
    """One limit applied to one key, as part of a request's checks.

    ``shadow`` checks are computed but never deny (a dry run).  (Records on
    the per-request path are NamedTuples: a frozen dataclass costs ~1 us to
    build.)
    """

    name: str
    limiter: Meter
    key: Key
    shadow: bool = False


class CompositeResult(NamedTuple):
    """What :func:`hit_all` found.

    Attributes:
        allowed: every enforced check allowed (and all were counted).
        decisions: one per check, in order.  After a denial, the checks
            after the denying one were only peeked, and the ones before it
            were refunded (their decisions describe the hit given back).
            None for a shadow check whose cost exceeds its burst.
        denied_by: index of the enforced check that denied, or None.
        shadow_denied: indices of shadow checks that would have denied.
    """

    allowed: bool
    decisions: tuple[Decision | None, ...]
    denied_by: int | None
    shadow_denied: tuple[int, ...]


def _result(fields: tuple[bool, tuple[Decision | None, ...], int | None, tuple[int, ...]]
            ) -> CompositeResult:
    # CompositeResult's own __new__ is Python code: this skips it on every request
    return tuple.__new__(CompositeResult, fields)


def hit_all(checks: Sequence[LimitCheck], cost: int = 1) -> CompositeResult:
    """Hit every check with ``cost``; all must allow, or none is consumed.

    Raises:
        CapacityError: ``cost`` exceeds an enforced check's burst (it could
            never pass); nothing is consumed.

    Example:
        >>> from fastlimit import FakeClock, Limiter, SharedTable
        >>> table, clock = SharedTable.anonymous(1000), FakeClock()
        >>> tier = Limiter("30/1m", store=table, name="tier", clock=clock)
        >>> login = Limiter("1/1m", store=table, name="login", clock=clock)
        >>> checks = [LimitCheck("tier", tier, "key-1"), LimitCheck("login", login, "10.0.0.1")]
        >>> hit_all(checks).allowed, hit_all(checks).allowed
        (True, False)
        >>> tier.peek("key-1").remaining   # the denied request took nothing
        29
    """
    if len(checks) == 1:  # the common case, without the bookkeeping
        c = checks[0]
        if cost <= c.limiter.burst:
            d = c.limiter.hit(c.key, cost)
            if d.allowed or c.shadow:
                return _result((True, (d,), None, () if d.allowed else (0,)))
            return _result((False, (d,), 0, ()))
    _check_capacity(checks, cost)
    decisions: list[Decision | None] = [None] * len(checks)
    counted: list[int] = []
    shadow_denied: list[int] = []
    denied_by: int | None = None
    try:
        for i, c in enumerate(checks):
            if cost > c.limiter.burst:  # a shadow check: enforced ones were refused above
                shadow_denied.append(i)
                continue
            d = c.limiter.hit(c.key, cost)
            decisions[i] = d
            if d.allowed:
                if cost:
                    counted.append(i)
            elif c.shadow:
                shadow_denied.append(i)
            else:
                denied_by = i
                break
    except BaseException:
        _refund(checks, counted, cost)
        raise
    if denied_by is not None:
        _refund(checks, counted, cost)
        # The rest are peeked so the answer can say when the request as a
        # whole could pass: Retry-After is the longest wait among them.
        for j in range(denied_by + 1, len(checks)):
            c = checks[j]
            if cost <= c.limiter.burst:
                decisions[j] = c.limiter.peek(c.key, cost)
    return CompositeResult(denied_by is None, tuple(decisions), denied_by, tuple(shadow_denied))


def peek_all(checks: Sequence[LimitCheck], cost: int = 1) -> CompositeResult:
    """What :func:`hit_all` would answer now, counting nothing.

    Example:
        >>> from fastlimit import Limiter, SharedTable
        >>> lim = Limiter("5/1m", store=SharedTable.anonymous(100), name="x")
        >>> peek_all([LimitCheck("x", lim, "k")]).decisions[0].remaining
        5
    """
    _check_capacity(checks, cost)
    decisions: list[Decision | None] = []
    shadow_denied: list[int] = []
    denied_by: int | None = None
    for i, c in enumerate(checks):
        d = c.limiter.peek(c.key, cost) if cost <= c.limiter.burst else None
        decisions.append(d)
        if d is None or not d.allowed:
            if c.shadow:
                shadow_denied.append(i)
            elif denied_by is None:
                denied_by = i
    return CompositeResult(denied_by is None, tuple(decisions), denied_by, tuple(shadow_denied))


def _check_capacity(checks: Sequence[LimitCheck], cost: int) -> None:
    for c in checks:
        if cost > c.limiter.burst and not c.shadow:
            raise CapacityError(
                f"cost {cost} exceeds the burst of {c.limiter.burst} of limit {c.name!r}: "
                f"it can never pass")


def _refund(checks: Sequence[LimitCheck], counted: list[int], cost: int) -> None:
    for i in counted:
        c = checks[i]
        try:
            c.limiter.refund(c.key, cost)
        except Exception as e:  # one stuck key must not keep the others' hits
            log.error("fastlimit: could not refund limit %r: %s", c.name, e)
