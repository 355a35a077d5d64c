# What the policy's compiled decisions call of the header fields.
from libc.stdint cimport int64_t

from fastlimit._core cimport fl_answer
from fastlimit.limiters._counting cimport Window


cdef enum:
    RESET_DELTA = 0
    RESET_EPOCH = 1
    RESET_ISO = 2


cdef int64_t window_next_unit(const fl_answer* d, const Window* w) noexcept
cdef int64_t retry_seconds(const fl_answer* d, const Window* w) noexcept
cdef int binding(fl_answer** answers, int n) noexcept


cdef class Fields:
    cdef int reset
    cdef bint legacy, ietf
    cdef dict items   # limit name -> its structured-field String

    cdef object _item(self, name)
    cdef str policy_item(self, name, const fl_answer* d, const Window* w)
    cdef str lease_item(self, name, int64_t leases)
    cdef list fields(self, const fl_answer* d, name, const Window* w, int64_t wall_now_ns,
                     bint raw, str policies=*)
    cdef list concurrency(self, name, int64_t leases, int64_t retry_s, int64_t wall_now_ns,
                          bint raw, str policies=*)
    cdef list unlimited(self, int64_t wall_now_ns, bint raw, str policies=*)
