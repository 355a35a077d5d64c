"""Rates: ``limit`` hits per ``period``, and the parser for their text form."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from fastlimit.clock import NS_PER_S
from fastlimit.errors import ConfigurationError

__all__ = ["NS_PER_S", "Rate"]

MAX_LIMIT = 10**9
MAX_PERIOD_S = 3660 * 86400  # ten years: longer is a quota, not a rate

_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}
_CALENDAR = {"month", "months", "mo", "year", "years", "y"}
# ASCII digits and spaces only: \d would take "١٠" for 10.  Counts are
# capped in length before int() sees them (over 4300 digits it raises a
# ValueError about integer string conversion instead of naming the rate).
_RATE_RE = re.compile(r"^\s*(\d{1,30})\s*(?:/|\s+per\s+)\s*(\d{1,30})?\s*([A-Za-z]+)\s*$",
                      re.ASCII | re.IGNORECASE)
# Several rates in one string, as the limits library writes them
# ("10/second;1000/day"): every one must pass.
_SEPARATORS = re.compile(r"[;,|]")
_ACCEPTED = (
    "'<limit>/<window>' or '<limit> per <window>', where <window> is a unit "
    "(s, m, h, d, w, or second, minute, hour, day, week) optionally preceded "
    "by a count: '100/1h', '100/hour', '100 per hour', '10/minute', '5/30s', '1000/1d'"
)


@dataclass(frozen=True, slots=True)
class Rate:
    """``limit`` hits per ``period_ns`` nanoseconds.

    Example:
        >>> Rate.parse("100/1h")
        Rate(limit=100, period_ns=3600000000000)
        >>> str(Rate.parse("5 per 30 seconds"))
        '5/30s'
    """

    limit: int
    period_ns: int

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int):
            raise ConfigurationError(f"rate limit must be an int, got {self.limit!r}")
        if isinstance(self.period_ns, bool) or not isinstance(self.period_ns, int):
            raise ConfigurationError(f"rate period_ns must be an int, got {self.period_ns!r}")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise ConfigurationError(
                f"rate limit must be between 1 and {MAX_LIMIT}, got {self.limit}")
        if not NS_PER_S <= self.period_ns <= MAX_PERIOD_S * NS_PER_S:
            raise ConfigurationError(
                f"rate period must be between 1 second and {MAX_PERIOD_S // 86400} days, "
                f"got {self.period_ns / NS_PER_S:g} s")

    @classmethod
    def parse(cls, text: str | Rate) -> Rate:
        """Parse ``'100/1h'``, ``'100/hour'``, ``'100 per hour'``, ``'5/30s'``...

        Raises:
            ConfigurationError: naming the text and the accepted forms.
        """
        if isinstance(text, Rate):
            return text
        if not isinstance(text, str):
            raise ConfigurationError(f"a rate must be a str like '100/1h', got {text!r}")
        m = _RATE_RE.match(text)
        if m is None and _SEPARATORS.search(text):
            raise ConfigurationError(
                f"{text!r} is several rates, and one is expected here: a Limiter counts "
                f"one rate (combine several with fastlimit.hit_all); route limits and "
                f"the framework decorators take several (Rate.parse_many)")
        if m is None:
            raise ConfigurationError(f"cannot parse rate {text!r}: expected {_ACCEPTED}")
        limit_s, count_s, unit = m.groups()
        if unit == "M":
            raise ConfigurationError(
                f"rate {text!r}: 'M' could be minutes or months; write 'm' or 'minute' "
                f"for minutes, or use fastlimit.Quota(..., 'month') for a calendar month")
        unit = unit.lower()
        if unit in _CALENDAR:
            raise ConfigurationError(
                f"rate {text!r} names a calendar period: use fastlimit.Quota(limit, "
                f"'month') for a calendar month's allowance, or a rate over days for a "
                f"year, e.g. '{limit_s}/365d'")
        if unit not in _UNITS:
            raise ConfigurationError(
                f"cannot parse rate {text!r}: unknown unit {unit!r}; expected {_ACCEPTED}")
        count = int(count_s) if count_s is not None else 1
        if count == 0:
            raise ConfigurationError(f"rate {text!r} has an empty window")
        try:
            return cls(int(limit_s), count * _UNITS[unit] * NS_PER_S)
        except ConfigurationError as e:
            raise ConfigurationError(f"rate {text!r}: {e}") from None

    @classmethod
    def parse_many(cls, text: str | Rate | Iterable[str | Rate]) -> tuple[Rate, ...]:
        """Parse one rate or several: ``'10/second;1000/day'`` (separated by
        ``;``, ``,`` or ``|``, as the limits library accepts) or a list of
        rates.  A limit with several rates admits a hit only if every one
        of them does.

        Example:
            >>> [str(r) for r in Rate.parse_many("10/second; 1000/day")]
            ['10/1s', '1000/1d']

        Raises:
            ConfigurationError: naming the text and the accepted forms.
        """
        if isinstance(text, Rate):
            return (text,)
        if isinstance(text, str):
            parts: list[str | Rate] = [p for p in _SEPARATORS.split(text) if p.strip()]
        else:
            try:
                parts = list(text)
            except TypeError:
                raise ConfigurationError(
                    f"a rate must be a str like '100/1h' or '10/1s;1000/1d', or a list of "
                    f"them, got {text!r}") from None
        if not parts:
            raise ConfigurationError(f"expected at least one rate like '100/1h', got {text!r}")
        rates = tuple(cls.parse(p) for p in parts)
        if len(set(rates)) != len(rates):
            raise ConfigurationError(f"rates {text!r}: the same rate is given twice")
        return rates

    @property
    def period(self) -> float:
        """The period in seconds."""
        return self.period_ns / NS_PER_S

    @property
    def emission_interval_ns(self) -> int:
        """``T = ceil(period_ns / limit)``: the time one hit's worth refills in."""
        return -(-self.period_ns // self.limit)

    def __str__(self) -> str:
        seconds, rest = divmod(self.period_ns, NS_PER_S)
        if rest == 0:
            for suffix, size in (("d", 86400), ("h", 3600), ("m", 60)):
                if seconds % size == 0:
                    return f"{self.limit}/{seconds // size}{suffix}"
        return f"{self.limit}/{self.period_ns / NS_PER_S:g}s"
