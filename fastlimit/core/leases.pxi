# Concurrency leases in a rate table.  Included by fastlimit/_core.pyx.

# -- concurrency leases ---------------------------------------------------------
#
# A key with limit N owns N lease slots, fingerprints (key, 0..N-1).  A held
# lease's word is LEASE | owner, where owner is the holder's (pid, start
# time): bit 62 set and 63 clear makes it a positive time beyond any clock,
# so GCRA and reclaim logic sharing the table always see it as live.  Taking
# a lease is a claim (or a CAS from a dead holder's word); giving it back is a
# CAS to FREE.  Each lease slot has at most one holder, so at most N are in
# flight; a holder that dies is replaced by the next acquirer that finds the
# key full and sees in /proc that the holder is gone.

# (FL_LEASE_BIT and FL_IS_LEASE are in platform.pxi, with the other words.)


cdef inline uint64_t _lease_fp(uint64_t fp, int64_t i) noexcept nogil:
    cdef uint64_t h = fl_siphash13_u64(fp, 0x6c65617365u, <uint64_t>i)
    return h if h else 1


cdef inline bint _holder_dead(int64_t t) noexcept nogil:
    if (t & ~FL_LEASE_BIT) == (_my_lock & ~FL_LOCK_BITS):
        return False  # ours: this process is alive
    return not fl_proc_alive(<long>(t & FL_PID_MASK),
                             (<uint64_t>t >> FL_PID_BITS) & FL_START_MASK, FL_START_MASK)


cdef class Leases(_Keyed):
    """In-flight leases of one named concurrency limit."""

    # the fields and C-level methods are declared in _core.pxd

    def __cinit__(self, TableView table not None, str name not None, int on_full=ON_FULL_DENY):
        self._set_on_full(on_full)
        self._register(KIND_LEASES, 0, 0)

    @staticmethod
    def owner_word():
        """The word a lease held by this process holds."""
        return FL_LEASE_BIT | (_my_lock & ~FL_LOCK_BITS)

    def try_acquire(self, key, int64_t limit, int64_t start=0):
        """Take one of ``key``'s ``limit`` leases: its index, or -1 when all
        are held by live processes (-2: no slot in the table, -3: a stalled
        claimer).  ``start`` spreads concurrent acquirers over the leases."""
        return self._take(key, limit, start)

    cdef int64_t _take(self, key, int64_t limit, int64_t start, uint64_t* slot=NULL) except? -9:
        # ``slot``: where to put the taken lease's slot fingerprint (for give_back_slot)
        cdef uint64_t fp = _fingerprint(self, key)
        cdef Engine* e = _engine(self)
        cdef int64_t mine = FL_LEASE_BIT | (_my_lock & ~FL_LOCK_BITS)
        cdef int problem = 0
        if limit < 1:
            raise ValueError(f"a concurrency limit must be >= 1, got {limit}")
        cdef int64_t got = -1
        cdef bint took_over = False
        cdef uint64_t lfp = 0
        if limit <= 64:  # a short scan: letting the GIL go would cost more than it
            got = _take_one(e, fp, limit, start, mine, &problem, &took_over, &lfp)
        else:
            with nogil:
                got = _take_one(e, fp, limit, start, mine, &problem, &took_over, &lfp)
        if took_over:
            self.reclaimed += 1
        _count(self, R_ALLOWED if got >= 0 else (problem if problem else R_DENIED), 1)
        if got >= 0:
            if slot != NULL:
                slot[0] = lfp
            return got
        if problem:
            if self.on_full == ON_FULL_RAISE:
                self._raise_full(key, problem)
            return -2 if problem == R_FULL else -3
        return -1

    def acquire(self, key, int64_t limit, int64_t start=0):
        """A lease of ``key`` if one of its ``limit`` is free: its index, or
        ``Acquired.REFUSED`` (every lease held, or no slot and ``on_full``
        deny) or ``Acquired.UNRECORDED`` (no slot and ``on_full`` allow:
        admitted, with nothing to give back)."""
        cdef int64_t got = self.acquire_(key, limit, start)
        return got if got >= 0 else _ACQUIRED[-got - 1]

    cdef int64_t acquire_(self, key, int64_t limit, int64_t start, uint64_t* slot=NULL) except? -9:
        cdef int64_t got = self._take(key, limit, start, slot)
        if got >= 0:
            return got
        if got == -1 or self.on_full != ON_FULL_ALLOW:
            return -1
        return -2

    def release(self, key, int64_t index):
        """Give lease ``index`` of ``key`` back; False if this process did not hold it."""
        return self.give_back(key, index)

    cdef bint give_back(self, key, int64_t index) except -1:
        return self.give_back_slot(_lease_fp(_fingerprint(self, key), index))

    cdef bint give_back_slot(self, uint64_t lfp) except -1:
        """Give back the lease in slot ``lfp`` (as ``acquire_`` gave it), if ours."""
        cdef Engine* e = _engine(self)
        cdef int64_t mine = FL_LEASE_BIT | (_my_lock & ~FL_LOCK_BITS)
        cdef int64_t t = 0
        cdef fl_slot* s = NULL
        while True:
            r = _find(e, lfp, _bucket1(e, lfp), _bucket2(e, lfp), &s, &t)
            if r == RETRY:
                continue
            if r != FOUND or t != mine:
                return False
            # To a time long past rather than FREE: the slot stays this
            # lease's, so its next acquire takes it with one CAS instead of a
            # claim; any key may still reclaim it as an expired slot.
            if fl_cas_i64(&s.tat, &t, 1):
                return True

    def in_flight(self, key, int64_t limit):
        """How many of ``key``'s first ``limit`` leases are held."""
        cdef uint64_t fp = _fingerprint(self, key)
        cdef Engine* e = _engine(self)
        cdef int64_t i, t = 0, n = 0
        cdef uint64_t lfp
        cdef fl_slot* s = NULL
        for i in range(limit):
            lfp = _lease_fp(fp, i)
            if _find(e, lfp, _bucket1(e, lfp), _bucket2(e, lfp), &s, &t) == FOUND and FL_IS_LEASE(t):
                n += 1
        return n


