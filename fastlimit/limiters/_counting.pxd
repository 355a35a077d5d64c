# What the policy's compiled decisions call of the counting loop.
from libc.stdint cimport int64_t

from fastlimit._core cimport Decision, Gcra, QuotaCounter, fl_answer


# What header fields need of a limit's window: a Rate's numbers, or a
# quota's calendar period (the meter says; http/_fields.pyx writes them).
cdef struct Window:
    int64_t emission_interval_ns
    int64_t limit
    int64_t period_ns
    bint calendar


cdef enum:
    KIND_OTHER = 0
    KIND_RATE = 1
    KIND_QUOTA = 2


cdef class Meter:
    cdef readonly object limit    # the Limiter, the Quota, or any meter
    cdef readonly object burst
    cdef int64_t burst_c
    cdef int kind
    cdef object state             # a rate's state, a quota's counts (the store's)
    cdef Gcra gcra                # state, when it is the shared table's
    cdef QuotaCounter counter     # counts, when they are the shared table's
    # quotas: the calendar, the wall clock (None: CLOCK_REALTIME in C), the
    # current period (cached), and what a cost above the limit is called
    cdef object calendar, clock, what
    cdef int64_t tag, start, end
    cdef Window rate_window       # rates: what header fields need of the rate

    cdef int check(self, key, object cost, bint consume, int64_t wall_ns,
                   fl_answer* out) except -1
    cdef int give_back(self, key, object cost) except -1
    cdef int64_t wall(self) except? -1
    cdef int window_at(self, int64_t wall_ns, Window* w) except -1
    cdef _set_burst(self, burst)
    cdef int _period(self, int64_t now) except -1


cdef class Hit:
    cdef readonly Meter meter
    cdef readonly object key
    cdef readonly object name
    cdef readonly bint shadow
    cdef readonly bint done     # answered (else: above a shadow's burst, or not reached)
    cdef bint counted           # consumed (given back if another limit denied)
    cdef readonly bint shadow_denied  # a shadow limit that would have denied
    cdef readonly bint full     # its store had no room for the key (a full quota table)
    cdef fl_answer a

    cdef Decision decision(self)


cdef Hit new_hit(Meter meter, key, name, bint shadow)
cdef Meter with_state(Meter m, object state)
cdef void copy_answer(Decision d, fl_answer* out) noexcept
cdef int over(object cost, Meter m) except -1
cdef capacity(tuple hits, object cost)
cdef int count(tuple hits, object cost, bint consume, int64_t wall_ns) except -2
cdef int count_one(Hit h, object cost, bint consume, int64_t wall_ns) except -2
cdef int64_t wall_now(object clock) except? -1
