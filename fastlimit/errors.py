"""The exceptions fastlimit raises.  A denial is a Decision, never an error:
exceptions are for misuse and for states the caller must handle."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastlimit._core import Decision

__all__ = [
    "check_cost",
    "BackendError",
    "CapacityError",
    "ConcurrencyLimitExceeded",
    "ConfigurationError",
    "FastLimitError",
    "RateLimitExceeded",
    "TableError",
    "TableFullError",
]


class FastLimitError(Exception):
    """Base class of every fastlimit exception."""


class ConfigurationError(FastLimitError, ValueError):
    """A rate, limit, policy or option is malformed or out of range."""


class CapacityError(FastLimitError, ValueError):
    """A hit costs more than the burst: it could never pass."""


class TableFullError(FastLimitError):
    """A new key found no free slot (raised only with ``on_full="raise"``)."""


class TableError(FastLimitError, OSError):
    """A shared table cannot be created, attached or used as asked."""


class BackendError(FastLimitError):
    """A remote backend (Redis) failed and the policy says to raise."""


class ConcurrencyLimitExceeded(FastLimitError):
    """Every lease of a key stayed held until the acquire gave up.

    Attributes:
        key: the key.
        limit: its concurrency limit.
        retry_after: a suggested wait in seconds before trying again.
    """

    def __init__(self, key: object, limit: int, retry_after: float) -> None:
        super().__init__(f"{limit} of {limit} leases of key {key!r} are in use")
        self.key = key
        self.limit = limit
        self.retry_after = retry_after


class RateLimitExceeded(FastLimitError):
    """A call guarded by ``@limiter.limit`` (or a throttled client) was not
    allowed: at once (``block=False``) or within its ``timeout``.

    Attributes:
        decision: the denial: ``decision.retry_after`` says how long until
            the same call would pass.
        key: the key that was limited.
        limiter: the limiter's name.
    """

    def __init__(self, decision: Decision, key: object = None, limiter: str | None = None) -> None:
        super().__init__(
            f"rate limit {limiter!r} exceeded for key {key!r}: the call would pass in "
            f"{decision.retry_after:.6g} s")
        self.decision = decision
        self.key = key
        self.limiter = limiter

    @property
    def retry_after(self) -> float:
        """Seconds until the same call would pass."""
        return self.decision.retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        # rebuilt from its parts, so it crosses process pools intact
        return (RateLimitExceeded, (self.decision, self.key, self.limiter))


def check_cost(cost: object, most: int, limit: str) -> int:
    """``cost`` as an int in ``[0, most]``, by the rule every store follows:
    ints only (``operator.index``: a float is refused, never truncated); a
    cost above ``most`` could never pass.  ``limit`` names what ``most`` is
    in the error ("the burst of 5")."""
    try:
        n = operator.index(cost)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"cost must be an int, got {cost!r}") from None
    if n < 0:
        raise ValueError(f"cost must be >= 0, got {n}")
    if n > most:
        raise CapacityError(f"cost {n} exceeds {limit}: it can never pass")
    return n
