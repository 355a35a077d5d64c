"""Composite checks: one request under several limits.

A request passes only if every enforced limit allows it, and a denied
request consumes nothing from any of them.  Limits are hit in order; when
one denies, the hits already counted are given back with
:meth:`Limiter.refund`, which restores each key's state exactly (a key's
state is a time: refunding moves it back by ``cost x T``).  The counting
loop is compiled (``limiters/_counting.pyx``) and is the one every policy
decision runs too.

Between the hit and its refund (microseconds), another process may see the
first limits' keys one request fuller than they end up: it can be denied
spuriously, never admitted beyond a limit.  Checking with ``peek`` first
would not help: a peek is stale the moment it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from fastlimit._core import Decision
from fastlimit.limiters._counting import Hit, Meter, count_all
from fastlimit.limiters.limiter import Key
from fastlimit.limiters.quota import Window

__all__ = ["CompositeResult", "LimitCheck", "hit_all", "meter_of", "peek_all"]

class Limit(Protocol):
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
    limiter: Limit
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
    return _counted(checks, cost, True)


def peek_all(checks: Sequence[LimitCheck], cost: int = 1) -> CompositeResult:
    """What :func:`hit_all` would answer now, counting nothing.

    Example:
        >>> from fastlimit import Limiter, SharedTable
        >>> lim = Limiter("5/1m", store=SharedTable.anonymous(100), name="x")
        >>> peek_all([LimitCheck("x", lim, "k")]).decisions[0].remaining
        5
    """
    return _counted(checks, cost, False)


def meter_of(limit: Limit | Any) -> Meter:
    """The counting loop's view of a limit: a Limiter's or Quota's own
    meter, or one for any object with ``burst``, ``hit``, ``peek``,
    ``refund`` and ``window``."""
    found = getattr(limit, "_meter", None)
    return found if isinstance(found, Meter) else Meter(limit)


def _counted(checks: Sequence[LimitCheck], cost: int, consume: bool) -> CompositeResult:
    hits = [Hit(meter_of(c.limiter), c.key, c.name, c.shadow) for c in checks]
    denied = count_all(hits, cost, consume)
    return CompositeResult(denied < 0, tuple(h.result() for h in hits),
                           None if denied < 0 else denied,
                           tuple(i for i, h in enumerate(hits) if h.shadow_denied))
