"""HTTP answers from Decisions: rate-limit headers and 429 bodies.

Two header families, either or both:

- legacy ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset``, where Reset is
  when the key is fully replenished, written as epoch seconds, ISO 8601 UTC
  with milliseconds, or seconds from now;
- the IETF structured fields of draft-ietf-httpapi-ratelimit-headers-10:
  ``RateLimit-Policy: "api";q=100;w=60`` and ``RateLimit: "api";r=50;t=30``,
  where ``t`` is the seconds until at least one more request is available.

Every denial carries ``Retry-After``: whole seconds, rounded up, at least 1,
and never earlier than ``t``.

A request no limit applies to (an unlimited tier) still gets the legacy
fields, with :data:`UNLIMITED` as its limit and remaining: a client that
reads a missing ``X-RateLimit-Remaining`` as 0 would otherwise back off.
A concurrency limit's denial describes that limit: all its leases held,
none left, ``qu="concurrent-requests"`` in ``RateLimit-Policy``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fastlimit._core import Decision
from fastlimit.errors import ConfigurationError
from fastlimit.http import _fields as compiled
from fastlimit.limiters.quota import CalendarWindow, Window
from fastlimit.limiters.rate import NS_PER_S, Rate

__all__ = [
    "CalendarWindow",
    "DEFAULT_BODY",
    "DenialResponse",
    "HeaderStyle",
    "UNLIMITED",
    "default_responses",
    "ResetFormat",
    "format_reset",
    "most_restrictive",
    "next_unit_ns",
    "retry_after_seconds",
    "sf_string",
]

ResetFormat = Literal["epoch", "iso", "delta"]
RESET_FORMATS: tuple[ResetFormat, ...] = ("epoch", "iso", "delta")
NS_PER_MS = 1_000_000
DEFAULT_BODY: Mapping[str, Any] = {
    "success": False,
    "error": {"code": "RATE_LIMITED", "message": "Too many requests"},
}


#: ``X-RateLimit-Limit`` and ``-Remaining`` of a request no limit applies to:
#: the largest signed 32-bit integer, which any client parses as a number
UNLIMITED: int = compiled.UNLIMITED_FIELD

_FIELDS = {fmt: compiled.Fields(fmt, True, False) for fmt in RESET_FORMATS}


def next_unit_ns(decision: Decision, rate: Window) -> int:
    """Nanoseconds until the key has at least one more unit than now.

    0 when the key is fully replenished (nothing more will come).  For a
    denied hit of cost 1 it equals ``decision.retry_after_ns``.  (A rate's
    answer is :func:`fastlimit.core.gcra.next_unit_ns`; a quota refills all
    at once, when its period ends.)

    Example:
        >>> from fastlimit import Decision, Rate
        >>> # 10/1m (T = 6 s) with 25 s of the 60 s tolerance used: 5 left, a 6th in 1 s
        >>> next_unit_ns(Decision(True, 10, 5, 25 * 10**9), Rate.parse("10/1m"))
        1000000000
    """
    found: int = compiled.next_unit_ns(decision, rate)
    return found


def retry_after_seconds(decision: Decision, rate: Window) -> int:
    """``Retry-After`` for a denial: whole seconds, rounded up, at least 1,
    and never earlier than the ``t`` of the ``RateLimit`` field.

    Example:
        >>> from fastlimit import Decision, Rate
        >>> retry_after_seconds(Decision(False, 5, 0, 60 * 10**9, 10**8), Rate.parse("5/1m"))
        12
    """
    found: int = compiled.retry_after_seconds(decision, rate)
    return found


def format_reset(reset_after_ns: int, fmt: ResetFormat, wall_now_ns: int) -> str:
    """``X-RateLimit-Reset`` for a key replenished in ``reset_after_ns``.

    ``epoch``: Unix seconds, rounded up; ``iso``: ISO 8601 UTC with
    milliseconds, rounded up; ``delta``: seconds from now, rounded up.
    Rounding up means a client that waits until the stated time finds the
    key replenished.

    Example:
        >>> format_reset(3_600 * 10**9, "iso", 1_775_397_600 * 10**9)
        '2026-04-05T15:00:00.000Z'
        >>> format_reset(1, "epoch", 1_775_397_600 * 10**9)
        '1775397601'
    """
    if fmt not in RESET_FORMATS:
        raise ConfigurationError(f"reset format must be one of {RESET_FORMATS}, got {fmt!r}")
    d = Decision(True, 1, 0, reset_after_ns)
    found: str = _FIELDS[fmt].render(d, "", Rate(1, NS_PER_S), wall_now_ns)[2][1]
    return found


def sf_string(text: str) -> str:
    """``text`` as an RFC 9651 String: quoted, ``\\`` and ``"`` escaped.

    Raises:
        ConfigurationError: ``text`` has characters a String cannot hold
            (only printable ASCII is allowed).

    Example:
        >>> sf_string('login "v2"')
        '"login \\\\"v2\\\\""'
    """
    found: str = compiled.sf_string(text)
    return found


def most_restrictive(decisions: Sequence[Decision]) -> int:
    """Index of the decision the headers should describe.

    Among denials, the one that makes the client wait longest; when all
    allow, the one with the fewest requests left (then the longest to
    replenish).

    Example:
        >>> from fastlimit import Decision
        >>> most_restrictive([Decision(True, 30, 12, 0), Decision(True, 5, 2, 0)])
        1
    """
    found: int = compiled.most_restrictive(decisions)
    return found


@dataclass(frozen=True, slots=True)
class HeaderStyle:
    """Which rate-limit headers to send, and how to write the reset time.

    Args:
        reset: ``"epoch"`` (Unix seconds), ``"iso"`` (``2026-04-05T15:00:00.000Z``)
            or ``"delta"`` (seconds from now), for ``X-RateLimit-Reset``.
        legacy: send ``X-RateLimit-Limit``, ``-Remaining``, ``-Reset``.
        ietf: send ``RateLimit-Policy`` and ``RateLimit`` (draft -10).

    Example:
        >>> from fastlimit import Decision, Rate
        >>> style = HeaderStyle(reset="delta", legacy=True, ietf=True)
        >>> d = Decision(True, 100, 50, 1800 * 10**9)
        >>> for name, value in style.render(d, name="api", rate=Rate.parse("100/1h"),
        ...                                 wall_now_ns=0):
        ...     print(f"{name}: {value}")
        X-RateLimit-Limit: 100
        X-RateLimit-Remaining: 50
        X-RateLimit-Reset: 1800
        RateLimit-Policy: "api";q=100;w=3600
        RateLimit: "api";r=50;t=36
    """

    reset: ResetFormat = "epoch"
    legacy: bool = True
    ietf: bool = False
    # the compiled rendering of these fields (fastlimit/http/_fields.pyx)
    _fields: compiled.Fields = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.reset not in RESET_FORMATS:
            raise ConfigurationError(
                f"reset format must be one of {RESET_FORMATS}, got {self.reset!r}")
        object.__setattr__(self, "_fields", compiled.Fields(self.reset, self.legacy, self.ietf))

    def render(
        self, decision: Decision, *, name: str, rate: Window, wall_now_ns: int
    ) -> list[tuple[str, str]]:
        """The headers for one limit's decision (``Retry-After`` if denied).

        Args:
            decision: the limit's Decision for this request.
            name: the limit's name, for the IETF fields.
            rate: the limit's rate, or a quota's CalendarWindow (for ``w``
                and ``t``).
            wall_now_ns: Unix time in ns, for epoch and ISO resets: the
                reading the decision was made at (for a quota,
                ``Quota.decide(...).wall_ns``), so that the reset is the
                period's end exactly, not a second past it.
        """
        found: list[tuple[str, str]] = self._fields.render(decision, name, rate, wall_now_ns)
        return found

    def render_concurrency(self, *, name: str, limit: int, retry_after: float,
                           wall_now_ns: int) -> list[tuple[str, str]]:
        """The headers of a concurrency limit's denial: ``limit`` leases,
        none left, more expected in ``retry_after`` seconds (rounded up, at
        least 1), which ``X-RateLimit-Reset``, ``t`` and ``Retry-After`` say.

        Example:
            >>> style = HeaderStyle(reset="delta", ietf=True)
            >>> for name, value in style.render_concurrency(
            ...         name="uploads", limit=20, retry_after=4.2, wall_now_ns=0):
            ...     print(f"{name}: {value}")
            X-RateLimit-Limit: 20
            X-RateLimit-Remaining: 0
            X-RateLimit-Reset: 5
            RateLimit-Policy: "uploads";q=20;qu="concurrent-requests"
            RateLimit: "uploads";r=0;t=5
            Retry-After: 5
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"limit must be an int >= 1 (leases), got {limit!r}")
        if not isinstance(retry_after, (int, float)) or not retry_after >= 0 or math.isinf(
                retry_after):
            raise ConfigurationError(
                f"retry_after must be a finite number of seconds >= 0, got {retry_after!r}")
        wait = max(1, math.ceil(retry_after))
        found: list[tuple[str, str]] = self._fields.render_concurrency(
            name, limit, wait, wall_now_ns)
        return found

    def render_unlimited(self, *, wall_now_ns: int) -> list[tuple[str, str]]:
        """The headers of a request no limit applies to: legacy fields of
        :data:`UNLIMITED` limit and remaining, reset now; no IETF field
        (there is no policy to describe).

        Example:
            >>> style = HeaderStyle(reset="epoch", ietf=True)
            >>> for name, value in style.render_unlimited(wall_now_ns=1_775_397_600 * 10**9):
            ...     print(f"{name}: {value}")
            X-RateLimit-Limit: 2147483647
            X-RateLimit-Remaining: 2147483647
            X-RateLimit-Reset: 1775397600
        """
        found: list[tuple[str, str]] = self._fields.render_unlimited(wall_now_ns)
        return found


