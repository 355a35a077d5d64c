# The slots: layout, the two buckets of a key, finding a key, and claiming a
# slot for a new one (the lock-free protocol and its crash-safety argument).
# Included by fastlimit/_core.pyx.

cdef enum:
    BUCKET_SLOTS = 8
    LINE_SLOTS = 4
    BUCKET_BYTES = 128
    SLOT_BYTES = 16
    # results of gcra(); the facade maps the negative ones through on_full
    R_DENIED = 0
    R_ALLOWED = 1
    R_FULL = -1
    R_TIMEOUT = -2
    # internal results of _find/_claim
    FOUND = 10
    ABSENT = 11
    RETRY = 12
    # header counters, in the order table.py lays them out
    C_FULL = 0
    C_LOCK_BREAKS = 1
    C_LOCK_TIMEOUTS = 2
    C_EVICTIONS = 3
    # on_full policies
    ON_FULL_DENY = 0
    ON_FULL_ALLOW = 1
    ON_FULL_RAISE = 2
    # prefetch distance of batch loops, in keys
    PREFETCH_AHEAD = 16  # a power of two

# A claim is a handful of instructions: spin briefly, then yield and probe
# whether the owner still lives; a live owner stalled this long (stopped in a
# debugger, SIGSTOP) makes the waiter give up and apply on_full.
cdef int SPIN_ROUNDS = 200
cdef int64_t PROBE_AFTER_NS = 50_000
cdef int64_t PROBE_EVERY_NS = 1_000_000
cdef int64_t LOCK_WAIT_LIMIT_NS = 1_000_000_000


cdef inline fl_slot* _bucket1(const Engine* e, uint64_t fp) noexcept nogil:
    return e.slots + (((fp & 0xFFFFFFFFu) * e.nbuckets) >> 32) * BUCKET_SLOTS


cdef inline fl_slot* _bucket2(const Engine* e, uint64_t fp) noexcept nogil:
    return e.slots + (((fp >> 32) * e.nbuckets) >> 32) * BUCKET_SLOTS


cdef inline void _prefetch_key(const Engine* e, uint64_t fp) noexcept nogil:
    # all four lines the key may sit in: fetching fewer was measured slower,
    # as a line missed here is then waited for inside the probe
    cdef fl_slot* b = _bucket1(e, fp)
    fl_prefetch_w(b)
    fl_prefetch_w(b + LINE_SLOTS)
    b = _bucket2(e, fp)
    fl_prefetch_w(b)
    fl_prefetch_w(b + LINE_SLOTS)


cdef int _wait_unlock(Engine* e, fl_slot* s, int64_t lock) noexcept nogil:
    """Wait until ``s.tat`` is no longer ``lock``.

    Breaks the lock (to FREE) when its owner has died, so a process killed
    mid-claim never wedges the others.  Returns 0, or R_TIMEOUT when a live
    owner holds it longer than LOCK_WAIT_LIMIT_NS.
    """
    cdef int i
    cdef int64_t start, t, next_probe, expected
    for i in range(SPIN_ROUNDS):
        if fl_load_i64(&s.tat) != lock:
            return 0
        fl_pause()
    start = mono_ns()
    next_probe = start + PROBE_AFTER_NS
    while True:
        sched_yield()
        if fl_load_i64(&s.tat) != lock:
            return 0
        t = mono_ns()
        if t >= next_probe:
            if _lock_owner_dead(lock):
                expected = lock
                if fl_cas_i64(&s.tat, &expected, FL_FREE):
                    fl_add_u64(&e.counters[C_LOCK_BREAKS], 1)
                return 0
            next_probe = t + PROBE_EVERY_NS
        if t - start > LOCK_WAIT_LIMIT_NS:
            fl_add_u64(&e.counters[C_LOCK_TIMEOUTS], 1)
            return R_TIMEOUT


