# GCRA over the slots: the step on one slot, single checks, bookings, the
# batch loop, and the Gcra class that Limiter binds (fastlimit/core/gcra.py
# states the arithmetic; tests check this file against it).  Included by
# fastlimit/_core.pyx.

cdef inline int _update(fl_slot* s, uint64_t fp, int64_t t, int64_t now, int64_t inc,
                        int64_t tau, bint consume, int64_t* tat_out) noexcept nogil:
    """The GCRA step on slot ``s``, whose tat ``t`` was read while fp owned
    it: R_ALLOWED / R_DENIED, or RETRY if the slot changed hands."""
    cdef int64_t new_tat
    while True:
        new_tat = (t if t > now else now) + inc
        if new_tat - now > tau:
            tat_out[0] = t
            return R_DENIED
        if not consume:
            tat_out[0] = t
            return R_ALLOWED
        if fl_cas_i64(&s.tat, &t, new_tat):
            tat_out[0] = new_tat
            return R_ALLOWED
        # lost a race: go again on the fresh value if fp still owns the slot
        if t < 0 or fl_load_u64(&s.fp) != fp:
            return RETRY


cdef extern from *:
    """
    /* Which of the 4 slots of a bucket's first line hold fp, as a bit mask:
       branch-free, since where a key sits is random and a branch per slot
       would mispredict about every other probe. */
    static inline unsigned fl_line_mask(const uint64_t *fps, uint64_t fp) {
        unsigned m = 0;
        for (int i = 0; i < 4; i++)
            m |= (unsigned)(__atomic_load_n(fps + 2 * i, __ATOMIC_ACQUIRE) == fp) << i;
        return m;
    }
    """
    unsigned fl_line_mask(const uint64_t*, uint64_t) nogil
    int __builtin_ctz(unsigned) nogil


cdef inline fl_slot* _probe(fl_slot* b1, fl_slot* b2, uint64_t fp) noexcept nogil:
    """fp's slot if it is in the first line of either bucket, else NULL.
    The second bucket is read only if the first misses: a single call need
    not wait for its line."""
    cdef unsigned m = fl_line_mask(&b1.fp, fp)
    if m:
        return b1 + __builtin_ctz(m)
    m = fl_line_mask(&b2.fp, fp)
    if m:
        return b2 + __builtin_ctz(m)
    return NULL


cdef inline int _gcra_known(fl_slot* b1, fl_slot* b2, uint64_t fp, int64_t now, int64_t inc,
                            int64_t tau, bint consume, int64_t* tat_out) noexcept nogil:
    """The fast path, small enough to inline into batch loops: a known key
    in the first line of a bucket, no claim in flight.  RETRY otherwise."""
    cdef fl_slot* s = _probe(b1, b2, fp)
    cdef int64_t t
    if s != NULL:
        t = fl_load_i64(&s.tat)
        if t >= 0 and fl_load_u64(&s.fp) == fp:
            return _update(s, fp, t, now, inc, tau, consume, tat_out)
    return RETRY


cdef int gcra(Engine* e, uint64_t fp, int64_t now, int64_t inc, int64_t tau,
              bint consume, int64_t* tat_out) noexcept nogil:
    """One GCRA step for fingerprint ``fp`` at ``now`` with increment ``inc``
    (cost x emission interval).  Stores the new tat only when ``consume`` and
    allowed.  Returns R_ALLOWED or R_DENIED with the key's tat after the step
    in ``tat_out`` (``now`` for a key with no state), or R_FULL / R_TIMEOUT.
    """
    cdef fl_slot* b1 = _bucket1(e, fp)
    cdef fl_slot* b2 = _bucket2(e, fp)
    fl_prefetch_w(b2)  # let the second bucket's miss overlap the first's
    cdef int r = _gcra_known(b1, b2, fp, now, inc, tau, consume, tat_out)
    if r != RETRY:
        return r
    return _gcra_slow(e, fp, b1, b2, now, inc, tau, consume, tat_out)