def _placeholders(value: Any, found: set[str]) -> None:
    if isinstance(value, str):
        found.add(value)
    elif isinstance(value, Mapping):
        for v in value.values():
            _placeholders(v, found)
    elif isinstance(value, list):
        for v in value:
            _placeholders(v, found)


def _fill(value: Any, fields: Mapping[str, object]) -> Any:
    if isinstance(value, str):
        return value.format_map(fields)
    if isinstance(value, Mapping):
        return {k: _fill(v, fields) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, fields) for v in value]
    return value


QUOTA_BODY: Mapping[str, Any] = {
    "success": False,
    "error": {"code": "QUOTA_EXCEEDED", "message": "Quota exceeded: {limit}"},
}
CONCURRENCY_BODY: Mapping[str, Any] = {
    "success": False,
    "error": {"code": "CONCURRENCY_LIMITED", "message": "Too many requests in flight: {limit}"},
}
FULL_BODY: Mapping[str, Any] = {
    "success": False,
    "error": {"code": "LIMITER_FULL",
              "message": "The rate limiter has no room to count this request: {limit}"},
}
TOO_LARGE_BODY: Mapping[str, Any] = {
    "success": False,
    "error": {"code": "PAYLOAD_TOO_LARGE", "message": "Request exceeds the cap: {limit}"},
}


