# cython: language_level=3
"""Fleet mode's hot path, compiled: a check served from (or denied by) a
lease this process has seen live on its host.

:class:`LeaseFront` is the base of :class:`fastlimit.stores.fleet.FleetGcra`:
its ``allow`` and ``hit`` are what a Limiter binds, so a check of a key with
a live lease is one C call (a dict lookup, one clock reading, one step of
the balance's GCRA on a kept fingerprint) with no Python frame and, for
``allow``, no Decision object.  Anything else (no note of the key, a lease
past its end, a spent balance the global bucket may refill, a cost outside
``[1, lease]``) goes to the subclass's ``_check``, the slow path in
fleet.py, which holds the lease protocol and its proofs.
"""

cimport cython
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact
from libc.stdint cimport int64_t, uint64_t

from fastlimit._core cimport Decision, Gcra, decision_of, fl_answer

cdef object _ONE = 1

cdef enum:
    # what a lease answers for a check, besides a balance >= 0
    KNOWN_EMPTY = -1  # spent, and the global bucket known empty until denied_until_ns
    SLOW = -2         # the slow path decides


@cython.final
cdef class Held:
    """This process's note of a key whose lease it found live on its host.

    ``end_ns``: the lease's end on the fleet's clock, never later than its
    lease clock says; ``balance``: the table key of the lease's balance,
    ``fp`` its fingerprint; ``kb``: the key's table key; ``denied_until_ns``:
    until when this process denies a spent lease with no table call (the
    global bucket was found empty); ``full_at_ns``: when the global bucket,
    as last seen, is fully replenished."""

    cdef readonly int64_t end_ns
    cdef readonly bytes balance
    cdef readonly bytes kb
    cdef readonly uint64_t fp
    cdef public int64_t denied_until_ns
    cdef public int64_t full_at_ns

    def __init__(self, int64_t end_ns, bytes balance not None, bytes kb not None, uint64_t fp):
        self.end_ns = end_ns
        self.balance = balance
        self.kb = kb
        self.fp = fp
        self.denied_until_ns = 0
        self.full_at_ns = 0


cdef class LeaseFront:
    """The checks a live lease answers: ``allow`` and ``hit`` (cost in
    ``[1, lease]``); the subclass sets the fields and provides ``_check``."""

    cdef public dict _hot      # key -> Held, this process's leased keys
    cdef public Gcra _bal      # the lease balances (remaining = units)
    cdef public Gcra _view     # the global bucket, as last seen
    cdef public int64_t _valid  # a balance reading this much or more was never filled
    cdef public int64_t burst
    cdef public int64_t lease

    cdef int64_t _step(self, Held e, object cost, int64_t* now) except -3:
        """The lease's answer: the balance after the hit (served), KNOWN_EMPTY
        or SLOW.  One clock reading serves the lease's end and the balance's
        step: a check that waits between them is stepped at the earlier
        time, which never finds more units in a balance than the later
        one would (a balance only gains units as time passes)."""
        cdef int overflow = 0
        cdef long long n
        cdef int64_t left
        if cost is _ONE:
            n = 1
        elif PyLong_CheckExact(cost):
            n = PyLong_AsLongLongAndOverflow(cost, &overflow)
            if overflow or not 1 <= n <= self.lease:
                return SLOW
        else:
            return SLOW
        now[0] = self._bal.now_ns()
        if now[0] >= e.end_ns:
            return SLOW
        left = self._bal.take_at(e.balance, e.fp, now[0], n)
        if left >= 0:
            return left if left < self._valid else SLOW
        return KNOWN_EMPTY if now[0] < e.denied_until_ns else SLOW

    def allow(self, key, cost=1):
        """Count a hit of ``cost`` on ``key`` if it passes; return whether it did."""
        return self._allow(key, cost)

    def _allow_each(self, list keys not None, cost):
        """:meth:`allow` of each key in turn: a bytearray of 0/1 (hit_many's
        loop, with no Python call for the keys a live lease answers)."""
        cdef Py_ssize_t i, n = len(keys)
        cdef bytearray out = bytearray(n)
        for i in range(n):
            out[i] = self._allow(keys[i], cost)
        return out

    cdef bint _allow(self, key, object cost) except -1:
        cdef int64_t now, r
        cdef object e = self._hot.get(key)
        if e is not None:
            r = self._step(<Held?>e, cost, &now)
            if r >= 0:
                return True
            if r == KNOWN_EMPTY:
                return False
        return self._check(key, cost).allowed

    def hit(self, key, cost=1):
        """Count a hit of ``cost`` on ``key`` if it passes; return the Decision."""
        cdef int64_t now, r
        cdef fl_answer a
        cdef Held h
        cdef object e = self._hot.get(key)
        if e is not None:
            h = <Held?>e
            r = self._step(h, cost, &now)
            if r >= 0:
                return self._serve(h.kb, r)
            if r == KNOWN_EMPTY:
                a.allowed = False
                a.limit = self.burst
                a.remaining = 0
                a.reset_after_ns = h.full_at_ns - now if h.full_at_ns > now else 0
                a.retry_after_ns = h.denied_until_ns - now
                return decision_of(&a)
        return self._check(key, cost)

    def _served(self, bytes kb not None, int64_t balance):
        """An allowed check served from the lease: the host's balance after
        it plus what its view of the global bucket has free."""
        return self._serve(kb, balance)

    cdef Decision _serve(self, bytes kb, int64_t balance):
        cdef fl_answer v
        self._view.check(kb, _ONE, False, &v)
        v.allowed = True
        v.limit = self.burst
        v.remaining = min(self.burst, max(0, balance) + v.remaining)
        v.retry_after_ns = 0
        return decision_of(&v)

    def _check(self, key, cost):
        raise NotImplementedError  # the subclass's slow path
