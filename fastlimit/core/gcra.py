"""The GCRA, stated once: the integers every store follows.

A rate of ``limit`` hits per ``period_ns`` has an emission interval
``T = ceil(period_ns / limit)``; a burst ``B`` gives the tolerance
``tau = B x T``.  A key's whole state is ``tat``, its theoretical arrival
time (absent, or ``tat <= now``: fresh).  A hit of cost ``n`` at ``now``
has the increment ``inc = n x T`` (``n = 0`` asks as a hit of 1, counting
nothing) and passes iff ``max(tat, now) + inc - now <= tau``; then
``tat = max(tat, now) + inc``.  A denial stores nothing.

What a check answers is a function of the state after it, as "ahead"
``max(0, tat - now)``: ``remaining = floor((tau - ahead) / T)`` within
``[0, B]``, ``reset_after = ahead``, and on a denial ``retry_after =
ahead + inc - tau`` (> 0): the earliest wait after which the same hit passes.

The compiled core (fastlimit/_core.pyx, in C over the shared table) and
the Redis script (fastlimit/stores/redis/lua/gcra.lua) implement these
formulas for speed; tests/test_gcra_statement.py checks both against this
module on random and extreme traces, and every other part of fastlimit
(the Redis client, headers, client-side holds) calls this module instead
of deriving them again.

Example:
    >>> T = emission_interval_ns(5, 10 * 10**9)       # 5 per 10 s: one per 2 s
    >>> step(0, now=0, inc=T, tau=5 * T)                # a fresh key: allowed
    (True, 2000000000)
    >>> answer(True, ahead_ns=2 * 10**9, inc=T, emission_interval=T, burst=5)
    Answer(allowed=True, limit=5, remaining=4, reset_after_ns=2000000000, retry_after_ns=0)
"""

from __future__ import annotations

import operator
from typing import NamedTuple

from fastlimit.errors import CapacityError

__all__ = [
    "MAX_CLOCK_NS",
    "MAX_TOLERANCE_NS",
    "Answer",
    "answer",
    "check_cost",
    "check_params",
    "denied_for",
    "emission_interval_ns",
    "hold_ahead_ns",
    "increment_ns",
    "next_unit_ns",
    "no_slot",
    "step",
    "tolerance_ns",
    "wait_ns",
]

# The largest tolerance accepted: every sum of a time and a tolerance or an
# increment then stays inside int64 for ~140 years of uptime.
MAX_TOLERANCE_NS = 1 << 61
# The latest time a clock may read (146 years): with the tolerance above,
# times and tats stay positive int64s, never the negative words that the
# table uses for its locks and free slots.
MAX_CLOCK_NS = 1 << 62


class Answer(NamedTuple):
    """What a check answers (the fields of :class:`fastlimit.Decision`)."""

    allowed: bool
    limit: int
    remaining: int
    reset_after_ns: int
    retry_after_ns: int


def emission_interval_ns(limit: int, period_ns: int) -> int:
    """``T = ceil(period_ns / limit)``: the time one hit's worth refills in."""
    return -(-period_ns // limit)


def tolerance_ns(emission_interval: int, burst: int) -> int:
    """``tau = burst x T``: how far ahead of now a key's state may run."""
    return burst * emission_interval


def check_params(emission_interval: int, burst: int) -> None:
    """Refuse parameters no store can run: an interval under 1 ns, a burst
    under 1, or a tolerance beyond :data:`MAX_TOLERANCE_NS`.

    Raises:
        ValueError: naming the bad value and the bound it breaks.
    """
    if emission_interval < 1:
        raise ValueError(f"emission interval must be >= 1 ns, got {emission_interval}")
    if burst < 1:
        raise ValueError(f"burst must be >= 1, got {burst}")
    if burst > MAX_TOLERANCE_NS // emission_interval:
        raise ValueError(
            f"burst x emission interval must be <= {MAX_TOLERANCE_NS} ns, got "
            f"{burst} x {emission_interval}")


def check_cost(cost: object, most: int, what: str) -> int:
    """``cost`` as an int in ``[0, most]``: ints only (a float is refused,
    never truncated), and a cost above ``most`` (``what`` names it, e.g.
    "the burst of 5") could never pass.

    Raises:
        TypeError: not an int.
        ValueError: negative.
        CapacityError: above ``most``.
    """
    try:
        n = operator.index(cost)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"cost must be an int, got {cost!r}") from None
    if n < 0:
        raise ValueError(f"cost must be >= 0, got {n}")
    if n > most:
        raise CapacityError(f"cost {n} exceeds {what}: it can never pass")
    return n