cdef int _find(Engine* e, uint64_t fp, fl_slot* b1, fl_slot* b2,
               fl_slot** out, int64_t* tat_out) noexcept nogil:
    """Look ``fp`` up in its two buckets: FOUND (slot, validated tat), ABSENT,
    RETRY (the table changed under us) or R_TIMEOUT.

    A key owns at most one committed slot, so the scan order is free: the
    first line of both buckets comes first (new keys fill first lines first),
    which is where most keys are and what single calls and batches fetch.
    """
    cdef fl_slot* lines[4]
    cdef fl_slot* s
    cdef int64_t t
    cdef int i, j, nlines = 4 if b2 != b1 else 2
    lines[0] = b1
    lines[1] = b2 if b2 != b1 else b1 + LINE_SLOTS
    lines[2] = b1 + LINE_SLOTS
    lines[3] = b2 + LINE_SLOTS
    for j in range(nlines):
        for i in range(LINE_SLOTS):
            s = lines[j] + i
            if fl_load_u64(&s.fp) != fp:
                continue
            t = fl_load_i64(&s.tat)
            if t >= 0:
                # The tat we read is fp's only if fp still owns the slot: a
                # reclaim swaps fp only while it holds the slot's lock.
                if fl_load_u64(&s.fp) != fp:
                    return RETRY
                out[0] = s
                tat_out[0] = t
                return FOUND
            if t == FL_FREE:
                continue
            # a claim is in flight on this slot: ours (a concurrent first hit
            # of the same key) or another key's over our expired entry
            if _wait_unlock(e, s, t) == R_TIMEOUT:
                return R_TIMEOUT
            return RETRY
    return ABSENT


cdef inline int _vacancy(fl_slot* bucket, int64_t now, fl_slot** unused,
                         fl_slot** expired) noexcept nogil:
    """Number of live slots in ``bucket``; ``unused`` gets its first slot that
    holds no key (never used, or FREE), ``expired`` its first slot holding a
    fully replenished key (free too, but that key may come back)."""
    cdef int i, live = 0
    cdef int64_t t
    unused[0] = NULL
    expired[0] = NULL
    for i in range(BUCKET_SLOTS):
        t = fl_load_i64(&bucket[i].tat)
        if t == FL_FREE or t == 0:
            if unused[0] == NULL:
                unused[0] = bucket + i
        elif t > 0 and t <= now:
            if expired[0] == NULL:
                expired[0] = bucket + i
        else:
            live += 1
    return live


cdef int _dedupe(Engine* e, uint64_t fp, fl_slot* b1, fl_slot* b2, fl_slot* mine) noexcept nogil:
    """0 if ``mine`` may become fp's slot; RETRY if another slot owns fp or
    wins the race to; R_TIMEOUT if a stalled live claimer blocks the answer."""
    cdef fl_slot* bucket = b1
    cdef fl_slot* o
    cdef int64_t t
    cdef int i
    while True:
        for i in range(BUCKET_SLOTS):
            o = bucket + i
            if o == mine:
                continue
            while fl_load_u64_sc(&o.fp) == fp:
                t = fl_load_i64_sc(&o.tat)
                if t == FL_FREE:
                    break
                if t >= 0 or o < mine:
                    return RETRY
                # a claimer of fp above us: it will yield to us if it sees us,
                # or commit if it does not; wait to learn which
                if _wait_unlock(e, o, t) == R_TIMEOUT:
                    return R_TIMEOUT
        if bucket == b2 or b1 == b2:
            return 0
        bucket = b2


cdef int _break_dead_locks(Engine* e, fl_slot* b1, fl_slot* b2) noexcept nogil:
    """Free the slots of ``b1`` and ``b2`` locked by claimers that died, and
    the leases whose holders died (else a killed holder's lease slots would
    stay taken for any other key: a capacity leak over OOM kills and
    deploys); returns how many.  Only on the way to a full answer, so /proc
    is read only when such a word stands between a new key and a slot."""
    cdef fl_slot* bucket = b1
    cdef int64_t t, owner
    cdef int i, freed = 0
    while True:
        for i in range(BUCKET_SLOTS):
            t = fl_load_i64(&bucket[i].tat)
            if FL_IS_LOCK(t):
                owner = t
            elif FL_IS_LEASE(t):
                owner = (t & ~FL_LEASE_BIT) | FL_LOCK_BITS  # its holder, as a lock word
            else:
                continue
            if (owner != _my_lock and not fl_proc_alive(
                    <long>(owner & FL_PID_MASK), (<uint64_t>owner >> FL_PID_BITS) & FL_START_MASK,
                    FL_START_MASK)):
                if fl_cas_i64(&bucket[i].tat, &t, FL_FREE):
                    fl_add_u64(&e.counters[C_LOCK_BREAKS], 1)
                    freed += 1
        if bucket == b2 or b1 == b2:
            return freed
        bucket = b2


