# cython: language_level=3
"""Counting one request under several limits, compiled.

The one loop behind :func:`fastlimit.hit_all` and :func:`fastlimit.peek_all`,
a :class:`~fastlimit.Quota`'s checks and every policy decision: a request
passes only if every enforced limit allows it, and a denied request
consumes nothing (the hits already counted are given back).  A limit is a
:class:`Meter`; limits on the shared table are counted in C, without a
Python call or a Decision object; any other store's (Redis) through its
state object's methods.
"""

cimport cython
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.object cimport PyObject_IsTrue
from libc.stdint cimport int64_t
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec

from fastlimit._core cimport Decision, Gcra, QuotaCounter, decision_of, fl_answer

import logging
import time

from fastlimit.core.gcra import check_cost
from fastlimit.errors import CapacityError

log = logging.getLogger("fastlimit")

cdef object _ONE = 1
cdef object _time_ns = time.time_ns

cdef enum:
    Q_PEEK = 0
    Q_CONSUME = 1


cdef int64_t wall_now(object clock) except? -1:
    """A wall clock's reading in ns: CLOCK_REALTIME in C for ``None`` (or
    ``time.time_ns``), else the clock's (an int)."""
    cdef timespec ts
    if clock is None or clock is _time_ns:
        clock_gettime(CLOCK_REALTIME, &ts)
        return <int64_t>ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    t = clock()
    if type(t) is not int:
        raise TypeError(f"a wall clock must return int nanoseconds, got {t!r}")
    return t


cdef inline void _copy(Decision d, fl_answer* out) noexcept:
    out.allowed = d.allowed
    out.limit = d.limit
    out.remaining = d.remaining
    out.reset_after_ns = d.reset_after_ns
    out.retry_after_ns = d.retry_after_ns


@cython.final
cdef class Meter:
    """One limit as counting sees it.  :meth:`of_rate` and :meth:`of_quota`
    make the meters of limiters and quotas (their ``_meter``); any other
    object with ``burst``, ``hit``, ``peek``, ``refund`` and ``window`` is
    counted through those (``Meter(obj)``)."""

    def __init__(self, limit):
        self.limit = limit
        self.kind = KIND_OTHER
        self._set_burst(limit.burst)

    cdef _set_burst(self, burst):
        self.burst = burst
        self.burst_c = burst if type(burst) is int and 0 <= burst < 2**62 else -1

    @staticmethod
    def of_rate(limiter, state, rate):
        """The meter of ``limiter``, whose GCRA is ``state`` at ``rate``."""
        cdef Meter m = Meter.__new__(Meter)
        m.limit = limiter
        m.kind = KIND_RATE
        m.state = state
        m.gcra = state if type(state) is Gcra else None
        m._set_burst(limiter.burst)
        m.rate_window.emission_interval_ns = rate.emission_interval_ns
        m.rate_window.limit = rate.limit
        m.rate_window.period_ns = rate.period_ns
        m.rate_window.calendar = False
        return m

    @staticmethod
    def of_quota(quota, counts, calendar, clock, what):
        """The meter of ``quota``: ``counts`` (a store's QuotaCounts) per
        period of ``calendar``, on wall ``clock``; ``what`` names the limit
        in the error for a cost above it ("the quota of 5 per day")."""
        cdef Meter m = Meter.__new__(Meter)
        m.limit = quota
        m.kind = KIND_QUOTA
        m.state = counts
        m.counter = counts if type(counts) is QuotaCounter else None
        m.calendar = calendar
        m.clock = None if clock is _time_ns else clock
        m.what = what
        m.end = -1
        m._set_burst(quota.limit)
        return m

    # -- Python calls (Quota binds these) --------------------------------------------

    def hit(self, key, cost=1):
        """Count a hit of ``cost`` if it passes; the Decision."""
        cdef fl_answer a
        self.check(key, cost, True, -1, &a)
        return decision_of(&a)

    def peek(self, key, cost=1):
        """The Decision a hit of ``cost`` would get now, counting nothing."""
        cdef fl_answer a
        self.check(key, cost, False, -1, &a)
        return decision_of(&a)

    def allow(self, key, cost=1):
        """:meth:`hit`, returning only whether it passed."""
        cdef fl_answer a
        self.check(key, cost, True, -1, &a)
        return a.allowed

    # -- C calls -------------------------------------------------------------------

    cdef int64_t wall(self) except? -1:
        return wall_now(self.clock)

    cdef int _period(self, int64_t now) except -1:
        if not self.start <= now < self.end:
            self.tag, self.start, self.end = self.calendar.period(now)
        return 0

    cdef int check(self, key, object cost, bint consume, int64_t wall_ns,
                   fl_answer* out) except -1:
        """A hit (``consume``) or a peek into ``out``; a quota counts at
        ``wall_ns`` (its own clock's time when -1)."""
        cdef int64_t n
        cdef int mode
        if self.kind == KIND_RATE:
            if self.gcra is not None:
                return self.gcra.check(key, cost, consume, out)
            _copy(self.state.hit(key, cost) if consume else self.state.peek(key, cost), out)
            return 0
        if self.kind == KIND_QUOTA:
            n = 1 if cost is _ONE else check_cost(cost, self.burst, self.what)
            if n == 0 and consume:  # a hit of 0 answers as a peek of 1
                consume = False
                n = 1
            if wall_ns < 0:
                wall_ns = self.wall()
            self._period(wall_ns)
            mode = Q_CONSUME if consume else Q_PEEK
            if self.counter is not None:
                return self.counter.count(key, self.tag, n, mode, self.end - wall_ns, out)
            _copy(self.state.answer(key, self.tag, n, mode, self.end - wall_ns), out)
            return 0
        _copy(self.limit.hit(key, cost) if consume else self.limit.peek(key, cost), out)
        return 0

    cdef int give_back(self, key, object cost) except -1:
        """Refund a hit of ``cost``: 1 if there was state to give it back to."""
        if self.gcra is not None:
            return self.gcra.give_back(key, cost)
        if self.kind == KIND_RATE:
            return 1 if self.state.refund(key, cost) else 0
        return 1 if self.limit.refund(key, cost) else 0

    cdef int window_at(self, int64_t wall_ns, Window* w) except -1:
        """What header fields need of the window, at ``wall_ns``."""
        if self.kind == KIND_RATE:
            w[0] = self.rate_window
            return 0
        if self.kind == KIND_QUOTA:
            self._period(wall_ns)
            w.calendar = True
            w.period_ns = self.end - self.start
            w.emission_interval_ns = w.limit = 0
            return 0
        window = self.limit.window()
        w.period_ns = window.period_ns
        w.calendar = not hasattr(window, "emission_interval_ns")
        w.emission_interval_ns = 0 if w.calendar else window.emission_interval_ns
        w.limit = 0 if w.calendar else window.limit
        return 0

    def window(self):
        return self.limit.window()

    def set_clock(self, clock):
        """A quota's wall clock, when its owner changes it."""
        self.clock = None if clock is _time_ns else clock
        self.end = -1

    def __repr__(self):
        return f"<Meter of {self.limit!r}>"


