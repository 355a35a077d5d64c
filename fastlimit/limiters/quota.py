"""Calendar quotas: N per day, week or month, counted exactly across
processes and kept across process, server and machine restarts."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Any, Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastlimit import _core
from fastlimit._core import Decision
from fastlimit.core.gcra import check_cost
from fastlimit.core.results import QuotaMode, Step
from fastlimit.errors import ConfigurationError
from fastlimit.limiters._counting import Meter
from fastlimit.limiters.limiter import Key
from fastlimit.limiters.rate import Rate
from fastlimit.stores.contract import QuotaCounts, require_sync
from fastlimit.stores.table import OnFull, SharedTable, state_dir

__all__ = ["Calendar", "CalendarWindow", "Quota", "QuotaBase", "QuotaReading", "QuotaSpec",
           "Usage", "Window", "state_dir"]

Unit = Literal["day", "week", "month"]
NS = 1_000_000_000
DEFAULT_QUOTA_CAPACITY = 65_536
_SPEC_RE = re.compile(r"^\s*(\d{1,30})\s*(?:/|\s+per\s+)\s*(?:1\s*)?([A-Za-z]+?)s?\s*$",
                      re.ASCII)
_UNITS: dict[str, Unit] = {"day": "day", "d": "day", "week": "week", "w": "week",
                           "month": "month", "mo": "month"}
_MONDAY = date(1969, 12, 29).toordinal()  # weeks are ISO weeks, Monday to Sunday
_EPOCH = date(1970, 1, 1).toordinal()


@dataclass(frozen=True, slots=True)
class QuotaSpec:
    """``limit`` per calendar ``unit``: ``QuotaSpec.parse("500/month")``."""

    limit: int
    unit: Unit

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int):
            raise ConfigurationError(f"a quota limit must be an int, got {self.limit!r}")
        if not 1 <= self.limit <= _core.QUOTA_MAX_COUNT:
            raise ConfigurationError(
                f"a quota limit must be between 1 and {_core.QUOTA_MAX_COUNT}, got {self.limit}")
        if self.unit not in ("day", "week", "month"):
            raise ConfigurationError(
                f"a quota period is 'day', 'week' or 'month', got {self.unit!r}")

    @classmethod
    def parse(cls, text: str | QuotaSpec) -> QuotaSpec:
        """Parse ``'500/month'``, ``'500 per month'``, ``'10/day'``, ``'70/week'``."""
        if isinstance(text, QuotaSpec):
            return text
        m = _SPEC_RE.match(text) if isinstance(text, str) else None
        if m is None or m.group(2).lower() not in _UNITS:
            raise ConfigurationError(
                f"cannot parse quota {text!r}: expected '<limit>/<period>' or '<limit> per "
                f"<period>' with period day, week or month, e.g. '500/month'")
        try:
            return cls(int(m.group(1)), _UNITS[m.group(2).lower()])
        except ConfigurationError as e:
            raise ConfigurationError(f"quota {text!r}: {e}") from None

    def __str__(self) -> str:
        return f"{self.limit}/{self.unit}"


class CalendarWindow(NamedTuple):
    """A quota's current calendar period, in place of a Rate: a quota
    refills all at once when its period ends (``Quota.window()``)."""

    period_ns: int


Window = Rate | CalendarWindow
"""What rate-limit headers describe a limit over: its rate, or a quota's period."""


class QuotaReading(NamedTuple):
    """A quota's answer and the one wall-clock reading it was made at
    (:meth:`Quota.decide`): what headers need, from one ``clock()`` call.

    A second reading for the headers' "now" would put the reset past the
    period's end by the time between the two reads (rounded up: a second
    past the month), or, across a boundary, describe the next period."""

    decision: Decision
    window: CalendarWindow  # the period the decision was counted in
    wall_ns: int            # pass it to HeaderStyle.render as wall_now_ns


@dataclass(frozen=True, slots=True)
class Usage:
    """A key's standing in the current period."""

    used: int
    remaining: int
    limit: int
    resets_at: datetime  # the start of the next period, in UTC