cdef int _gcra_slow(Engine* e, uint64_t fp, fl_slot* b1, fl_slot* b2, int64_t now,
                    int64_t inc, int64_t tau, bint consume, int64_t* tat_out) noexcept nogil:
    """Everything else: keys further in, new keys (claims), claims in flight."""
    cdef fl_slot* s = NULL
    cdef int64_t t = 0
    cdef int r
    while True:
        r = _find(e, fp, b1, b2, &s, &t)
        if r == FOUND:
            r = _update(s, fp, t, now, inc, tau, consume, tat_out)
            if r != RETRY:
                return r
            continue
        if r == ABSENT:
            if inc > tau:
                tat_out[0] = now
                return R_DENIED
            if not consume:
                tat_out[0] = now
                return R_ALLOWED
            r = _claim(e, fp, b1, b2, now, now + inc)
            if r == FOUND:
                tat_out[0] = now + inc
                return R_ALLOWED
        if r == RETRY:
            continue
        if r == R_FULL:
            fl_add_u64(&e.counters[C_FULL], 1)
        return r


# -- reservations: waiting in turn ----------------------------------------------
#
# A waiter books its hit at the earliest time it conforms instead of retrying:
# tat moves on by the cost at once, as if the hit were admitted at its slot
# max(now, tat + inc - tau), and the waiter sleeps until then.  Waiters are
# served in booking order (no thundering herd of retries), and every booked
# slot conforms to GCRA, so admissions stay within the limit in every window.
# The same CAS loop also lets a client raise tat to what a server reported.

cdef int _book(Engine* e, uint64_t fp, int64_t now, int64_t floor, int64_t inc, int64_t tau,
               int64_t max_wait, int64_t* tat_out) noexcept nogil:
    """Set fp's tat to ``max(tat, floor) + inc`` unless that makes the wait
    ``new_tat - tau - now`` exceed ``max_wait`` (``max_wait < 0``: no bound).
    R_ALLOWED (``tat_out``: tat after) or R_DENIED (``tat_out``: tat as is),
    or R_FULL / R_TIMEOUT.  A key with no state counts as ``tat = now``."""
    cdef fl_slot* b1 = _bucket1(e, fp)
    cdef fl_slot* b2 = _bucket2(e, fp)
    cdef fl_slot* s = NULL
    cdef int64_t t = 0, new_tat
    cdef int r
    while True:
        r = _find(e, fp, b1, b2, &s, &t)
        if r == FOUND:
            while True:
                new_tat = (t if t > floor else floor) + inc
                if max_wait >= 0 and new_tat - tau - now > max_wait:
                    tat_out[0] = t
                    return R_DENIED
                if new_tat == t:
                    tat_out[0] = t
                    return R_ALLOWED
                if fl_cas_i64(&s.tat, &t, new_tat):
                    tat_out[0] = new_tat
                    return R_ALLOWED
                if t < 0 or fl_load_u64(&s.fp) != fp:
                    break
            continue
        if r == ABSENT:
            new_tat = (now if now > floor else floor) + inc
            if max_wait >= 0 and new_tat - tau - now > max_wait:
                tat_out[0] = now
                return R_DENIED
            if new_tat <= now:  # fresh either way: nothing to store
                tat_out[0] = now
                return R_ALLOWED
            r = _claim(e, fp, b1, b2, now, new_tat)
            if r == FOUND:
                tat_out[0] = new_tat
                return R_ALLOWED
        if r == RETRY:
            continue
        if r == R_FULL:
            fl_add_u64(&e.counters[C_FULL], 1)
        return r


cdef class Decision:
    """The answer to one check.

    Attributes:
        allowed: whether the hit passed (and was counted).
        limit: the burst: the most hits the key can make at once.
        remaining: hits of cost 1 that would pass right now, in ``[0, limit]``.
        reset_after: seconds until the key is fully replenished.
        retry_after: seconds until the same hit would pass; 0 when allowed,
            always > 0 when denied.

    ``reset_after_ns`` and ``retry_after_ns`` give the same as integers.
    A Decision is truthy when allowed.
    """

    # the fields are declared in _core.pxd: the compiled middleware reads them

    def __init__(self, bint allowed, int64_t limit, int64_t remaining,
                 int64_t reset_after_ns=0, int64_t retry_after_ns=0):
        self.allowed = allowed
        self.limit = limit
        self.remaining = remaining
        self.reset_after_ns = reset_after_ns
        self.retry_after_ns = retry_after_ns

    @property
    def reset_after(self):
        return self.reset_after_ns / 1e9

    @property
    def retry_after(self):
        return self.retry_after_ns / 1e9

    def __bool__(self):
        return self.allowed

    def _key(self):
        return (self.allowed, self.limit, self.remaining, self.reset_after_ns,
                self.retry_after_ns)

    def __eq__(self, other):
        if not isinstance(other, Decision):
            return NotImplemented
        return self._key() == (<Decision>other)._key()

    def __hash__(self):
        return hash(self._key())

    def __reduce__(self):
        return (Decision, self._key())

    def __repr__(self):
        return (f"Decision(allowed={bool(self.allowed)}, limit={self.limit}, "
                f"remaining={self.remaining}, reset_after={self.reset_after:g}, "
                f"retry_after={self.retry_after:g})")