cdef fl_slot* _soonest(fl_slot* b1, fl_slot* b2, int64_t now) noexcept nogil:
    """The slot of ``b1`` and ``b2`` whose live rate state ends soonest (not a
    lease, not a claim in flight), or NULL."""
    cdef fl_slot* bucket = b1
    cdef fl_slot* best = NULL
    cdef int64_t t, least = 0
    cdef int i
    while True:
        for i in range(BUCKET_SLOTS):
            t = fl_load_i64(&bucket[i].tat)
            if t > now and not FL_IS_LEASE(t) and (best == NULL or t < least):
                best, least = bucket + i, t
        if bucket == b2 or b1 == b2:
            return best
        bucket = b2


cdef int _claim(Engine* e, uint64_t fp, fl_slot* b1, fl_slot* b2, int64_t now,
                int64_t value) noexcept nogil:
    """Make a free slot fp's, holding ``value``: FOUND, RETRY, R_FULL or R_TIMEOUT.

    Protocol (all 64-bit CAS; a slot's fp and tat are never written together):

    1. Pick a free slot (FREE, or ``0 <= tat <= now``) in the emptier bucket
       and CAS its tat from the value seen to LOCK|me.  Holders of the old
       key's state read tat then re-check fp, so from here on they cannot
       use the slot: their CAS fails on LOCK and their fp check fails after.
    2. Publish fp (sequentially consistent exchange).
    3. Scan both buckets for another slot naming fp (sequentially consistent
       loads).  Two claimers of one key each publish, then scan, so at least
       one sees the other (Dekker).  A committed one wins; between two locked
       ones the lower address wins; the lower waits for a higher one to
       either commit (then it yields) or yield (then it commits).  Waits only
       point upward, so they cannot cycle.
    4. CAS tat from LOCK|me to ``value`` (commit), or to FREE (yield).

    Crash safety: a process killed anywhere leaves at most slots whose tat
    is LOCK|dead-owner.  The only processes that wait on such a slot are
    those after the same fp, and they break it to FREE once /proc shows the
    owner (pid and start time) gone; an uncommitted claim carried no state,
    so nothing is lost.  A lock is broken only when its owner is dead, so no
    late write from a stalled owner can land on a slot someone else owns.
    A dead lock whose fp nobody looks up again (a one-off key, or a claimer
    killed before step 2 published fp over a never-used slot's 0) would hold
    its slot for good: so when both buckets look full, the locks in them are
    checked and the dead ones broken before the table is called full.
    """
    cdef fl_slot* u1
    cdef fl_slot* x1
    cdef fl_slot* u2 = NULL
    cdef fl_slot* x2 = NULL
    cdef fl_slot* s
    cdef int live1, live2 = BUCKET_SLOTS + 1
    cdef int64_t t, lock = _my_lock
    cdef int r
    cdef bint evicting = False
    live1 = _vacancy(b1, now, &u1, &x1)
    if b2 != b1:
        live2 = _vacancy(b2, now, &u2, &x2)
    if live2 < live1:
        u1, x1, u2, x2 = u2, x2, u1, x1
    # the emptier bucket first, but keep replenished keys while any slot is
    # unused: their next hit then finds them instead of claiming again
    s = u1 if u1 != NULL else (u2 if u2 != NULL else (x1 if x1 != NULL else x2))
    if s == NULL:
        if _break_dead_locks(e, b1, b2):
            return RETRY
        s = _soonest(b1, b2, now) if e.evict else NULL
        if s == NULL:
            return R_FULL
        evicting = True
    t = fl_load_i64(&s.tat)
    if evicting:
        # the key due soonest is forgotten: on an evicting table (per-IP
        # keys) a flood's own buckets go first, and its newest caller gets in
        if not (t > now and not FL_IS_LEASE(t)):
            return RETRY
    elif not (t == FL_FREE or (t >= 0 and t <= now)):
        return RETRY
    if not fl_cas_i64(&s.tat, &t, lock):
        return RETRY
    if evicting:
        fl_add_u64(&e.counters[C_EVICTIONS], 1)
    fl_store_u64_sc(&s.fp, fp)
    r = _dedupe(e, fp, b1, b2, s)
    t = lock
    if r != 0:
        fl_cas_i64(&s.tat, &t, FL_FREE)
        return r
    if not fl_cas_i64(&s.tat, &t, value):
        return RETRY  # our lock was broken: only if /proc lied about us
    return FOUND


def _set_lock_wait_limit(int64_t ns):
    """Test hook: how long a waiter lets a live lock owner stall."""
    global LOCK_WAIT_LIMIT_NS
    LOCK_WAIT_LIMIT_NS = ns
