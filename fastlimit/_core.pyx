# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True, binding=False
"""fastlimit's compiled core: GCRA over a lock-free hash table in shared memory.

The core knows integers: key fingerprints, nanosecond times, the emission
interval, the burst and the cost.  The Python facade (table.py, limiter.py)
owns files, headers, rates and clock policy.

Table layout (the header page itself is described in table.py):

* slots are ``{uint64 fp, int64 tat}`` (16 bytes); a bucket is 8 slots, 128
  bytes, aligned so that it spans one pair of cache lines;
* a key's fingerprint ``fp`` is SipHash-1-3 of the key under a 128-bit key
  derived from the table's random secret and the limiter's name; ``fp`` is
  never 0;
* a key lives in one of two buckets chosen by the low and high halves of
  ``fp``; a new key goes to the bucket with fewer live entries.

The ``tat`` word of a slot says who owns it:

* ``tat >= 0``: the slot is the state of key ``fp``; ``tat <= now`` means the
  key is fresh, so the slot may be reclaimed by any key;
* ``tat == FREE``: the slot is free whatever ``fp`` says;
* ``tat == LOCK | owner``: a claim is in flight by the process ``owner``
  (pid and start time).

See ``_claim`` for the protocol and its crash-safety argument.
"""

from libc.stdint cimport int64_t, uint32_t, uint64_t, INT64_MAX
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_Check
from cpython.long cimport PyLong_Check, PyLong_AsLongLongAndOverflow
from cpython.unicode cimport PyUnicode_Check
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
cimport cython

import operator
import os

import numpy as np

from fastlimit.errors import CapacityError, TableFullError


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL


cdef extern from "<sched.h>" nogil:
    int sched_yield()


cdef extern from "_atomic.h" nogil:
    int64_t fl_load_i64(const int64_t*)
    uint64_t fl_load_u64(const uint64_t*)
    int64_t fl_load_i64_sc(const int64_t*)
    uint64_t fl_load_u64_sc(const uint64_t*)
    void fl_store_u64_sc(uint64_t*, uint64_t)
    bint fl_cas_i64(int64_t*, int64_t*, int64_t)
    uint64_t fl_add_u64(uint64_t*, uint64_t)
    void fl_inc_owned_u64(uint64_t*, uint64_t)
    void fl_pause()
    void fl_prefetch_w(const void*)
    bint fl_unlikely(bint)


cdef extern from "_siphash.h" nogil:
    uint64_t fl_siphash13(uint64_t, uint64_t, const unsigned char*, size_t)
    uint64_t fl_siphash13_u64(uint64_t, uint64_t, uint64_t)


cdef extern from "_proc.h" nogil:
    int fl_proc_stat(long, char*, uint64_t*)
    int fl_proc_alive(long, uint64_t, uint64_t)


cdef extern from *:
    """
    #define FL_FREE ((int64_t)INT64_MIN)
    #define FL_LOCK_BITS ((int64_t)0xC000000000000000LL)
    #define FL_IS_LOCK(t) (((t) & FL_LOCK_BITS) == FL_LOCK_BITS)
    #define FL_PID_BITS 22
    #define FL_PID_MASK ((int64_t)((1LL << FL_PID_BITS) - 1))
    #define FL_START_MASK ((uint64_t)((1ULL << 40) - 1))
    """
    const int64_t FL_FREE
    const int64_t FL_LOCK_BITS
    bint FL_IS_LOCK(int64_t) nogil
    const int FL_PID_BITS
    const int64_t FL_PID_MASK
    const uint64_t FL_START_MASK


cdef struct fl_slot:
    uint64_t fp
    int64_t tat


cdef struct Engine:
    fl_slot* slots
    uint64_t nbuckets
    uint64_t* counters


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

# The largest tolerance (burst x emission interval) accepted: keeps every sum
# of a time and a tolerance or cost inside int64 for the next ~140 years.
MAX_TOLERANCE_NS = 1 << 61
# The latest time an injected clock may return (146 years of uptime): with the
# tolerance above, times and tats stay positive int64s, never the negative
# words that mean FREE or a lock.
MAX_CLOCK_NS = 1 << 62

# LOCK value naming this process; refreshed in the child after fork.
cdef int64_t _my_lock = 0
# Bumped in the child after fork: a metrics stripe belongs to one process, so
# anything that cached its stripe must look again when this changes.
cdef long _fork_gen = 0


cdef inline int64_t mono_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


