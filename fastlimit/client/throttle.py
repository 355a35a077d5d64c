"""Client-side throttling: the limiter, the server's answers it follows, and
the retries (see :mod:`fastlimit.client`)."""


from __future__ import annotations

import email.utils
import logging
import math
import random
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import NamedTuple

from fastlimit.errors import ConfigurationError, RateLimitExceeded
from fastlimit.http.sfv import parse_dictionary, parse_list
from fastlimit.limiters import waiting
from fastlimit.limiters.limiter import Key, Limiter

__all__ = ["Retry", "ServerLimits", "Throttle", "read_limits"]

log = logging.getLogger("fastlimit.client")

# -- what the server says ----------------------------------------------------------

class ServerLimits(NamedTuple):
    """What a response's headers say about the server's limits.

    Attributes:
        remaining: requests left now (the least over the server's policies),
            or None if it did not say.
        wait: when ``remaining`` is 0, seconds until more are available.
        retry_after: ``Retry-After`` in seconds from now.
    """

    remaining: int | None
    wait: float | None
    retry_after: float | None


def _count_param(value: object) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _ratelimit_field(field: str) -> tuple[int | None, float | None]:
    """``RateLimit``: draft -10 items (``"api";r=5;t=30``, the most
    restrictive wins) or the older dictionary (``limit=9, remaining=5,
    reset=30``), read as RFC 9651 structured fields.  A malformed field is
    ignored whole (draft -10: it MUST be): one that does not parse, or with
    an item whose ``r`` is missing or not an Integer >= 0, or whose ``t`` is
    present and not an Integer >= 0."""
    try:
        items = parse_list(field)
    except ValueError:
        try:
            members = parse_dictionary(field)
        except ValueError:
            return None, None
        left = _count_param(members.get("remaining", (None, {}))[0])
        reset: int | None = None
        if "reset" in members and (reset := _count_param(members["reset"][0])) is None:
            return None, None
        if left is None:
            return None, None
        return left, (float(reset) if reset is not None and left == 0 else None)
    least: int | None = None
    wait: float | None = None
    for _, params in items:
        r = _count_param(params.get("r"))
        t = _count_param(params.get("t"))
        if r is None or ("t" in params and t is None):
            return None, None
        if least is None or r < least:
            least, wait = r, (float(t) if r == 0 and t is not None else None)
        elif r == 0 and t is not None:
            wait = float(t) if wait is None else max(wait, float(t))
    return least, wait


# delta seconds (RFC 9110: 1*DIGIT; a fraction tolerated) and counts, in ASCII
# digits and bounded: float() and int() take "1_0", other scripts' digits and
# "nan", and int() raises on a 5000-digit one
_SECONDS = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,9})?")
_COUNT = re.compile(r"[0-9]{1,15}")


def _number(text: str) -> float | None:
    return float(text) if _SECONDS.fullmatch(text) else None