cdef int64_t _take_one(Engine* e, uint64_t fp, int64_t limit, int64_t start, int64_t mine,
                       int* problem, bint* took_over, uint64_t* slot) noexcept nogil:
    """One of the ``limit`` leases of the key ``fp``, from ``start`` on: its
    index (its slot's fingerprint in ``slot``), or -1 (``problem``: a
    no-slot result met on the way)."""
    cdef int64_t i, j, t = 0
    cdef uint64_t lfp
    cdef fl_slot* s = NULL
    cdef int r
    i = start % limit  # C's %: negative for a negative start
    if i < 0:
        i += limit
    for j in range(limit):
        lfp = _lease_fp(fp, i)
        r = _take_lease(e, lfp, mine)
        if r == R_ALLOWED:
            slot[0] = lfp
            return i
        if r < 0:
            problem[0] = r
        i = i + 1 if i + 1 < limit else 0
    # every lease looked held: replace holders that are gone
    for i in range(limit):
        lfp = _lease_fp(fp, i)
        if _find(e, lfp, _bucket1(e, lfp), _bucket2(e, lfp), &s, &t) != FOUND:
            continue
        if FL_IS_LEASE(t) and _holder_dead(t) and fl_cas_i64(&s.tat, &t, mine):
            took_over[0] = True
            slot[0] = lfp
            return i
    return -1


cdef int _take_lease(Engine* e, uint64_t fp, int64_t mine) noexcept nogil:
    """R_ALLOWED if the lease slot ``fp`` is now ours, R_DENIED if held."""
    cdef fl_slot* b1 = _bucket1(e, fp)
    cdef fl_slot* b2 = _bucket2(e, fp)
    cdef fl_slot* s = NULL
    cdef int64_t t = 0
    cdef int r
    while True:
        r = _find(e, fp, b1, b2, &s, &t)
        if r == FOUND:
            if FL_IS_LEASE(t):
                return R_DENIED
            if fl_cas_i64(&s.tat, &t, mine):
                return R_ALLOWED
            continue
        if r == ABSENT:
            r = _claim(e, fp, b1, b2, mono_ns(), mine)  # the clock only to claim
            if r == FOUND:
                return R_ALLOWED
        if r == RETRY:
            continue
        if r == R_FULL:
            fl_add_u64(&e.counters[C_FULL], 1)
        return r
