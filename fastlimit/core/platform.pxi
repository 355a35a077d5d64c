# The C the core is built on: atomics, SipHash, /proc, and the words that mark
# a slot free or locked.  Included by fastlimit/_core.pyx.

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL


cdef extern from "<sched.h>" nogil:
    int sched_yield()


cdef extern from "atomic.h" nogil:
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


cdef extern from "siphash.h" nogil:
    uint64_t fl_siphash13(uint64_t, uint64_t, const unsigned char*, size_t)
    uint64_t fl_siphash13_u64(uint64_t, uint64_t, uint64_t)


cdef extern from "proc.h" nogil:
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
    #define FL_LEASE_BIT ((int64_t)0x4000000000000000LL)
    #define FL_IS_LEASE(t) ((t) > 0 && ((t) & FL_LEASE_BIT))
    """
    const int64_t FL_LEASE_BIT
    bint FL_IS_LEASE(int64_t) nogil
    const int64_t FL_FREE
    const int64_t FL_LOCK_BITS
    bint FL_IS_LOCK(int64_t) nogil
    const int FL_PID_BITS
    const int64_t FL_PID_MASK
    const uint64_t FL_START_MASK