cdef int64_t next_unit(int64_t limit, int64_t reset_after_ns,
                       int64_t emission_interval_ns) noexcept nogil:
    """fastlimit.core.gcra.next_unit_ns, in C (header fields use it)."""
    cdef int64_t free, units
    if reset_after_ns <= 0:
        return 0
    free = limit * emission_interval_ns - reset_after_ns
    units = free // emission_interval_ns if free > 0 else 0
    return (units + 1) * emission_interval_ns - free


def next_unit_ns(int64_t limit, int64_t reset_after_ns, int64_t emission_interval_ns):
    """The C next-unit time (tests compare it with fastlimit.core.gcra)."""
    return next_unit(limit, reset_after_ns, emission_interval_ns)


cdef Decision decision_of(const fl_answer* a):
    """A Decision holding ``a``."""
    cdef Decision d = Decision.__new__(Decision)
    d.allowed = a.allowed
    d.limit = a.limit
    d.remaining = a.remaining
    d.reset_after_ns = a.reset_after_ns
    d.retry_after_ns = a.retry_after_ns
    return d


cdef object _ONE = 1


cdef object _index_cost(object cost):
    try:
        return operator.index(cost)
    except TypeError:
        raise TypeError(f"cost must be an int, got {cost!r}") from None


cdef int64_t _clock_ns(object clock) except? -1:
    """An injected clock's reading, refused unless it is an int in
    [0, MAX_CLOCK_NS]: a float would be truncated, and a negative or huge
    time would make a stored tat look like a lock word."""
    cdef object t = clock()
    if not PyLong_Check(t):
        raise TypeError(f"clock must return int nanoseconds, got {t!r}")
    if not 0 <= t <= MAX_CLOCK_NS:
        raise ValueError(f"clock returned {t} ns: expected a time in [0, 2**62] ns")
    return t