def monotonic_ns():
    """CLOCK_MONOTONIC in nanoseconds: the clock shared table state uses."""
    return mono_ns()


def _refresh_owner():
    """Recompute the lock token naming this process (call after fork)."""
    global _my_lock, _fork_gen
    cdef char state = 0
    cdef uint64_t start = 0
    cdef long pid = os.getpid()
    if fl_proc_stat(pid, &state, &start) != 0:
        start = 0
    _my_lock = FL_LOCK_BITS | <int64_t>((start & FL_START_MASK) << FL_PID_BITS) | (pid & FL_PID_MASK)
    _fork_gen += 1


cdef inline bint _lock_owner_dead(int64_t lock) noexcept nogil:
    """Whether the process a LOCK token names is gone (never true of ours)."""
    return lock != _my_lock and not fl_proc_alive(
        <long>(lock & FL_PID_MASK), (<uint64_t>lock >> FL_PID_BITS) & FL_START_MASK,
        FL_START_MASK)


_refresh_owner()
os.register_at_fork(after_in_child=_refresh_owner)


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
    """Free the slots of ``b1`` and ``b2`` locked by claimers that died;
    returns how many.  Only on the way to a full answer, so /proc is read
    only when a lock stands between a new key and a slot."""
    cdef fl_slot* bucket = b1
    cdef int64_t t
    cdef int i, freed = 0
    while True:
        for i in range(BUCKET_SLOTS):
            t = fl_load_i64(&bucket[i].tat)
            if (FL_IS_LOCK(t) and t != _my_lock and not fl_proc_alive(
                    <long>(t & FL_PID_MASK), (<uint64_t>t >> FL_PID_BITS) & FL_START_MASK,
                    FL_START_MASK)):
                if fl_cas_i64(&bucket[i].tat, &t, FL_FREE):
                    fl_add_u64(&e.counters[C_LOCK_BREAKS], 1)
                    freed += 1
        if bucket == b2 or b1 == b2:
            return freed
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
    live1 = _vacancy(b1, now, &u1, &x1)
    if b2 != b1:
        live2 = _vacancy(b2, now, &u2, &x2)
    if live2 < live1:
        u1, x1, u2, x2 = u2, x2, u1, x1
    # the emptier bucket first, but keep replenished keys while any slot is
    # unused: their next hit then finds them instead of claiming again
    s = u1 if u1 != NULL else (u2 if u2 != NULL else (x1 if x1 != NULL else x2))
    if s == NULL:
        return RETRY if _break_dead_locks(e, b1, b2) else R_FULL
    t = fl_load_i64(&s.tat)
    if not (t == FL_FREE or (t >= 0 and t <= now)):
        return RETRY
    if not fl_cas_i64(&s.tat, &t, lock):
        return RETRY
    fl_store_u64_sc(&s.fp, fp)
    r = _dedupe(e, fp, b1, b2, s)
    t = lock
    if r != 0:
        fl_cas_i64(&s.tat, &t, FL_FREE)
        return r
    if not fl_cas_i64(&s.tat, &t, value):
        return RETRY  # our lock was broken: only if /proc lied about us
    return FOUND


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


# -- metrics ----------------------------------------------------------------------
#
# Per-limiter check counts, without a shared hot cache line: the metrics area
# holds a registry of limiter names and one *stripe* per process.  A stripe
# has an owner word (the owner's LOCK token) on its own line, then a row of
# NCOUNTERS counters per registered limiter.  Only the owner writes its stripe,
# with plain stores; readers sum every stripe.  A process takes a free stripe,
# or one whose owner is dead (its counts are kept and added to); when every
# stripe has a live owner it shares stripe 0 with atomic adds.  Counts are
# per table lifetime and never reset.

cdef struct fl_reg:
    uint64_t id       # 0: free; else a hash of (kind, name) under the table secret
    uint32_t kind
    uint32_t name_len
    int64_t p1        # kind's parameters, for tools: rates (T, burst), quotas (limit)
    int64_t p2
    char name[96]     # the name's first 96 UTF-8 bytes

cdef enum:
    REG_ENTRY_BYTES = 128
    REG_NAME_BYTES = 96
    STRIPE_HEAD_BYTES = 64
    NCOUNTERS = 3     # full, denied, allowed: indexed by a check's result + 1
    KIND_RATE = 1
    KIND_QUOTA = 2
    KIND_LEASES = 3
    KIND_MIXED = 0x100  # flag: users of the name stated different parameters


