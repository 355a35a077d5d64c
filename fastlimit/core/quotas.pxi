# Calendar quota counts in a quota table.  Included by fastlimit/_core.pyx.

# -- calendar quotas ------------------------------------------------------------
#
# A quota slot holds one word: (period tag << 40) | count.  The tag is the
# calendar period's index + 1, so a slot whose tag is older than the current
# period's is "expired" in the table's sense (its word <= (tag << 40) - 1):
# it reads as count 0 and any key may reclaim it.  A new period therefore
# starts at zero on first use, without a sweeper, and one CAS moves both the
# period and the count.  Quota tables never hold GCRA or lease slots (the
# header's clock id keeps them apart): their words are not times.

cdef enum:
    QUOTA_COUNT_BITS = 40
    Q_PEEK = 0
    Q_CONSUME = 1
    Q_REFUND = 2

QUOTA_MAX_COUNT = (<int64_t>1 << QUOTA_COUNT_BITS) - 1
QUOTA_MAX_TAG = (1 << 22) - 1


cdef int quota_step(Engine* e, uint64_t fp, int64_t tag, int64_t limit, int64_t cost,
                    int mode, int64_t* count_out) noexcept nogil:
    """Count ``cost`` against ``limit`` in period ``tag`` (mode Q_CONSUME),
    check without counting (Q_PEEK) or give back (Q_REFUND).  ``count_out``
    gets the period's count after the step."""
    cdef fl_slot* b1 = _bucket1(e, fp)
    cdef fl_slot* b2 = _bucket2(e, fp)
    cdef fl_slot* s = NULL
    cdef int64_t base = tag << QUOTA_COUNT_BITS
    cdef int64_t mask = (<int64_t>1 << QUOTA_COUNT_BITS) - 1
    cdef int64_t t = 0, count, new, period
    cdef int r
    while True:
        r = _find(e, fp, b1, b2, &s, &t)
        if r == FOUND:
            while True:
                # A stored period newer than ours wins, as on Redis: a process
                # whose clock reads an earlier period (a step back, or a read
                # just before a boundary that lost the race to the CAS) counts
                # in the newest one, so no count is reset twice.
                period = t & ~mask
                if period < base:
                    period = base
                count = (t & mask) if (t & ~mask) == period else 0
                if mode == Q_REFUND:
                    new = count - cost if count > cost else 0
                elif count + cost > limit:
                    count_out[0] = count
                    return R_DENIED
                else:
                    new = count + cost
                if mode == Q_PEEK or new == count:
                    count_out[0] = count
                    return R_ALLOWED
                if fl_cas_i64(&s.tat, &t, period | new):
                    count_out[0] = new
                    return R_ALLOWED
                if t < 0 or fl_load_u64(&s.fp) != fp:
                    break
            continue
        if r == ABSENT:
            count_out[0] = 0
            if mode == Q_REFUND:
                return R_ALLOWED
            if cost > limit:  # a fresh count of 0, as for a key found
                return R_DENIED
            if mode == Q_PEEK or cost == 0:
                return R_ALLOWED
            r = _claim(e, fp, b1, b2, base - 1, base | cost)
            if r == FOUND:
                count_out[0] = cost
                return R_ALLOWED
        if r == RETRY:
            continue
        if r == R_FULL:
            fl_add_u64(&e.counters[C_FULL], 1)
        return r


cdef class QuotaCounter(_Keyed):
    """Per-key counts of one named quota, per calendar period tag (the
    facade, quota.py, maps wall-clock time to tags)."""

    # the fields and C-level methods are declared in _core.pxd

    def __cinit__(self, TableView table not None, str name not None, int64_t limit,
                  int on_full=ON_FULL_DENY, bint register=True):
        if not 1 <= limit <= QUOTA_MAX_COUNT:
            raise ValueError(f"a quota limit must be between 1 and {QUOTA_MAX_COUNT}, got {limit}")
        self._set_on_full(on_full)
        self.limit = limit
        if register:
            self._register(KIND_QUOTA, limit, 0)

    def step(self, key, int64_t tag, int64_t cost, int mode, int64_t left_ns=0):
        """``(Step, count)``: allowed, denied, no slot, or a slot locked by a
        stalled process; ``count`` is the period's count after the step.
        ``mode`` is a :class:`~fastlimit.core.results.QuotaMode`.

        ``left_ns`` (the time to the period's end) is part of the store
        contract for stores that must expire keys (Redis); the table needs
        none: a slot of an older period is free for reuse."""
        cdef int64_t count = 0
        cdef int r = self._step(key, tag, cost, mode, &count)
        return _STEPS[r + 2], count

    def answer(self, key, int64_t tag, int64_t cost, int mode, int64_t left_ns=0):
        """The Decision of a step (``mode`` consume or peek), ``left_ns``
        before the period ends: the formulas of fastlimit/core/quota.py."""
        cdef fl_answer a
        self.count(key, tag, cost, mode, left_ns, &a)
        return decision_of(&a)

    cdef int _step(self, key, int64_t tag, int64_t cost, int mode, int64_t* count) except -3:
        cdef uint64_t fp = _fingerprint(self, key)
        cdef Engine* e = _engine(self)
        cdef int r
        if not 1 <= tag <= QUOTA_MAX_TAG:
            raise ValueError(f"period tag out of range: {tag}")
        if cost < 0:
            raise ValueError(f"cost must be >= 0, got {cost}")
        if mode != Q_PEEK and mode != Q_CONSUME and mode != Q_REFUND:
            raise ValueError(f"bad mode {mode}")
        r = quota_step(e, fp, tag, self.limit, cost, mode, count)
        if mode == Q_CONSUME:
            _count(self, r, 1)
        if r < 0 and self.on_full == ON_FULL_RAISE:
            self._raise_full(key, r)
        return r

    cdef int count(self, key, int64_t tag, int64_t cost, int mode, int64_t left_ns,
                   fl_answer* out) except -1:
        """:meth:`answer` into ``out``, for the counting loop: 1 when the
        key found no slot (the table is full), else 0."""
        cdef int64_t count = 0
        cdef int r = self._step(key, tag, cost, mode, &count)
        out.limit = self.limit
        out.reset_after_ns = left_ns
        if r < 0:  # no slot: the table frees up only when the period ends
            out.allowed = self.on_full == ON_FULL_ALLOW
            out.remaining = self.limit - cost if out.allowed else 0
            out.retry_after_ns = 0 if out.allowed else left_ns
            return 1
        out.allowed = r == R_ALLOWED
        out.remaining = self.limit - count
        out.retry_after_ns = 0 if out.allowed else left_ns
        return 0
