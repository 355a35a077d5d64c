# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, binding=False
"""The floor to compare fastlimit against: a plain C GCRA, no table logic.

One int64 tat per slot in a flat array, the slot picked by the key's cached
Python hash (valid in one process only), one clock read and one CAS per call.
No keyed hash, no buckets, no claims: what a minimal C limiter costs when
called from Python on memory of the same size.
"""

from libc.stdint cimport int64_t, uint64_t
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC


cdef extern from *:
    """
    static inline int plain_cas(int64_t *p, int64_t *e, int64_t d) {
        return __atomic_compare_exchange_n(p, e, d, 0, __ATOMIC_SEQ_CST, __ATOMIC_ACQUIRE);
    }
    """
    bint plain_cas(int64_t*, int64_t*, int64_t) nogil


cdef class PlainGcra:
    cdef int64_t* tat
    cdef uint64_t n
    cdef int64_t t, tau
    cdef object buf

    def __init__(self, buffer, int64_t emission_interval_ns, int64_t burst):
        cdef int64_t[::1] mv = buffer
        self.buf = mv
        self.tat = &mv[0]
        self.n = mv.shape[0]
        self.t = emission_interval_ns
        self.tau = burst * emission_interval_ns

    def allow(self, key):
        cdef uint64_t h = <uint64_t>hash(key)
        cdef int64_t* p = self.tat + (h ^ (h >> 29)) % self.n
        cdef timespec ts
        clock_gettime(CLOCK_MONOTONIC, &ts)
        cdef int64_t now = ts.tv_sec * 1000000000 + ts.tv_nsec
        cdef int64_t old = p[0], new
        while True:
            new = (old if old > now else now) + self.t
            if new - now > self.tau:
                return False
            if plain_cas(p, &old, new):
                return True