def metrics_stripe_bytes(uint64_t nlimiters):
    """Bytes of one process's stripe for ``nlimiters`` registry entries."""
    return STRIPE_HEAD_BYTES + (nlimiters * NCOUNTERS * 8 + 63) // 64 * 64


cdef class TableView:
    """The mapped slots of one table in this process (see table.SharedTable)."""

    cdef Engine engine
    cdef object _buffer   # keeps the mapping exported while the engine uses it
    cdef readonly uint64_t secret0
    cdef readonly uint64_t secret1
    cdef fl_reg* reg
    cdef unsigned char* stripes
    cdef uint64_t nlimiters, nstripes, stripe_bytes
    cdef uint64_t* my_stripe  # this process's stripe's counters
    cdef bint my_stripe_shared
    cdef long stripe_gen

    def __cinit__(self, buffer, Py_ssize_t slots_offset, uint64_t nbuckets,
                  Py_ssize_t counters_offset, uint64_t secret0, uint64_t secret1,
                  Py_ssize_t metrics_offset, uint64_t nlimiters, uint64_t nstripes):
        cdef unsigned char[::1] mv = buffer
        cdef unsigned char* base = &mv[0]
        if nbuckets == 0 or nbuckets >= (<uint64_t>1 << 32):
            raise ValueError(f"nbuckets must be in [1, 2**32), got {nbuckets}")
        if slots_offset + <Py_ssize_t>(nbuckets * BUCKET_BYTES) > mv.shape[0]:
            raise ValueError("buffer is smaller than the table it should hold")
        if (<size_t>(base + slots_offset)) % BUCKET_BYTES or (<size_t>(base + counters_offset)) % 8:
            raise ValueError("table buffer is misaligned")
        if nlimiters < 2 or nstripes < 2 or nlimiters > 65536 or nstripes > 65536:
            raise ValueError(f"bad metrics layout: {nlimiters} limiters, {nstripes} stripes")
        self.stripe_bytes = metrics_stripe_bytes(nlimiters)
        if (metrics_offset < 0 or (<size_t>(base + metrics_offset)) % 64 or
                metrics_offset + <Py_ssize_t>(nlimiters * REG_ENTRY_BYTES
                                              + nstripes * self.stripe_bytes) > slots_offset):
            raise ValueError("the metrics area is misplaced")
        self._buffer = mv
        self.engine.slots = <fl_slot*>(base + slots_offset)
        self.engine.nbuckets = nbuckets
        self.engine.counters = <uint64_t*>(base + counters_offset)
        self.secret0 = secret0
        self.secret1 = secret1
        self.reg = <fl_reg*>(base + metrics_offset)
        self.stripes = base + metrics_offset + nlimiters * REG_ENTRY_BYTES
        self.nlimiters = nlimiters
        self.nstripes = nstripes

    cdef inline int64_t* _stripe_owner(self, uint64_t i) noexcept:
        return <int64_t*>(self.stripes + i * self.stripe_bytes)

    cdef uint64_t* _stripe(self, bint* shared) noexcept:
        """This process's stripe's counters: ours already, else a free one,
        else one whose owner died, else the shared stripe 0."""
        cdef int64_t me = _my_lock, t
        cdef uint64_t i, found = 0
        if self.stripe_gen == _fork_gen and self.my_stripe != NULL:
            shared[0] = self.my_stripe_shared
            return self.my_stripe
        for i in range(1, self.nstripes):
            if fl_load_i64(self._stripe_owner(i)) == me:
                found = i
                break
        if not found:
            for i in range(1, self.nstripes):
                t = 0
                if fl_cas_i64(self._stripe_owner(i), &t, me):
                    found = i
                    break
        if not found:
            for i in range(1, self.nstripes):
                t = fl_load_i64(self._stripe_owner(i))
                if t != 0 and _lock_owner_dead(t) and fl_cas_i64(self._stripe_owner(i), &t, me):
                    found = i
                    break
        self.my_stripe = <uint64_t*>(self.stripes + found * self.stripe_bytes + STRIPE_HEAD_BYTES)
        self.my_stripe_shared = found == 0
        self.stripe_gen = _fork_gen
        shared[0] = self.my_stripe_shared
        return self.my_stripe

    cdef uint64_t _register(self, uint64_t id, uint32_t kind, int64_t p1, int64_t p2,
                            bytes name) noexcept:
        """The registry entry of ``id`` (entry 0, "other", when it is full).
        Entries are never freed, so probing from the same start always meets
        an earlier claim of the same id before any free entry."""
        cdef uint64_t n = self.nlimiters - 1, i, j
        cdef int64_t expected
        cdef fl_reg* e
        cdef Py_ssize_t size = min(PyBytes_GET_SIZE(name), REG_NAME_BYTES)
        for j in range(n):
            i = 1 + (id + j) % n
            e = &self.reg[i]
            expected = 0
            if fl_cas_i64(<int64_t*>&e.id, &expected, <int64_t>id):
                e.kind = kind
                memcpy(e.name, PyBytes_AS_STRING(name), size)
                e.name_len = <uint32_t>size
            elif <uint64_t>expected != id:
                continue
            elif e.p1 and (e.p1 != p1 or e.p2 != p2):
                e.kind |= KIND_MIXED  # e.g. one bucket name at several tiers' rates
            # the latest limiter of a name states its parameters (tools show them)
            e.p1 = p1
            e.p2 = p2
            return i
        return 0

    def release(self):
        """Stop using the mapping (limiters on it raise from now on)."""
        self.engine.slots = NULL
        self._buffer = None

    @property
    def closed(self):
        return self.engine.slots == NULL

    def _hold_claim(self, uint64_t fp, int64_t now):
        """Test hook: run a claim for ``fp`` up to its lock and stop, as a
        process killed mid-claim would.  Returns the slot index."""
        cdef Engine* e = &self.engine
        cdef fl_slot* b1 = _bucket1(e, fp)
        cdef fl_slot* b2 = _bucket2(e, fp)
        cdef fl_slot* s
        cdef int64_t t
        cdef fl_slot* x
        _vacancy(b1, now, &s, &x)
        if s == NULL:
            _vacancy(b2, now, &s, &x)
        if s == NULL:
            raise TableFullError("no free slot to hold")
        t = fl_load_i64(&s.tat)
        if not fl_cas_i64(&s.tat, &t, _my_lock):
            raise RuntimeError("slot changed")
        fl_store_u64_sc(&s.fp, fp)
        return s - e.slots