def _date(text: str, wall_now: float, iso: bool) -> float | None:
    try:
        when = (datetime.fromisoformat(text.replace("Z", "+00:00")) if iso
                else email.utils.parsedate_to_datetime(text))
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return max(0.0, when.timestamp() - wall_now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _retry_after(text: str, wall_now: float) -> float | None:
    """``Retry-After``: delay seconds or an HTTP date, as seconds from now."""
    value = _number(text)
    return value if value is not None else _date(text, wall_now, iso=False)


def _reset(text: str, wall_now: float) -> float | None:
    """``X-RateLimit-Reset``: delta seconds, Unix seconds or milliseconds (by
    size: no delta is 30 years long), or ISO 8601; as seconds from now."""
    value = _number(text)
    if value is None:
        return _date(text, wall_now, iso=True)
    if value >= 1e12:
        return max(0.0, value / 1000 - wall_now)
    if value >= 1e9:
        return max(0.0, value - wall_now)
    return value


def _count(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    return int(text) if _COUNT.fullmatch(text) else None


def read_limits(headers: Mapping[str, str], wall_now: float | None = None) -> ServerLimits:
    """Read a response's rate-limit headers.

    ``headers`` must look names up case-insensitively (httpx and requests
    headers do).  ``wall_now`` is the Unix time that dates are measured from
    (default: now).  Values that do not parse are ignored.

    Example:
        >>> read_limits({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1700000060"},
        ...             wall_now=1_700_000_000)
        ServerLimits(remaining=0, wait=60.0, retry_after=None)
    """
    now = time.time() if wall_now is None else wall_now
    sources: list[tuple[int | None, float | None]] = []
    if (field := headers.get("RateLimit")) is not None:
        sources.append(_ratelimit_field(field))
    for prefix, reset in (("RateLimit-", _number), ("X-RateLimit-", lambda t: _reset(t, now))):
        remaining = _count(headers.get(prefix + "Remaining"))
        if remaining is not None:
            when = headers.get(prefix + "Reset")
            sources.append((remaining, reset(when.strip()) if when and remaining == 0 else None))
    known = [s for s in sources if s[0] is not None]
    least = min((s[0] for s in known), default=None)  # type: ignore[type-var]
    # the first source (most precise: RateLimit's t is "until more") that says when
    wait = next((w for r, w in known if r == 0 and w is not None), None) if least == 0 else None
    text = headers.get("Retry-After")
    retry_after = _retry_after(text.strip(), now) if text else None
    return ServerLimits(least, wait, retry_after)


# -- the throttle ----------------------------------------------------------------

class Retry(NamedTuple):
    """A retry decided by :meth:`Throttle.after`: wait ``delay`` seconds;
    ``held`` if the shared limiter makes everyone (this request included)
    wait it, so the transport need not sleep itself."""

    delay: float
    held: bool


class Throttle:
    """The policy of a throttled client, whatever its HTTP library: wait
    before each request, follow each response, decide retries.

    Args:
        limiter: the limiter every request passes (share it between processes
            through a named :class:`~fastlimit.SharedTable`).
        max_retries: retries of a 429 (or a 503 with ``Retry-After``) before
            its response is returned as is.
        backoff: the first retry's backoff, seconds; it doubles per retry.
        max_backoff: the largest backoff, seconds.
        max_retry_after: a server asking to wait longer than this (seconds)
            gets its 429 returned at once (the limiter still holds the key).
        max_hold: the longest (seconds) any one response may hold the
            limiter, and so every process sharing it: a server's "wait a
            day" (or a broken ``X-RateLimit-Reset``) holds it this long at
            most.  Default: ``max_retry_after``.
        max_wait: the longest a request waits for its turn (None: no bound);
            past it :class:`~fastlimit.RateLimitExceeded` is raised.
        jitter: ``jitter(a, b)`` returns a random number in ``[a, b]``
            (``random.uniform``; tests pass their own).
        wall_clock: Unix time in seconds, for dates in headers.
    """

    def __init__(self, limiter: Limiter, *, max_retries: int = 5, backoff: float = 0.5,
                 max_backoff: float = 30.0, max_retry_after: float = 300.0,
                 max_wait: float | None = None, max_hold: float | None = None,
                 jitter: Callable[[float, float], float] = random.uniform,
                 wall_clock: Callable[[], float] = time.time) -> None:
        if not isinstance(limiter, Limiter):
            raise TypeError(f"limiter must be a fastlimit.Limiter, got {limiter!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if max_hold is None:
            max_hold = max_retry_after
        for name, value in (("backoff", backoff), ("max_backoff", max_backoff),
                            ("max_retry_after", max_retry_after), ("max_hold", max_hold)):
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not 0 <= value < math.inf):
                raise ConfigurationError(
                    f"{name} must be a finite number of seconds >= 0, got {value!r}")
        waiting.timeout_ns(max_wait)  # refuses a bad one
        if not callable(jitter) or not callable(wall_clock):
            raise TypeError("jitter and wall_clock must be callable")
        self.limiter = limiter
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_retry_after = float(max_retry_after)
        self.max_hold = float(max_hold)
        self.max_wait = max_wait
        self.jitter = jitter
        self.wall_clock = wall_clock

    def before(self, key: Key) -> None:
        """Block until ``key`` may send a request.

        Raises:
            RateLimitExceeded: not within ``max_wait``."""
        denied = waiting.wait(self.limiter, key, 1, self.max_wait)
        if denied is not None:
            raise RateLimitExceeded(denied, key=key, limiter=self.limiter.name)

    async def abefore(self, key: Key) -> None:
        """:meth:`before` for asyncio."""
        denied = await waiting.wait_async(self.limiter, key, 1, self.max_wait)
        if denied is not None:
            raise RateLimitExceeded(denied, key=key, limiter=self.limiter.name)

    def after(self, key: Key, status: int, headers: Mapping[str, str],
              attempt: int) -> Retry | None:
        """Follow a response (the ``attempt``-th retry of its request, from
        0): hold the limiter to what its headers say, and return the retry
        to make, or None when the response stands."""
        limits = read_limits(headers, self.wall_clock())
        if not (status == 429 or (status == 503 and limits.retry_after is not None)):
            if limits.remaining is not None:
                self.limiter.hold(key, limits.remaining, min(limits.wait or 0.0, self.max_hold))
            return None
        hint = limits.retry_after if limits.retry_after is not None else (limits.wait or 0.0)
        if attempt >= self.max_retries or hint > self.max_retry_after:
            self.limiter.hold(key, 0, min(hint, self.max_hold))
            log.warning("%s answered %d (asked to wait %.3g s); giving up after %d retries",
                        key, status, hint, attempt)
            return None
        cap = min(self.max_backoff, self.backoff * 2 ** attempt)
        delay = hint + cap / 2 + self.jitter(0.0, cap / 2)
        held = self.limiter.hold(key, 0, min(delay, self.max_hold)) and delay <= self.max_hold
        log.info("%s answered %d (asked to wait %.3g s): retry %d of %d in %.3g s",
                 key, status, hint, attempt + 1, self.max_retries, delay)
        return Retry(delay, held)

    def sleep(self, key: Key, retry: Retry) -> None:
        """Wait before a retry, unless the limiter already makes it wait."""
        if not retry.held:
            waiting.pause(self.limiter, key,
                          waiting.clock_of(self.limiter)() + waiting.timeout_ns(retry.delay))

    async def asleep(self, key: Key, retry: Retry) -> None:
        """:meth:`sleep` for asyncio."""
        if not retry.held:
            await waiting.apause(self.limiter, key,
                                 waiting.clock_of(self.limiter)() + waiting.timeout_ns(retry.delay))


def origin(scheme: str, netloc: str) -> str:
    """The default key: one budget per server (``https://api.example.com``)."""
    return f"{scheme}://{netloc}"
