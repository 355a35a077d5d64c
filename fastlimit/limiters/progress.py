"""Progress of long waits: a periodic log line while a limiter holds work back.

A batch job throttled to a partner API's 30/min can sit still for minutes;
these lines say which limit is holding it, how long it has waited and will
wait, and at what rate, so nobody mistakes throttling for a hang.  Off by
default: pass ``progress=`` to a :class:`~fastlimit.Limiter`.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Protocol

from fastlimit.errors import ConfigurationError
from fastlimit.limiters.rate import NS_PER_S

if TYPE_CHECKING:
    from fastlimit.limiters.limiter import Key, Limiter

__all__ = ["WaitLog", "WaitReporter", "make_reporter"]


class WaitReporter(Protocol):
    """What a Limiter tells about its waits (implement it for a progress bar).

    ``report`` is called when a wait starts (``now_ns == started_ns``) and
    again at the time it returns, until the wait ends; times are on the
    limiter's clock.  It returns when it next wants to be called.
    """

    def report(self, limiter: Limiter, key: Key, started_ns: int, now_ns: int,
               until_ns: int) -> int: ...


class WaitLog:
    """Log a line at most every ``every`` seconds while waits hold work back.

    Each line names the limiter and key, how long the current wait has lasted
    and how long it has left, the rate that imposes it, and how many waits
    (and how much time) held work back since the previous line.  A wait longer
    than ``every`` gets a line every ``every`` seconds while it lasts.  Lines
    go to ``logger`` (default ``"fastlimit"``) at ``level`` (INFO), with the
    numbers also as record attributes (``limiter``, ``key``, ``waited_s``,
    ``left_s``, ``rate``) for structured logging.

    Args:
        every: seconds between lines, > 0.
        logger: a :class:`logging.Logger` or its name.
        level: the lines' logging level.

    Example:
        >>> import fastlimit
        >>> clock = fastlimit.FakeClock()
        >>> api = fastlimit.Limiter("30/1m", clock=clock, progress=WaitLog(every=60))
        >>> api.progress
        WaitLog(every=60.0, logger='fastlimit', level=20)
    """

    def __init__(self, every: float = 10.0, *, logger: logging.Logger | str = "fastlimit",
                 level: int = logging.INFO) -> None:
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not every > 0:
            raise ConfigurationError(f"every must be a number of seconds > 0, got {every!r}")
        if not isinstance(level, int) or isinstance(level, bool):
            raise ConfigurationError(f"level must be a logging level (an int), got {level!r}")
        self.every = float(every)
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.level = level
        self._every_ns = round(self.every * NS_PER_S)
        self._lock = threading.Lock()
        self._last_ns: int | None = None
        self._waits = 0
        self._held_ns = 0

    def report(self, limiter: Limiter, key: Key, started_ns: int, now_ns: int,
               until_ns: int) -> int:
        with self._lock:
            if now_ns == started_ns:
                self._waits += 1
                self._held_ns += until_ns - started_ns
            if self._last_ns is not None and now_ns - self._last_ns < self._every_ns:
                return self._last_ns + self._every_ns
            waits, held, first = self._waits, self._held_ns, self._last_ns is None
            self._last_ns, self._waits, self._held_ns = now_ns, 0, 0
        waited, left = (now_ns - started_ns) / NS_PER_S, (until_ns - now_ns) / NS_PER_S
        tail = "" if first else f"; {waits} waits held work back {held / NS_PER_S:.1f} s " \
                                f"since the previous line"
        self.logger.log(
            self.level,
            "limiter %r key %r is holding work back: waited %.1f s, %.1f s to go "
            "(rate %s, burst %d)%s",
            limiter.name, key, waited, left, limiter.rate, limiter.burst, tail,
            extra={"limiter": limiter.name, "key": key, "waited_s": waited, "left_s": left,
                   "rate": str(limiter.rate)})
        return now_ns + self._every_ns

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.every, self.logger.name, self.level))

    def __repr__(self) -> str:
        return f"WaitLog(every={self.every}, logger={self.logger.name!r}, level={self.level})"


def _rebuild(every: float, logger: str, level: int) -> WaitLog:
    return WaitLog(every, logger=logger, level=level)


def make_reporter(progress: Any) -> WaitReporter | None:
    """``progress=`` of a Limiter: None (off), seconds between log lines, or
    a reporter (a :class:`WaitLog` or anything with its ``report`` method)."""
    if progress is None or progress is False:
        return None
    if isinstance(progress, (int, float)) and not isinstance(progress, bool):
        return WaitLog(every=progress)
    if callable(getattr(progress, "report", None)):
        return progress  # type: ignore[no-any-return]
    raise ConfigurationError(
        f"progress must be None, seconds between log lines (a number > 0) or an object "
        f"with a report() method such as fastlimit.WaitLog, got {progress!r}")