@cython.final  # its cdef methods are then direct calls, inlined into the hot path
cdef class Gcra(_Keyed):
    """GCRA for every key of one named limiter over one TableView.

    The clock is CLOCK_MONOTONIC read in C unless ``clock`` (a callable
    returning int nanoseconds) is given.  ``on_full`` is 0 (deny), 1 (allow)
    or 2 (raise TableFullError).
    """

    # the fields and C-level methods are declared in _core.pxd

    def __cinit__(self, TableView table not None, str name not None,
                  int64_t emission_interval_ns, int64_t burst, clock=None,
                  int on_full=ON_FULL_DENY, bint register=True):
        check_params(emission_interval_ns, burst)
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be callable or None, got {clock!r}")
        self._set_on_full(on_full)
        self.emission_interval_ns = emission_interval_ns
        self.burst = burst
        self.tolerance_ns = burst * emission_interval_ns
        self.clock = clock
        if register:  # tools that only look (fastlimit inspect) state nothing
            self._register(KIND_RATE, emission_interval_ns, burst)

    def allow(self, key, cost=1):
        """Count a hit of ``cost`` on ``key`` if it passes; return whether it did."""
        cdef int64_t now, tat, inc
        cdef int r = _step(self, key, cost, &now, &tat, &inc)
        _count(self, r, 1)
        if r >= 0:
            return r == R_ALLOWED
        if self.on_full == ON_FULL_ALLOW:
            return True
        if self.on_full == ON_FULL_RAISE:
            self._raise_full(key, r)
        return False

    def hit(self, key, cost=1):
        """Count a hit of ``cost`` on ``key`` if it passes; return the Decision.

        ``cost=0`` counts nothing and answers as ``peek(key)``.
        """
        cdef fl_answer a
        self.check(key, cost, True, &a)
        return decision_of(&a)

    def peek(self, key, cost=1):
        """The Decision a hit of ``cost`` would get now, counting nothing."""
        cdef fl_answer a
        self.check(key, cost, False, &a)
        return decision_of(&a)

    def take(self, key, cost=1):
        """Count a hit of ``cost`` on ``key`` if it passes; return its
        ``remaining`` (hits of cost 1 left after it), or -1 if it was denied.

        :meth:`hit` without a Decision object, for callers that need only the
        count: ``take(k, c)`` is ``d.remaining if d.allowed else -1`` for
        ``d = hit(k, c)``, on_full and ``cost=0`` included.
        """
        cdef uint64_t fp = _fingerprint(self, key)
        cdef int64_t n = _cost(self, cost)
        return self.take_at(key, fp, _now(self), n)

    cdef int64_t take_at(self, key, uint64_t fp, int64_t now, int64_t cost) except -3:
        """:meth:`take` of ``cost`` (checked by the caller) on ``key``, whose
        fingerprint is ``fp``, at ``now`` (a reading of this state's clock):
        for compiled callers that keep a key's fingerprint and test the same
        clock reading against times of their own."""
        cdef fl_answer a
        cdef int64_t tat, inc = _increment(self, cost)
        cdef int r = gcra(_engine(self), fp, now, inc, self.tolerance_ns, cost != 0, &tat)
        _count(self, r, 1)
        self._answer(key, r, now, tat, inc, &a)
        return a.remaining if a.allowed else -1

    cdef int64_t now_ns(self) except? -1:
        """A reading of this state's clock (CLOCK_MONOTONIC, or the injected one)."""
        return _now(self)

    cdef int check(self, key, object cost, bint consume, fl_answer* out) except -1:
        """:meth:`hit` (``consume``) or :meth:`peek` into ``out``: what the
        counting loop of composite checks calls, without a Decision object."""
        cdef int64_t now, tat, inc, n
        cdef uint64_t fp
        cdef Engine* e
        cdef int r
        if consume:
            r = _step(self, key, cost, &now, &tat, &inc)
            _count(self, r, 1)
        else:
            fp = _fingerprint(self, key)
            e = _engine(self)
            inc = _increment(self, _cost(self, cost))
            now = _now(self)
            r = gcra(e, fp, now, inc, self.tolerance_ns, False, &tat)
        return self._answer(key, r, now, tat, inc, out)

    cdef int give_back(self, key, object cost) except -1:
        """:meth:`refund`, for the counting loop: 1 if the key had state."""
        return 1 if self.refund(key, cost) else 0

    def refund(self, key, cost=1):
        """Give back a hit of ``cost`` counted earlier: ``tat -= cost x T``.

        For composite checks: when one limit of several denies, the hits
        already counted on the others are refunded, which leaves their state
        as if the request never came (a key whose tat falls to ``now`` or
        below is fresh either way).  Returns False if the key has no state.
        """
        cdef uint64_t fp = _fingerprint(self, key)
        cdef Engine* e = _engine(self)
        cdef int64_t n = _cost(self, cost)
        cdef int64_t inc = _increment(self, n)
        cdef fl_slot* b1 = _bucket1(e, fp)
        cdef fl_slot* b2 = _bucket2(e, fp)
        cdef fl_slot* s = NULL
        cdef int64_t t = 0
        cdef int r
        if n == 0:
            return False
        while True:
            r = _find(e, fp, b1, b2, &s, &t)
            if r == FOUND:
                while t >= 0:
                    if fl_cas_i64(&s.tat, &t, t - inc if t > inc else 1):
                        return True
                    if fl_load_u64(&s.fp) != fp:
                        break
            elif r == ABSENT:
                return False
            elif r == R_TIMEOUT:
                raise TimeoutError(
                    f"key {key!r} of limiter {self.name!r} is locked by a stalled process")

    def reserve(self, key, cost=1, int64_t max_wait_ns=MAX_TOLERANCE_NS):
        """Book a hit of ``cost`` at the earliest time it passes, if that is
        within ``max_wait_ns`` from now; the caller waits until then.

        Returns ``(at_ns, tat_ns)``.  ``at_ns >= 0``: counted now, for the
        slot at ``at_ns`` on this limiter's clock (now, or later by the
        wait); ``tat_ns`` is the key's tat after it (what :meth:`cancel`
        takes).  ``at_ns == -1``: the slot is further than ``max_wait_ns``;
        nothing is counted.  ``at_ns == -2``: no slot for the key in the
        table and ``on_full`` is deny (allow gives ``(now, 0)``, raise
        raises).  ``cost=0`` counts nothing and answers for a hit of 1.
        Bookings are served in the order they were made.
        """
        cdef uint64_t fp = _fingerprint(self, key)
        cdef Engine* e = _engine(self)
        cdef int64_t units = _cost(self, cost)
        cdef int64_t inc = _increment(self, units)
        cdef int64_t now, tat = 0, wait
        cdef int r
        if not 0 <= max_wait_ns <= MAX_TOLERANCE_NS:
            raise ValueError(f"max_wait_ns must be in [0, {MAX_TOLERANCE_NS}], got {max_wait_ns}")
        now = _now(self)
        if units == 0:
            r = gcra(e, fp, now, inc, self.tolerance_ns, False, &tat)
            if r >= 0:
                tat = tat if tat > now else now
                wait = tat + inc - self.tolerance_ns - now
                wait = wait if wait > 0 else 0
                return (now + wait if wait <= max_wait_ns else -1), tat
        else:
            r = _book(e, fp, now, now, inc, self.tolerance_ns, max_wait_ns, &tat)
            _count(self, r, 1)  # a booking is a check that passes; a refusal, one denied
            if r == R_ALLOWED:
                wait = tat - self.tolerance_ns - now
                return now + (wait if wait > 0 else 0), tat
            if r == R_DENIED:
                return -1, tat
        if self.on_full == ON_FULL_RAISE:
            self._raise_full(key, r)
        if self.on_full == ON_FULL_ALLOW:
            return now, 0
        return -2, 0

    def cancel(self, key, cost, int64_t tat_ns):
        """Undo a :meth:`reserve` of ``cost`` that left the key's tat at
        ``tat_ns``, if no hit was counted on the key since.  True if undone.

        Only the last booking can be undone exactly: taking ``cost x T`` off
        a tat that later bookings built on would hand their slots out twice,
        so a booking with others behind it stays counted (its slot goes
        unused, which never admits too many).
        """
        cdef uint64_t fp = _fingerprint(self, key)
        cdef Engine* e = _engine(self)
        cdef int64_t units = _cost(self, cost)
        cdef int64_t inc = _increment(self, units)
        cdef fl_slot* s = NULL
        cdef int64_t t = 0
        cdef int r
        if units == 0 or tat_ns <= 0:
            return False
        while True:
            r = _find(e, fp, _bucket1(e, fp), _bucket2(e, fp), &s, &t)
            if r == FOUND:
                if t != tat_ns:
                    return False
                if fl_cas_i64(&s.tat, &t, tat_ns - inc if tat_ns > inc else 1):
                    return True
                return False  # t changed under us: a hit came after the booking
            if r == ABSENT:
                return False
            if r == R_TIMEOUT:
                raise TimeoutError(
                    f"key {key!r} of limiter {self.name!r} is locked by a stalled process")

    def hold(self, key, int64_t ahead_ns):
        """Raise ``key``'s tat to ``now + ahead_ns`` unless it is already
        later: never loosens.  How a client follows what a server reported
        (``ahead_ns = tau - r x T`` leaves ``r`` hits; ``tau - T + d`` lets
        none pass for ``d``).  Returns how far ahead of now the tat is after
        it (0 for a fresh key), or -2 when the key has no slot (on_full deny
        or allow)."""
        cdef uint64_t fp = _fingerprint(self, key)
        cdef Engine* e = _engine(self)
        cdef int64_t now, tat = 0
        cdef int r
        if not 0 <= ahead_ns <= MAX_TOLERANCE_NS:
            raise ValueError(f"ahead_ns must be in [0, {MAX_TOLERANCE_NS}], got {ahead_ns}")
        now = _now(self)
        r = _book(e, fp, now, now + ahead_ns, 0, 0, -1, &tat)
        if r >= 0:
            return tat - now if tat > now else 0
        if self.on_full == ON_FULL_RAISE:
            self._raise_full(key, r)
        return -2

    def hit_many(self, keys, cost=1):
        """Hit each key once with ``cost``, in order; return a numpy bool array.

        ``keys`` is a sequence of str/bytes/int or a numpy integer array (the
        fast path: hashing and the table walk run without the GIL, with the
        next buckets prefetched).  One clock read serves the whole batch.
        """
        cdef Py_ssize_t n, i
        cdef object src_arr
        cdef const uint64_t* src
        cdef uint64_t* fps
        cdef bint ints = cnp.PyArray_Check(keys)
        if ints:
            src_arr = _key_words(keys)
        else:
            if not isinstance(keys, (list, tuple)):
                keys = list(keys)
            src_arr = _new_array(len(keys), cnp.NPY_UINT64)
            fps = <uint64_t*>cnp.PyArray_DATA(src_arr)
            for i in range(len(keys)):
                fps[i] = _fingerprint(self, keys[i])
        n = cnp.PyArray_DIM(src_arr, 0)
        src = <const uint64_t*>cnp.PyArray_DATA(src_arr)
        cdef Engine* e = _engine(self)
        cdef int64_t units = _cost(self, cost)
        cdef int64_t inc = _increment(self, units)
        cdef int64_t now = _now(self)
        # made with numpy's C API: np.empty and a view cost more than a small batch
        cdef object out_arr = _new_array(n, cnp.NPY_BOOL)
        cdef unsigned char* out = <unsigned char*>cnp.PyArray_DATA(out_arr)
        cdef Py_ssize_t failed = -1
        cdef uint64_t tally[NCOUNTERS]
        tally[0] = tally[1] = tally[2] = 0
        if n:
            if n <= 64:  # a small batch: letting the GIL go would cost more than it
                failed = _batch(e, src, ints, self.ki0, self.ki1, n, now, inc,
                                self.tolerance_ns, units != 0, self.on_full, out, tally)
            else:
                with nogil:
                    failed = _batch(e, src, ints, self.ki0, self.ki1, n, now, inc,
                                    self.tolerance_ns, units != 0, self.on_full, out, tally)
            _count(self, R_FULL, tally[0])
            _count(self, R_DENIED, tally[1])
            _count(self, R_ALLOWED, tally[2])
        if failed >= 0:
            self._raise_full(keys[failed], R_FULL)
        return out_arr

    cdef int _answer(self, key, int r, int64_t now, int64_t tat, int64_t inc,
                     fl_answer* out) except -1:
        """What a step's result ``r`` and the tat after it answer (the
        formulas of fastlimit/core/gcra.py: ``answer`` and ``no_slot``)."""
        cdef int64_t ahead, remaining
        out.limit = self.burst
        if r < 0:
            if self.on_full == ON_FULL_RAISE:
                self._raise_full(key, r)
            if self.on_full == ON_FULL_DENY:
                out.allowed = False
                out.remaining = 0
                out.reset_after_ns = 0
                out.retry_after_ns = inc
                return 0
            # allow: answer as for a key seen for the first time
            r = R_ALLOWED
            tat = now + inc
        out.allowed = r == R_ALLOWED
        ahead = tat - now
        if ahead < 0:
            ahead = 0
        remaining = (self.tolerance_ns - ahead) // self.emission_interval_ns
        out.remaining = 0 if remaining < 0 else (self.burst if remaining > self.burst
                                                 else remaining)
        out.reset_after_ns = ahead
        out.retry_after_ns = 0 if out.allowed else ahead + inc - self.tolerance_ns
        return 0