cdef inline uint64_t _derive(uint64_t k0, uint64_t k1, bytes tag):
    return fl_siphash13(k0, k1, <const unsigned char*>PyBytes_AS_STRING(tag),
                        PyBytes_GET_SIZE(tag))


def check_gcra(int64_t emission_interval_ns, int64_t burst, clock=None):
    """Refuse GCRA parameters no store can run (every store calls this, so
    they all refuse alike): the interval, the burst, and a tolerance that
    keeps time sums inside int64."""
    if emission_interval_ns < 1:
        raise ValueError(f"emission interval must be >= 1 ns, got {emission_interval_ns}")
    if burst < 1:
        raise ValueError(f"burst must be >= 1, got {burst}")
    if burst > MAX_TOLERANCE_NS // emission_interval_ns:
        raise ValueError(
            f"burst x emission interval must be <= {MAX_TOLERANCE_NS} ns, got "
            f"{burst} x {emission_interval_ns}")
    if clock is not None and not callable(clock):
        raise TypeError(f"clock must be callable or None, got {clock!r}")


cdef class _Keyed:
    """What every user of a table shares: the view, the per-name hash keys
    (so keys of different names never share state and the name costs nothing
    per call), and key -> fingerprint."""

    cdef TableView table
    cdef Engine* eng
    cdef uint64_t ks0, ks1, ki0, ki1
    cdef readonly str name
    cdef readonly int on_full
    cdef uint64_t metric       # registry entry of this name and kind
    cdef uint64_t* counts      # its counters in this process's stripe
    cdef bint counts_shared
    cdef long counts_gen       # _fork_gen when ``counts`` was found

    def __cinit__(self, TableView table not None, str name not None, *args, **kwargs):
        self.table = table
        self.eng = &table.engine
        self.name = name
        cdef bytes n = name.encode("utf-8")
        cdef uint64_t s0 = table.secret0, s1 = table.secret1
        self.ks0 = _derive(s0, s1, b"fastlimit/str/0/" + n)
        self.ks1 = _derive(s0, s1, b"fastlimit/str/1/" + n)
        self.ki0 = _derive(s0, s1, b"fastlimit/int/0/" + n)
        self.ki1 = _derive(s0, s1, b"fastlimit/int/1/" + n)

    cdef void _register(self, uint32_t kind, int64_t p1, int64_t p2) noexcept:
        """Enter this name in the table's metrics registry (subclasses call it
        once their parameters are known)."""
        cdef bytes n = self.name.encode("utf-8")
        cdef uint64_t id = _derive(self.table.secret0, self.table.secret1,
                                   b"fastlimit/metric/%d/" % kind + n)
        self.metric = self.table._register(id if id else 1, kind, p1, p2, n)

    cdef inline void _count(self, int r, uint64_t n) noexcept:
        """Add ``n`` checks with result ``r`` (R_ALLOWED, R_DENIED, or a
        negative no-slot result) to this process's counters."""
        cdef uint64_t* c
        if fl_unlikely(self.counts_gen != _fork_gen):
            self.counts = self.table._stripe(&self.counts_shared) + self.metric * NCOUNTERS
            self.counts_gen = _fork_gen
        c = self.counts + (r + 1 if r >= R_FULL else 0)
        if self.counts_shared:
            fl_add_u64(c, n)
        else:
            fl_inc_owned_u64(c, n)

    cdef inline uint64_t _fingerprint(self, object key) except 0:
        cdef Py_ssize_t n
        cdef const char* p
        cdef uint64_t h
        if PyUnicode_Check(key):
            p = PyUnicode_AsUTF8AndSize(key, &n)
            h = fl_siphash13(self.ks0, self.ks1, <const unsigned char*>p, n)
        elif PyBytes_Check(key):
            h = fl_siphash13(self.ks0, self.ks1,
                             <const unsigned char*>PyBytes_AS_STRING(key),
                             PyBytes_GET_SIZE(key))
        elif PyLong_Check(key):
            h = fl_siphash13_u64(self.ki0, self.ki1, _int_key(key))
        else:
            raise TypeError(f"keys must be str, bytes or int, got {type(key).__name__}")
        return h if h else 1

    def fingerprint(self, key):
        """The 64-bit table fingerprint of ``key`` under this name."""
        return self._fingerprint(key)

    cdef inline Engine* _engine(self) except NULL:
        if self.eng.slots == NULL:
            raise ValueError(f"the table of {self.name!r} is closed")
        return self.eng

    cdef int _set_on_full(self, int on_full) except -1:
        if on_full not in (ON_FULL_DENY, ON_FULL_ALLOW, ON_FULL_RAISE):
            raise ValueError(f"on_full must be 0, 1 or 2, got {on_full}")
        self.on_full = on_full
        return 0

    cdef _raise_full(self, key, int r):
        if r == R_TIMEOUT:
            raise TableFullError(
                f"key {key!r} of {self.name!r}: its slot is locked by a stalled process")
        raise TableFullError(
            f"no free slot for key {key!r} of {self.name!r}: both of its buckets hold "
            f"live keys (open the table with a larger capacity)")

    def reset(self, key):
        """Forget ``key``'s state: it starts afresh."""
        cdef uint64_t fp = self._fingerprint(key)
        cdef Engine* e = self._engine()
        cdef fl_slot* s = NULL
        cdef int64_t t = 0
        cdef int r
        while True:
            r = _find(e, fp, _bucket1(e, fp), _bucket2(e, fp), &s, &t)
            if r == FOUND:
                if fl_cas_i64(&s.tat, &t, FL_FREE):
                    return
            elif r == ABSENT:
                return
            elif r == R_TIMEOUT:
                raise TimeoutError(
                    f"key {key!r} of {self.name!r} is locked by a stalled process")


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

    cdef readonly int64_t emission_interval_ns
    cdef readonly int64_t burst
    cdef readonly int64_t tolerance_ns
    cdef readonly object clock

    def __cinit__(self, TableView table not None, str name not None,
                  int64_t emission_interval_ns, int64_t burst, clock=None,
                  int on_full=ON_FULL_DENY, bint register=True):
        check_gcra(emission_interval_ns, burst, clock)
        self._set_on_full(on_full)
        self.emission_interval_ns = emission_interval_ns
        self.burst = burst
        self.tolerance_ns = burst * emission_interval_ns
        self.clock = clock
        if register:  # tools that only look (fastlimit inspect) state nothing
            self._register(KIND_RATE, emission_interval_ns, burst)

    cdef inline int64_t _now(self) except? -1:
        if self.clock is None:
            return mono_ns()
        return _clock_ns(self.clock)

    cdef inline int64_t _cost(self, object cost) except -1:
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

    cdef inline int64_t _increment(self, int64_t cost) noexcept:
        return (cost if cost else 1) * self.emission_interval_ns

    cdef inline int _step(self, key, object cost, int64_t* now, int64_t* tat,
                          int64_t* inc) except -3:
        cdef uint64_t fp = self._fingerprint(key)
        cdef Engine* e = self._engine()
        cdef int64_t n = self._cost(cost)
        inc[0] = self._increment(n)
        now[0] = self._now()
        return gcra(e, fp, now[0], inc[0], self.tolerance_ns, n != 0, tat)

    def allow(self, key, cost=1):
        """Count a hit of ``cost`` on ``key`` if it passes; return whether it did."""
        cdef int64_t now, tat, inc
        cdef int r = self._step(key, cost, &now, &tat, &inc)
        self._count(r, 1)
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
        cdef int64_t now, tat, inc
        cdef int r = self._step(key, cost, &now, &tat, &inc)
        self._count(r, 1)
        return self._decision(key, r, now, tat, inc)

    def peek(self, key, cost=1):
        """The Decision a hit of ``cost`` would get now, counting nothing."""
        cdef int64_t now, tat, inc
        cdef uint64_t fp = self._fingerprint(key)
        cdef Engine* e = self._engine()
        inc = self._increment(self._cost(cost))
        now = self._now()
        cdef int r = gcra(e, fp, now, inc, self.tolerance_ns, False, &tat)
        return self._decision(key, r, now, tat, inc)

    def refund(self, key, cost=1):
        """Give back a hit of ``cost`` counted earlier: ``tat -= cost x T``.

        For composite checks: when one limit of several denies, the hits
        already counted on the others are refunded, which leaves their state
        as if the request never came (a key whose tat falls to ``now`` or
        below is fresh either way).  Returns False if the key has no state.
        """
        cdef uint64_t fp = self._fingerprint(key)
        cdef Engine* e = self._engine()
        cdef int64_t n = self._cost(cost)
        cdef int64_t inc = self._increment(n)
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
        cdef uint64_t fp = self._fingerprint(key)
        cdef Engine* e = self._engine()
        cdef int64_t units = self._cost(cost)
        cdef int64_t inc = self._increment(units)
        cdef int64_t now, tat = 0, wait
        cdef int r
        if not 0 <= max_wait_ns <= MAX_TOLERANCE_NS:
            raise ValueError(f"max_wait_ns must be in [0, {MAX_TOLERANCE_NS}], got {max_wait_ns}")
        now = self._now()
        if units == 0:
            r = gcra(e, fp, now, inc, self.tolerance_ns, False, &tat)
            if r >= 0:
                tat = tat if tat > now else now
                wait = tat + inc - self.tolerance_ns - now
                wait = wait if wait > 0 else 0
                return (now + wait if wait <= max_wait_ns else -1), tat
        else:
            r = _book(e, fp, now, now, inc, self.tolerance_ns, max_wait_ns, &tat)
            self._count(r, 1)  # a booking is a check that passes; a refusal, one denied
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
        cdef uint64_t fp = self._fingerprint(key)
        cdef Engine* e = self._engine()
        cdef int64_t units = self._cost(cost)
        cdef int64_t inc = self._increment(units)
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
        cdef uint64_t fp = self._fingerprint(key)
        cdef Engine* e = self._engine()
        cdef int64_t now, tat = 0
        cdef int r
        if not 0 <= ahead_ns <= MAX_TOLERANCE_NS:
            raise ValueError(f"ahead_ns must be in [0, {MAX_TOLERANCE_NS}], got {ahead_ns}")
        now = self._now()
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
        if not isinstance(keys, (np.ndarray, list, tuple)):
            keys = list(keys)
        cdef Py_ssize_t n = len(keys), i
        cdef object src_arr
        cdef const uint64_t[::1] src
        cdef uint64_t[::1] fps
        cdef bint ints = isinstance(keys, np.ndarray)
        if ints:
            if keys.dtype.kind not in "iu":
                raise TypeError(f"key arrays must hold integers, got dtype {keys.dtype}")
            if keys.ndim != 1:
                raise ValueError(f"key arrays must be one-dimensional, got shape {keys.shape}")
            src_arr = np.ascontiguousarray(keys).astype(np.uint64, copy=False)
        else:
            src_arr = np.empty(n, dtype=np.uint64)
            fps = src_arr
            for i in range(n):
                fps[i] = self._fingerprint(keys[i])
        src = src_arr
        cdef Engine* e = self._engine()
        cdef int64_t units = self._cost(cost)
        cdef int64_t inc = self._increment(units)
        cdef int64_t now = self._now()
        cdef object out_arr = np.empty(n, dtype=np.bool_)
        cdef unsigned char[::1] out = out_arr.view(np.uint8)
        cdef Py_ssize_t failed = -1
        cdef uint64_t tally[NCOUNTERS]
        tally[0] = tally[1] = tally[2] = 0
        if n:
            with nogil:
                failed = _batch(e, &src[0], ints, self.ki0, self.ki1, n, now, inc,
                                self.tolerance_ns, units != 0, self.on_full, &out[0], tally)
            self._count(R_FULL, tally[0])
            self._count(R_DENIED, tally[1])
            self._count(R_ALLOWED, tally[2])
        if failed >= 0:
            self._raise_full(keys[failed], R_FULL)
        return out_arr

    cdef Decision _decision(self, key, int r, int64_t now, int64_t tat, int64_t inc):
        cdef Decision d = Decision.__new__(Decision)
        cdef int64_t ahead, remaining
        d.limit = self.burst
        if r < 0:
            if self.on_full == ON_FULL_RAISE:
                self._raise_full(key, r)
            if self.on_full == ON_FULL_DENY:
                d.allowed = False
                d.remaining = 0
                d.reset_after_ns = 0
                d.retry_after_ns = inc
                return d
            # allow: answer as for a key seen for the first time
            r = R_ALLOWED
            tat = now + inc
        d.allowed = r == R_ALLOWED
        ahead = tat - now
        if ahead < 0:
            ahead = 0
        remaining = (self.tolerance_ns - ahead) // self.emission_interval_ns
        d.remaining = 0 if remaining < 0 else (self.burst if remaining > self.burst else remaining)
        d.reset_after_ns = ahead
        d.retry_after_ns = 0 if d.allowed else (tat if tat > now else now) + inc - self.tolerance_ns - now
        return d


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
            if mode != Q_CONSUME or cost == 0:
                return R_ALLOWED
            if cost > limit:
                return R_DENIED
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

    cdef readonly int64_t limit

    def __cinit__(self, TableView table not None, str name not None, int64_t limit,
                  int on_full=ON_FULL_DENY, bint register=True):
        if not 1 <= limit <= QUOTA_MAX_COUNT:
            raise ValueError(f"a quota limit must be between 1 and {QUOTA_MAX_COUNT}, got {limit}")
        self._set_on_full(on_full)
        self.limit = limit
        if register:
            self._register(KIND_QUOTA, limit, 0)

    def step(self, key, int64_t tag, int64_t cost, int mode, int64_t left_ns=0):
        """(result, count): result is 1 allowed, 0 denied, -1 no slot, -2
        slot locked by a stalled process; count is the period's count.

        ``left_ns`` (the time to the period's end) is part of the store
        protocol for stores that must expire keys (Redis); the table needs
        none: a slot of an older period is free for reuse."""
        cdef uint64_t fp = self._fingerprint(key)
        cdef Engine* e = self._engine()
        cdef int64_t count = 0
        cdef int r
        if not 1 <= tag <= QUOTA_MAX_TAG:
            raise ValueError(f"period tag out of range: {tag}")
        if cost < 0:
            raise ValueError(f"cost must be >= 0, got {cost}")
        if mode not in (Q_PEEK, Q_CONSUME, Q_REFUND):
            raise ValueError(f"bad mode {mode}")
        r = quota_step(e, fp, tag, self.limit, cost, mode, &count)
        if mode == Q_CONSUME:
            self._count(r, 1)
        if r < 0 and self.on_full == ON_FULL_RAISE:
            self._raise_full(key, r)
        return r, count


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