def increment_ns(cost: int, emission_interval: int) -> int:
    """A hit's increment: ``cost x T``; a cost of 0 asks as a hit of 1."""
    return (cost or 1) * emission_interval


def step(tat: int, now: int, inc: int, tau: int, consume: bool = True) -> tuple[bool, int]:
    """One check of increment ``inc`` on state ``tat`` (0 when absent) at
    ``now``: whether it passes, and the tat after it (changed only when it
    passes and ``consume``)."""
    new_tat = max(tat, now) + inc
    if new_tat - now > tau:
        return False, tat
    return True, new_tat if consume else tat


def wait_ns(ahead_ns: int, inc: int, emission_interval: int, burst: int) -> int:
    """How long until a hit of increment ``inc`` passes on a key whose state
    is ``ahead_ns`` ahead of now (0 or less: it passes now)."""
    return max(0, ahead_ns) + inc - burst * emission_interval


def answer(allowed: bool, ahead_ns: int, inc: int, emission_interval: int,
           burst: int) -> Answer:
    """The answer of a check, from the state after it: ``ahead_ns =
    max(0, tat - now)`` (negative counts as 0)."""
    ahead = max(0, ahead_ns)
    tau = burst * emission_interval
    remaining = min(burst, max(0, (tau - ahead) // emission_interval))
    return Answer(allowed, burst, remaining, ahead,
                  0 if allowed else wait_ns(ahead, inc, emission_interval, burst))


def no_slot(allow: bool, inc: int, emission_interval: int, burst: int) -> Answer:
    """The answer when the store cannot hold the key (a full table, an
    unreachable Redis): ``allow`` answers as for a key seen the first time;
    otherwise denied for one increment."""
    if allow:
        return answer(True, inc, inc, emission_interval, burst)
    return Answer(False, burst, 0, 0, inc)


def denied_for(retry_after_ns: int, inc: int, emission_interval: int, burst: int) -> Answer:
    """The denial of a hit of increment ``inc`` on a key whose hit of cost
    1 would pass in ``retry_after_ns`` (> 0): what a cache of denials knows.
    A cost-1 wait ``r = ahead + T - tau`` gives ``ahead = r + tau - T``."""
    tau = burst * emission_interval
    ahead = retry_after_ns + tau - emission_interval
    return Answer(False, burst, 0, ahead, ahead + inc - tau)


def next_unit_ns(limit: int, reset_after_ns: int, emission_interval: int) -> int:
    """Nanoseconds until a key with ``reset_after_ns`` of state ahead has at
    least one more unit than now; 0 when fully replenished.  (For a denial
    of cost 1 it equals the retry_after.)"""
    if reset_after_ns <= 0:
        return 0
    # free: the part of the tolerance not in use.  It can be negative when
    # the state was made under a larger tolerance (an override lowered).
    free = limit * emission_interval - reset_after_ns
    units = max(0, free // emission_interval)
    return (units + 1) * emission_interval - free


def hold_ahead_ns(remaining: int, wait_ns: int | None, emission_interval: int,
                  burst: int) -> int:
    """How far ahead of now a key's tat must be for at most ``remaining``
    hits to pass now and, when ``remaining`` is 0, none before ``wait_ns``
    (one interval if None): what a client sets to follow a server's report."""
    tau = burst * emission_interval
    if remaining > 0:
        return tau - remaining * emission_interval
    return tau - emission_interval + (emission_interval if wait_ns is None else wait_ns)