cdef inline int64_t _now(Gcra self) except? -1:
    if self.clock is None:
        return mono_ns()
    return _clock_ns(self.clock)

cdef inline int64_t _cost(Gcra self, object cost) except -1:
    """``cost`` as an int in [0, burst].  Not a C conversion: that would
    truncate 1.5 to 1 and answer 10**30 with an OverflowError about C
    longs; the Redis backend accepts exactly the same (operator.index)."""
    cdef int overflow = 0
    cdef long long n
    if cost is _ONE:  # the default, and the small-int cache's 1: skip the parse
        return 1
    if not PyLong_Check(cost):
        cost = _index_cost(cost)
    n = PyLong_AsLongLongAndOverflow(cost, &overflow)
    if overflow < 0 or (overflow == 0 and n < 0):
        raise ValueError(f"cost must be >= 0, got {cost}")
    if overflow > 0 or n > self.burst:
        raise CapacityError(
            f"cost {cost} exceeds the burst of {self.burst}: it can never pass")
    return n

cdef inline int64_t _increment(Gcra self, int64_t cost) noexcept:
    return (cost if cost else 1) * self.emission_interval_ns

cdef inline int _step(Gcra self, key, object cost, int64_t* now, int64_t* tat,
                      int64_t* inc) except -3:
    cdef uint64_t fp = _fingerprint(self, key)
    cdef Engine* e = _engine(self)
    cdef int64_t n = _cost(self, cost)
    inc[0] = _increment(self, n)
    now[0] = _now(self)
    return gcra(e, fp, now[0], inc[0], self.tolerance_ns, n != 0, tat)


