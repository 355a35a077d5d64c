# What the policy's compiled decisions call of the header fields.
from libc.stdint cimport int64_t

from fastlimit._core cimport fl_answer


cdef enum:
    RESET_DELTA = 0
    RESET_EPOCH = 1
    RESET_ISO = 2


# What header fields need of a limit's window: a Rate's numbers, or a
# quota's calendar period.
cdef struct Window:
    int64_t emission_interval_ns
    int64_t limit
    int64_t period_ns
    bint calendar


cdef int64_t window_next_unit(const fl_answer* d, const Window* w) noexcept
cdef int64_t retry_seconds(const fl_answer* d, const Window* w) noexcept
cdef int binding(fl_answer** answers, int n) noexcept


cdef class Fields:
    cdef int reset
    cdef bint legacy, ietf
    cdef dict items   # limit name -> its structured-field String

    cdef object _item(self, name)
    cdef list fields(self, const fl_answer* d, name, const Window* w, object wall_now_ns,
                     bint raw)
