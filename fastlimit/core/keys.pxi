# Keys: what every user of a table shares (the per-name hash keys, key ->
# fingerprint, the on_full policy, metrics counting): the thin layer between
# Python objects and the integers the core works on.  Included by
# fastlimit/_core.pyx.

cdef inline uint64_t _derive(uint64_t k0, uint64_t k1, bytes tag):
    return fl_siphash13(k0, k1, <const unsigned char*>PyBytes_AS_STRING(tag),
                        PyBytes_GET_SIZE(tag))


cdef class _Keyed:
    """What every user of a table shares: the view, the per-name hash keys
    (so keys of different names never share state and the name costs nothing
    per call), and key -> fingerprint."""

    # the fields and C-level methods are declared in _core.pxd

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

    def fingerprint(self, key):
        """The 64-bit table fingerprint of ``key`` under this name."""
        return _fingerprint(self, key)

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
        cdef uint64_t fp = _fingerprint(self, key)
        cdef Engine* e = _engine(self)
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


cdef inline void _count(_Keyed self, int r, uint64_t n) noexcept:
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

cdef inline uint64_t _fingerprint(_Keyed self, object key) except 0:
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

cdef inline Engine* _engine(_Keyed self) except NULL:
    if self.eng.slots == NULL:
        raise ValueError(f"the table of {self.name!r} is closed")
    return self.eng


cdef inline uint64_t _int_fp(uint64_t k0, uint64_t k1, uint64_t key) noexcept nogil:
    cdef uint64_t h = fl_siphash13_u64(k0, k1, key)
    return h if h else 1


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