cdef extern from *:
    """
    #define FL_LEASE_BIT ((int64_t)0x4000000000000000LL)
    #define FL_IS_LEASE(t) ((t) > 0 && ((t) & FL_LEASE_BIT))
    """
    const int64_t FL_LEASE_BIT
    bint FL_IS_LEASE(int64_t) nogil


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

    cdef readonly uint64_t reclaimed

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
        cdef uint64_t fp = self._fingerprint(key)
        cdef Engine* e = self._engine()
        cdef int64_t mine = FL_LEASE_BIT | (_my_lock & ~FL_LOCK_BITS)
        cdef int64_t i, j, t = 0, now
        cdef uint64_t lfp
        cdef fl_slot* s = NULL
        cdef int r, problem = 0
        if limit < 1:
            raise ValueError(f"a concurrency limit must be >= 1, got {limit}")
        cdef int64_t got = -1
        with nogil:
            now = mono_ns()
            for j in range(limit):
                i = (start + j) % limit
                lfp = _lease_fp(fp, i)
                r = _take_lease(e, lfp, now, mine)
                if r == R_ALLOWED:
                    got = i
                    break
                if r < 0:
                    problem = r
            if got < 0:
                # every lease looked held: replace holders that are gone
                for i in range(limit):
                    lfp = _lease_fp(fp, i)
                    if _find(e, lfp, _bucket1(e, lfp), _bucket2(e, lfp), &s, &t) != FOUND:
                        continue
                    if FL_IS_LEASE(t) and _holder_dead(t) and fl_cas_i64(&s.tat, &t, mine):
                        got = i
                        break
                if got >= 0:
                    self.reclaimed += 1
        self._count(R_ALLOWED if got >= 0 else (problem if problem else R_DENIED), 1)
        if got >= 0:
            return got
        if problem:
            if self.on_full == ON_FULL_RAISE:
                self._raise_full(key, problem)
            return -2 if problem == R_FULL else -3
        return -1

    def release(self, key, int64_t index):
        """Give lease ``index`` of ``key`` back; False if this process did not hold it."""
        cdef uint64_t lfp = _lease_fp(self._fingerprint(key), index)
        cdef Engine* e = self._engine()
        cdef int64_t mine = FL_LEASE_BIT | (_my_lock & ~FL_LOCK_BITS)
        cdef int64_t t = 0
        cdef fl_slot* s = NULL
        while True:
            r = _find(e, lfp, _bucket1(e, lfp), _bucket2(e, lfp), &s, &t)
            if r == RETRY:
                continue
            if r != FOUND or t != mine:
                return False
            if fl_cas_i64(&s.tat, &t, FL_FREE):
                return True

    def in_flight(self, key, int64_t limit):
        """How many of ``key``'s first ``limit`` leases are held."""
        cdef uint64_t fp = self._fingerprint(key)
        cdef Engine* e = self._engine()
        cdef int64_t i, t = 0, n = 0
        cdef uint64_t lfp
        cdef fl_slot* s = NULL
        for i in range(limit):
            lfp = _lease_fp(fp, i)
            if _find(e, lfp, _bucket1(e, lfp), _bucket2(e, lfp), &s, &t) == FOUND and FL_IS_LEASE(t):
                n += 1
        return n


