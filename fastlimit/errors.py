"""The exceptions fastlimit raises.  A denial is a Decision, never an error:
exceptions are for misuse and for states the caller must handle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastlimit._core import Decision

__all__ = [
    "BackendError",
    "CallbackError",
    "CapacityError",
    "ConcurrencyLimitExceeded",
    "ConfigurationError",
    "FastLimitError",
    "RateLimitExceeded",
    "RateLimited",
    "TableError",
    "TableFullError",
]


class FastLimitError(Exception):
    """Base class of every fastlimit exception."""


class ConfigurationError(FastLimitError, ValueError):
    """A rate, limit, policy or option is malformed or out of range."""


class CallbackError(ConfigurationError):
    """A callable the application gave fastlimit (``identify``, a
    credential ``lookup``, a key or cost function) returned what it must
    not, or named a tier the policy does not have.

    The middlewares and integrations answer such a request 500 and log the
    error once per distinct mistake (``mistake``), not once per request.

    Attributes:
        mistake: what tells this mistake from others (the callback's role,
            the callable, and the kind of value returned); never the
            request's data.
    """

    def __init__(self, message: str, mistake: object) -> None:
        super().__init__(message)
        self.mistake = mistake

    @classmethod
    def returned(cls, role: str, function: object, value: object,
                 expected: str) -> CallbackError:
        """``role`` (e.g. ``"identify"``) ``function`` returned ``value``
        where it must return ``expected``."""
        name = getattr(function, "__qualname__", None) or repr(function)
        shown = repr(value)
        if len(shown) > 120:  # a database row: its type and start say enough
            shown = shown[:117] + "..."
        return cls(f"{role} {name} returned {shown}; it must return {expected}",
                   (role, name, type(value).__name__))


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


class RateLimited(FastLimitError):
    """A request a policy denied, raised where a check stands inside the
    application (:class:`fastlimit.web.RouteLimit`, the framework
    integrations) rather than around it.  Answer it with :attr:`status`,
    :attr:`headers`, :attr:`body` and :attr:`content_type`.

    Attributes:
        outcome: the denial (a :class:`~fastlimit.PolicyDecision`, or the
            413 answer to a cost no limit admits).
    """

    def __init__(self, outcome: Any) -> None:
        super().__init__(f"rate limited ({outcome.status})")
        self.outcome = outcome
        self.status: int = outcome.status or 429
        self.headers: list[tuple[str, str]] = outcome.headers
        self.body: bytes = outcome.body or b""
        self.content_type: str = outcome.content_type


class PayloadTooLarge(FastLimitError, ValueError):
    """A request body streamed past the byte cap of its route: raised by
    the ``wsgi.input`` the middleware gives the application, which then
    answers 413 in place of the application's response."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"the request body is larger than its cap of {cap} bytes")
        self.cap = cap