cdef inline object _new_array(Py_ssize_t n, int typenum):
    cdef cnp.npy_intp dims = n
    return cnp.PyArray_EMPTY(1, &dims, typenum, 0)


cdef object _key_words(object keys):
    """A numpy integer array of keys as a C-contiguous uint64 array: the
    array itself when it is one already (or int64: the same words), else
    converted (64-bit two's complement, as int keys are hashed)."""
    cdef int t
    if cnp.PyArray_NDIM(keys) != 1:
        raise ValueError(f"key arrays must be one-dimensional, got shape {keys.shape}")
    t = cnp.PyArray_TYPE(keys)
    if ((t == cnp.NPY_UINT64 or t == cnp.NPY_INT64 or t == cnp.NPY_ULONGLONG
            or t == cnp.NPY_LONGLONG) and cnp.PyArray_ISCARRAY_RO(keys)
            and cnp.PyArray_ISNOTSWAPPED(keys)):
        return keys
    if keys.dtype.kind not in "iu":
        raise TypeError(f"key arrays must hold integers, got dtype {keys.dtype}")
    return np.ascontiguousarray(keys).astype(np.uint64, copy=False)


cdef Py_ssize_t _batch(Engine* e, const uint64_t* src, bint ints, uint64_t k0, uint64_t k1,
                       Py_ssize_t n, int64_t now, int64_t inc, int64_t tau, bint consume,
                       int on_full, unsigned char* out, uint64_t* tally) noexcept nogil:
    """GCRA over a batch: ``src`` holds fingerprints, or int keys to hash with
    (k0, k1) when ``ints``.  Key i+AHEAD is hashed and its buckets prefetched
    while key i is served, so memory latency overlaps with work.  Returns -1,
    or the index of the first key that found no slot under on_full=raise.
    ``tally`` gets the counts of results (no slot, denied, allowed).
    """
    cdef uint64_t ring[PREFETCH_AHEAD]  # fingerprints of keys i .. i+AHEAD-1
    # in locals, not in tally: stores through ``out`` (a char*) could alias it
    cdef uint64_t allowed = 0, noslot = 0
    cdef uint64_t fp
    cdef fl_slot* b1
    cdef fl_slot* b2
    cdef Py_ssize_t i
    cdef int64_t tat
    cdef int r
    for i in range(n if n < PREFETCH_AHEAD else PREFETCH_AHEAD):
        fp = _int_fp(k0, k1, src[i]) if ints else src[i]
        ring[i] = fp
        _prefetch_key(e, fp)
    for i in range(n):
        fp = ring[i & (PREFETCH_AHEAD - 1)]
        if i + PREFETCH_AHEAD < n:
            ring[i & (PREFETCH_AHEAD - 1)] = (
                _int_fp(k0, k1, src[i + PREFETCH_AHEAD]) if ints else src[i + PREFETCH_AHEAD])
            _prefetch_key(e, ring[i & (PREFETCH_AHEAD - 1)])
        b1 = _bucket1(e, fp)
        b2 = _bucket2(e, fp)
        r = _gcra_known(b1, b2, fp, now, inc, tau, consume, &tat)
        if r == RETRY:
            r = _gcra_slow(e, fp, b1, b2, now, inc, tau, consume, &tat)
        allowed += r == R_ALLOWED
        if fl_unlikely(r < 0):
            noslot += 1
            if on_full == ON_FULL_RAISE:
                _tally(tally, i + 1, allowed, noslot)
                return i
            r = R_ALLOWED if on_full == ON_FULL_ALLOW else R_DENIED
        out[i] = r
    _tally(tally, n, allowed, noslot)
    return -1


cdef inline void _tally(uint64_t* tally, Py_ssize_t checks, uint64_t allowed,
                        uint64_t noslot) noexcept nogil:
    tally[0] = noslot
    tally[1] = checks - allowed - noslot
    tally[2] = allowed
