"""A calendar quota's answers, stated once.

A quota allows ``limit`` per calendar period.  A key's count in a period
starts at 0; a step of cost ``n`` (consume) passes iff ``count + n <=
limit`` and then adds ``n``; a peek passes on the same test and adds
nothing; a refund subtracts, never below 0.  A period newer than the one a
key was counted in starts at 0, and a key never moves back to an older
period.

What a step answers, with ``left_ns`` to the period's end: ``remaining =
limit - count`` (the count after the step), ``reset_after = left_ns``, and
on a denial ``retry_after = left_ns`` (a quota refills only when its
period ends).  When the store cannot answer (no slot; Redis failed), its
``on_full`` decides: allow answers as if the hit were counted on a fresh
key, deny is denied until ``retry_after_ns`` (the period's end, unless the
store knows it comes back sooner).

The compiled core (``QuotaCounter.answer``) and the Redis script implement
this; tests/test_gcra_statement.py checks both against it.

Example:
    >>> from fastlimit.core.results import Step
    >>> answer(Step.ALLOWED, count=3, cost=1, left_ns=10, limit=5, allow_on_full=False)
    Answer(allowed=True, limit=5, remaining=2, reset_after_ns=10, retry_after_ns=0)
"""

from __future__ import annotations

from fastlimit.core.gcra import Answer
from fastlimit.core.results import Step

__all__ = ["answer", "step"]


def step(count: int, cost: int, limit: int, consume: bool) -> tuple[bool, int]:
    """Whether a step of ``cost`` on ``count`` passes, and the count after."""
    if count + cost > limit:
        return False, count
    return True, count + cost if consume else count


def answer(result: int, count: int, cost: int, left_ns: int, limit: int,
           allow_on_full: bool, retry_after_ns: int | None = None) -> Answer:
    """The answer of a step whose store said ``result`` (a :class:`Step`)
    and ``count``; ``retry_after_ns`` is a failed store's own wait (default:
    the period's end)."""
    if result < 0:
        if allow_on_full:
            return Answer(True, limit, limit - cost, left_ns, 0)
        return Answer(False, limit, 0, left_ns,
                      left_ns if retry_after_ns is None else retry_after_ns)
    allowed = result == Step.ALLOWED
    return Answer(allowed, limit, limit - count, left_ns, 0 if allowed else left_ns)