cdef int _take_lease(Engine* e, uint64_t fp, int64_t now, int64_t mine) noexcept nogil:
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
            r = _claim(e, fp, b1, b2, now, mine)
            if r == FOUND:
                return R_ALLOWED
        if r == RETRY:
            continue
        if r == R_FULL:
            fl_add_u64(&e.counters[C_FULL], 1)
        return r


cdef inline uint64_t _int_fp(uint64_t k0, uint64_t k1, uint64_t key) noexcept nogil:
    cdef uint64_t h = fl_siphash13_u64(k0, k1, key)
    return h if h else 1


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


cdef inline uint64_t _int_key(object key) except? 0xFFFFFFFFFFFFFFFF:
    # ints are hashed as their 64-bit two's complement pattern
    if key < 0:
        if key < -(1 << 63):
            raise ValueError(f"int keys must fit in 64 bits, got {key}")
        return <uint64_t><int64_t>key
    if key >= (1 << 64):
        raise ValueError(f"int keys must fit in 64 bits, got {key}")
    return <uint64_t>key


def siphash13(uint64_t k0, uint64_t k1, bytes data not None):
    """SipHash-1-3 of ``data`` under key (k0, k1): exposed for tests."""
    return fl_siphash13(k0, k1, <const unsigned char*>PyBytes_AS_STRING(data),
                        PyBytes_GET_SIZE(data))


def siphash13_u64(uint64_t k0, uint64_t k1, uint64_t word):
    """SipHash-1-3 of the 8 little-endian bytes of ``word``: exposed for tests."""
    return fl_siphash13_u64(k0, k1, word)


def _set_lock_wait_limit(int64_t ns):
    """Test hook: how long a waiter lets a live lock owner stall."""
    global LOCK_WAIT_LIMIT_NS
    LOCK_WAIT_LIMIT_NS = ns