cdef inline int _over(object cost, Meter m) except -1:
    """Whether ``cost`` exceeds ``m``'s burst (a negative cost does not: the
    meter then says what is wrong with it)."""
    cdef int overflow = 0
    cdef long long n
    if type(cost) is int and m.burst_c >= 0:
        n = PyLong_AsLongLongAndOverflow(cost, &overflow)
        if overflow:
            return overflow > 0
        return n > m.burst_c
    return 1 if cost > m.burst else 0


@cython.freelist(64)
@cython.final
@cython.no_gc  # it refers to a meter, a key and a name: never back to itself
cdef class Hit:
    """One limit applied to one key in one request, and what it answered."""

    def __init__(self, Meter meter, key, name, bint shadow=False):
        self.meter = meter
        self.key = key
        self.name = name
        self.shadow = shadow

    cdef Decision decision(self):
        return decision_of(&self.a) if self.done else None

    def result(self):
        """Its Decision, or None (above a shadow's burst, or not reached)."""
        return self.decision()


cdef Hit new_hit(Meter meter, key, name, bint shadow):
    """``Hit(meter, key, name, shadow)`` without the call's argument parsing."""
    cdef Hit h = Hit.__new__(Hit)
    h.meter = meter
    h.key = key
    h.name = name
    h.shadow = shadow
    return h


cdef Meter with_state(Meter m, object state):
    """``m`` counting in ``state`` (a store's state of the same limit)
    instead: what a policy counts with when its store answers by its
    failure policy."""
    cdef Meter w = Meter.__new__(Meter)
    w.limit, w.burst, w.burst_c, w.kind = m.limit, m.burst, m.burst_c, m.kind
    w.state = state
    w.calendar, w.clock, w.what = m.calendar, m.clock, m.what
    w.end = -1
    w.rate_window = m.rate_window
    return w


cdef void copy_answer(Decision d, fl_answer* out) noexcept:
    _copy(d, out)


