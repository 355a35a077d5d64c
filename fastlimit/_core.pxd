# What other compiled modules see of the core (fastlimit/_core.pyx and its
# parts in fastlimit/core/): its structs, a Decision's fields, and the C-level
# calls of the classes a store hands out, which the counting loop of the
# limiters (fastlimit/limiters/_counting.pyx) makes without Python calls.
cimport cython
from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef struct fl_slot:
    uint64_t fp
    int64_t tat


cdef struct Engine:
    fl_slot* slots
    uint64_t nbuckets
    uint64_t* counters
    bint evict        # a new key meeting full buckets takes the live rate slot due soonest


cdef struct fl_reg:
    uint64_t id       # 0: free; else a hash of (kind, name) under the table secret
    uint32_t kind
    uint32_t name_len
    int64_t p1        # kind's parameters, for tools: rates (T, burst), quotas (limit)
    int64_t p2
    char name[96]     # the name's first 96 UTF-8 bytes


# What one check answers: a Decision's fields, as C integers.
cdef struct fl_answer:
    bint allowed
    int64_t limit
    int64_t remaining
    int64_t reset_after_ns
    int64_t retry_after_ns


cdef class Decision:
    cdef readonly bint allowed
    cdef readonly int64_t limit
    cdef readonly int64_t remaining
    cdef readonly int64_t reset_after_ns
    cdef readonly int64_t retry_after_ns


cdef Decision decision_of(const fl_answer* a)
cdef int64_t next_unit(int64_t limit, int64_t reset_after_ns,
                       int64_t emission_interval_ns) noexcept nogil


cdef class TableView:
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

    cdef int64_t* _stripe_owner(self, uint64_t i) noexcept
    cdef uint64_t* _stripe(self, bint* shared) noexcept
    cdef uint64_t _register(self, uint64_t id, uint32_t kind, int64_t p1, int64_t p2,
                            bytes name) noexcept


cdef class _Keyed:
    cdef TableView table
    cdef Engine* eng
    cdef uint64_t ks0, ks1, ki0, ki1
    cdef readonly str name
    cdef readonly int on_full
    cdef uint64_t metric       # registry entry of this name and kind
    cdef uint64_t* counts      # its counters in this process's stripe
    cdef bint counts_shared
    cdef long counts_gen       # _fork_gen when ``counts`` was found

    cdef void _register(self, uint32_t kind, int64_t p1, int64_t p2) noexcept
    cdef int _set_on_full(self, int on_full) except -1
    cdef _raise_full(self, key, int r)


@cython.final
cdef class Gcra(_Keyed):
    cdef readonly int64_t emission_interval_ns
    cdef readonly int64_t burst
    cdef readonly int64_t tolerance_ns
    cdef readonly object clock

    cdef int _answer(self, key, int r, int64_t now, int64_t tat, int64_t inc,
                     fl_answer* out) except -1
    cdef int check(self, key, object cost, bint consume, fl_answer* out) except -1
    cdef int give_back(self, key, object cost) except -1
    cdef int64_t take_at(self, key, uint64_t fp, int64_t now, int64_t cost) except -3
    cdef int64_t now_ns(self) except? -1


@cython.final
cdef class QuotaCounter(_Keyed):
    cdef readonly int64_t limit

    cdef int _step(self, key, int64_t tag, int64_t cost, int mode, int64_t* count) except -3
    cdef int count(self, key, int64_t tag, int64_t cost, int mode, int64_t left_ns,
                   fl_answer* out) except -1


@cython.final
cdef class Leases(_Keyed):
    cdef readonly uint64_t reclaimed

    cdef int64_t _take(self, key, int64_t limit, int64_t start, uint64_t* slot=*) except? -9
    cdef int64_t acquire_(self, key, int64_t limit, int64_t start, uint64_t* slot=*) except? -9
    cdef bint give_back(self, key, int64_t index) except -1
    cdef bint give_back_slot(self, uint64_t slot) except -1