class Calendar:
    """Maps wall-clock epoch nanoseconds to calendar periods of a time zone."""

    def __init__(self, unit: Unit, tz: str | tzinfo = "UTC") -> None:
        self.unit = unit
        self.tz = _zone(tz)
        self._cached = (0, 0, -1)  # tag, start_ns, end_ns of the last period asked

    def period(self, now_ns: int) -> tuple[int, int, int]:
        """(tag, start_ns, end_ns) of the period holding ``now_ns``; tags
        count periods from 1970 and start at 1."""
        tag, start, end = self._cached
        if start <= now_ns < end:
            return self._cached
        local = datetime.fromtimestamp(now_ns // NS, self.tz).date()
        if self.unit == "day":
            first, after = local, local + timedelta(days=1)
            tag = local.toordinal() - _EPOCH + 1
        elif self.unit == "week":
            first = local - timedelta(days=local.weekday())
            after = first + timedelta(days=7)
            tag = (first.toordinal() - _MONDAY) // 7 + 1
        else:
            first = local.replace(day=1)
            after = date(first.year + first.month // 12, first.month % 12 + 1, 1)
            tag = (first.year - 1970) * 12 + first.month
        self._cached = (tag, self._midnight_ns(first), self._midnight_ns(after))
        return self._cached

    def _midnight_ns(self, day: date) -> int:
        return int(datetime(day.year, day.month, day.day, tzinfo=self.tz).timestamp()) * NS


class QuotaBase:
    """What every quota front end shares: the spec, the calendar and the
    clock.  :class:`Quota` adds the methods over a store; the asyncio quota
    (:class:`fastlimit.limiters.aio.AsyncQuota`) adds them as coroutines.
    The store answers each step (:mod:`fastlimit.core.quota`)."""

    def __init__(self, spec: str | QuotaSpec, *, name: str, tz: str | tzinfo,
                 clock: Callable[[], int] | None) -> None:
        self.spec = QuotaSpec.parse(spec)
        self.name = name
        self.calendar = Calendar(self.spec.unit, tz)
        self.clock = clock or time.time_ns

    @property
    def limit(self) -> int:
        return self.spec.limit

    @property
    def burst(self) -> int:
        """The most one hit can cost (as for a Limiter): the limit."""
        return self.spec.limit

    def window(self, now_ns: int | None = None) -> CalendarWindow:
        """The length of the period holding ``now_ns`` (default: the
        clock's now), which rate-limit headers use as their window (``w``)
        in place of a rate."""
        _, start, end = self.calendar.period(self.clock() if now_ns is None else now_ns)
        return CalendarWindow(end - start)

    @property
    def _what(self) -> str:
        return f"the quota of {self.limit} per {self.spec.unit}"

    def _check_cost(self, cost: int) -> int:
        return check_cost(cost, self.limit, self._what)

    def _now(self) -> tuple[int, int, int]:
        """(tag, end_ns, left_ns) of the current period."""
        now = self.clock()
        tag, _, end = self.calendar.period(now)
        return tag, end, end - now

    def _usage(self, used: int, end: int) -> Usage:
        return Usage(used, self.limit - used, self.limit,
                     datetime.fromtimestamp(end // NS, timezone.utc))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.spec} tz={self.calendar.tz}>"


class Quota(QuotaBase):
    """At most ``limit`` per calendar day, week or month for each key.

    Counts live in a file-backed table, so they survive restarts and
    redeploys, and every process that opens the same file counts against
    the same numbers exactly.  A new period starts at zero on its first use.
    With a :class:`~fastlimit.RedisBackend` as ``store`` the counts live in
    Redis instead and are exact across hosts (periods still follow this
    process's wall clock: hosts' clocks must agree, see the README).

    Args:
        spec: ``"500/month"``, ``"10/day"``, ``"70/week"`` or a QuotaSpec.
        path: the quota file; default ``state_dir()/quotas.tbl``.  Its
            directory is created if missing.  One file holds many quotas.
        store: a SharedTable of kind ``"quotas"``, or a RedisBackend, to use
            instead of ``path``.
        name: the quota's name in the file; quotas with different names
            never share counts.
        tz: the time zone whose midnights bound the periods (default UTC).
        clock: wall-clock epoch nanoseconds (default ``time.time_ns``).
        capacity: keys the file holds when it is created.
        on_full: what a hit gets when the store cannot answer (a full
            table; Redis down): ``"deny"``, ``"allow"`` or ``"raise"``;
            default the store's (on Redis: its ``fail`` policy).

    Example:
        >>> import tempfile, os
        >>> q = Quota("2/month", path=os.path.join(tempfile.mkdtemp(), "q.tbl"))
        >>> [q.allow("acct-1") for _ in range(3)]
        [True, True, False]
        >>> q.usage("acct-1").used
        2
    """

    def __init__(
        self,
        spec: str | QuotaSpec,
        *,
        path: str | os.PathLike[str] | None = None,
        store: SharedTable | Any = None,
        name: str = "quota",
        tz: str | tzinfo = "UTC",
        clock: Callable[[], int] | None = None,
        capacity: int = DEFAULT_QUOTA_CAPACITY,
        on_full: OnFull | None = None,
    ) -> None:
        super().__init__(spec, name=name, tz=tz, clock=clock)
        if store is None:
            file = os.fspath(path) if path is not None else os.path.join(state_dir(), "quotas.tbl")
            os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
            store = SharedTable.open(path=file, capacity=capacity, kind="quotas")
        require_sync(store, "Quota's methods are synchronous: on an asyncio store use "
                            "backend.quota(...), whose methods are coroutines")
        self.store = store
        self._counter: QuotaCounts = store.quota_counts(name, self.spec.limit, on_full=on_full)
        # the checks are compiled (limiters/_counting.pyx), bound on the
        # instance unless a subclass overrides them
        self._meter = Meter.of_quota(self, self._counter, self.calendar, self.clock, self._what)
        for method in ("hit", "peek", "allow"):
            if getattr(type(self), method) is getattr(Quota, method):
                setattr(self, method, getattr(self._meter, method))

    @property
    def clock(self) -> Callable[[], int]:
        """The wall clock (epoch ns) that says which period it is."""
        return self._clock

    @clock.setter
    def clock(self, clock: Callable[[], int]) -> None:
        self._clock = clock
        meter = getattr(self, "_meter", None)
        if meter is not None:
            meter.set_clock(clock)

    def hit(self, key: Key, cost: int = 1) -> Decision:
        """Count ``cost`` if it fits in the period; return the Decision.

        ``reset_after`` is the time to the period's end; a denied hit's
        ``retry_after`` is the same (a quota refills only then).  ``cost=0``
        answers as :meth:`peek`."""
        return self._meter.hit(key, cost)

    def allow(self, key: Key, cost: int = 1) -> bool:
        """:meth:`hit`, returning only whether it passed."""
        return self._meter.allow(key, cost)

    def peek(self, key: Key, cost: int = 1) -> Decision:
        """The Decision a hit of ``cost`` would get, counting nothing."""
        return self._meter.peek(key, cost)

    def decide(self, key: Key, cost: int = 1, *, consume: bool = True) -> QuotaReading:
        """:meth:`hit` (or :meth:`peek`, ``consume=False``) at one reading of
        the clock, returned with the period's window: render headers from
        these and the reset is the period's end exactly.

        Example:
            >>> import tempfile, os
            >>> from fastlimit import HeaderStyle
            >>> june = 1_780_272_000 * 10**9  # 2026-06-01T00:00:00Z
            >>> q = Quota("3/month", path=os.path.join(tempfile.mkdtemp(), "q.tbl"),
            ...           clock=lambda: june - 1)
            >>> r = q.decide("acct-1")
            >>> HeaderStyle(reset="iso").render(r.decision, name=q.name, rate=r.window,
            ...                                 wall_now_ns=r.wall_ns)[2]
            ('X-RateLimit-Reset', '2026-06-01T00:00:00.000Z')
        """
        now = self.clock()
        # a meter reading this one time, not the quota's clock: its answer
        # and the window below are of the same instant
        meter = Meter.of_quota(self, self._counter, self.calendar, lambda: now, self._what)
        decision = meter.hit(key, cost) if consume else meter.peek(key, cost)
        return QuotaReading(decision, self.window(now), now)

    def refund(self, key: Key, cost: int = 1) -> bool:
        """Give back ``cost`` counted in the current period (never below 0)."""
        cost = self._check_cost(cost)
        tag, _, left = self._now()
        result, _ = self._counter.step(key, tag, cost, QuotaMode.REFUND, left)
        return result == Step.ALLOWED

    def usage(self, key: Key) -> Usage:
        """Used and remaining in the current period, and when it resets."""
        tag, end, left = self._now()
        _, used = self._counter.step(key, tag, 0, QuotaMode.PEEK, left)
        return self._usage(used, end)

    def reset(self, key: Key) -> None:
        """Forget ``key``'s count."""
        self._counter.reset(key)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.spec, self.store, self.name, self.calendar.tz, self.clock))


def _rebuild(spec: QuotaSpec, store: Any, name: str, tz: tzinfo, clock: Any) -> Quota:
    return Quota(spec, store=store, name=name, tz=tz, clock=clock)


def _zone(tz: str | tzinfo) -> tzinfo:
    if not isinstance(tz, str):
        return tz
    if tz.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(f"unknown time zone {tz!r} (expected an IANA name "
                                 f"like 'Europe/Paris', or 'UTC')") from None