cdef int over(object cost, Meter m) except -1:
    return _over(cost, m)


cdef capacity(tuple hits, object cost):
    _capacity(hits, cost)


cdef _capacity(tuple hits, object cost):
    cdef Hit h
    for h in hits:
        if not h.shadow and _over(cost, h.meter):
            raise CapacityError(
                f"cost {cost} exceeds the burst of {h.meter.burst} of limit {h.name!r}: "
                f"it can never pass")


cdef _give_back(tuple hits, object cost):
    cdef Hit h
    for h in hits:
        if h.counted:
            h.counted = False
            try:
                h.meter.give_back(h.key, cost)
            except Exception as e:  # one stuck key must not keep the others' hits
                log.error("fastlimit: could not refund limit %r: %s", h.name, e)


cdef int count_one(Hit h, object cost, bint consume, int64_t wall_ns) except -2:
    """:func:`count` of one hit: 0 if it denied, -1 if not."""
    if _over(cost, h.meter):
        if not h.shadow:
            _capacity((h,), cost)
        h.shadow_denied = True
        return -1
    if h.meter.gcra is not None:  # the usual one: a rate on the shared table
        h.meter.gcra.check(h.key, cost, consume, &h.a)
    else:
        h.full = h.meter.check(h.key, cost, consume, wall_ns, &h.a) == 1
    h.done = True
    if h.a.allowed:
        return -1
    if h.shadow:
        h.shadow_denied = True
        return -1
    return 0


cdef int count(tuple hits, object cost, bint consume, int64_t wall_ns) except -2:
    """Hit (``consume``) or peek every hit with ``cost``, in order; the index
    of the enforced one that denied, or -1.

    Consuming, all must allow or none is counted: when one denies, the hits
    counted before it are given back and the ones after it are peeked (the
    answer says when the request as a whole could pass).  Shadow limits
    are answered but never deny; one whose burst ``cost`` exceeds is not
    asked.  Between a hit and its refund another process may find a key
    one hit fuller than it ends up: denied spuriously, never admitted beyond
    a limit (a peek first would not help: it is stale when it returns).

    Raises:
        CapacityError: ``cost`` exceeds an enforced limit's burst (it could
            never pass); nothing is counted.
    """
    cdef Hit h
    cdef Py_ssize_t i, j, n = len(hits)
    cdef int denied = -1
    if n == 1:
        return count_one(<Hit>hits[0], cost, consume, wall_ns)
    _capacity(hits, cost)
    if not consume:
        for i in range(n):
            h = hits[i]
            if not _over(cost, h.meter):
                h.full = h.meter.check(h.key, cost, False, wall_ns, &h.a) == 1
                h.done = True
            if not h.done or not h.a.allowed:
                if h.shadow:
                    h.shadow_denied = True
                elif denied < 0:
                    denied = i
        return denied
    nonzero = PyObject_IsTrue(cost)
    try:
        for i in range(n):
            h = hits[i]
            if _over(cost, h.meter):  # a shadow limit: enforced ones were refused above
                h.shadow_denied = True
                continue
            h.full = h.meter.check(h.key, cost, True, wall_ns, &h.a) == 1
            h.done = True
            if h.a.allowed:
                h.counted = nonzero
            elif h.shadow:
                h.shadow_denied = True
            else:
                denied = i
                break
    except BaseException:
        _give_back(hits, cost)
        raise
    if denied >= 0:
        _give_back(hits, cost)
        for j in range(denied + 1, n):
            h = hits[j]
            if not _over(cost, h.meter):
                h.meter.check(h.key, cost, False, wall_ns, &h.a)
                h.done = True
    return denied


cdef object _UNSET = object()


cdef int64_t _one_wall(tuple hits) except? -2:
    """The time every quota of ``hits`` counts at, read once when they
    share a wall clock (one request is in one period of each calendar:
    two readings could straddle a boundary); -1 when none is a quota or
    their clocks differ (each reads its own)."""
    cdef Hit h
    clock = _UNSET
    for h in hits:
        if h.meter.kind == KIND_QUOTA:
            if clock is _UNSET:
                clock = h.meter.clock
            elif h.meter.clock is not clock:
                return -1
    return -1 if clock is _UNSET else wall_now(clock)


def count_all(hits, cost=1, bint consume=True):
    """:func:`count` for Python callers (``fastlimit.hit_all``, ``peek_all``)."""
    cdef tuple found = tuple(hits)
    return count(found, cost, consume, _one_wall(found))