@dataclass(frozen=True)
class DenialResponse:
    """The status and body of a denied request.

    String values in ``body`` may name ``{retry_after}`` (seconds) and
    ``{limit}`` (the limit that denied); write ``{{`` for a literal brace.

    Example:
        >>> DenialResponse().render(retry_after=12, limit="login")
        b'{"success":false,"error":{"code":"RATE_LIMITED","message":"Too many requests"}}'
        >>> r = DenialResponse(body={"error": "retry in {retry_after}s"})
        >>> r.render(retry_after=12, limit="login")
        b'{"error":"retry in 12s"}'
    """

    status: int = 429
    body: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_BODY))
    content_type: str = "application/json"
    #: the encoded body when it names no placeholder (the same for every denial), else None
    fixed: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.status, bool) or not isinstance(self.status, int) or not (
                400 <= self.status <= 599):
            raise ConfigurationError(f"status must be an int from 400 to 599, got {self.status!r}")
        if not isinstance(self.body, Mapping):
            raise ConfigurationError(f"body must be a JSON object, got {self.body!r}")
        try:
            self._encode(self._fill_sample())
        except (KeyError, IndexError, AttributeError, ValueError, TypeError,
                RecursionError) as e:
            raise ConfigurationError(
                f"body must be JSON whose strings use only the placeholders "
                f"{{retry_after}} and {{limit}}: {type(e).__name__}: {e}") from None
        strings: set[str] = set()
        _placeholders(self.body, strings)
        if not any("{" in s or "}" in s for s in strings):
            object.__setattr__(self, "fixed", self._encode(self.body))

    def _fill_sample(self) -> Any:
        return _fill(self.body, {"retry_after": 1, "limit": "x"})

    @staticmethod
    def _encode(body: Any) -> bytes:
        # allow_nan=False: TOML has nan and inf, which JSON does not
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode()

    def render(self, *, retry_after: int, limit: str) -> bytes:
        """The body as UTF-8 JSON bytes."""
        if self.fixed is not None:
            return self.fixed
        return self._encode(_fill(self.body, {"retry_after": retry_after, "limit": limit}))


def default_responses() -> dict[str, DenialResponse]:
    """The answer to each kind of denial when the policy says nothing:
    ``rate`` (429 RATE_LIMITED), ``quota`` (429 QUOTA_EXCEEDED),
    ``concurrency`` (429 CONCURRENCY_LIMITED), ``too_large`` (413
    PAYLOAD_TOO_LARGE) and ``full`` (503 LIMITER_FULL: a quota's state had
    no room for the caller); ``{limit}`` is the name of the limit or cap."""
    return {
        "rate": DenialResponse(),
        "full": DenialResponse(status=503, body=dict(FULL_BODY)),
        "quota": DenialResponse(body=dict(QUOTA_BODY)),
        "concurrency": DenialResponse(body=dict(CONCURRENCY_BODY)),
        "too_large": DenialResponse(status=413, body=dict(TOO_LARGE_BODY)),
    }
