# What other compiled modules (fastlimit._lane) see of the core: a Decision's
# fields, read in C on the middlewares' per-request path.
from libc.stdint cimport int64_t


cdef class Decision:
    cdef readonly bint allowed
    cdef readonly int64_t limit
    cdef readonly int64_t remaining
    cdef readonly int64_t reset_after_ns
    cdef readonly int64_t retry_after_ns
