# Per-limiter check counts in the table (registry and per-process stripes),
# and TableView, a table's mapping in this process.  Included by
# fastlimit/_core.pyx.

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

    # the fields are declared in _core.pxd

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
        self.engine.evict = False
        self.secret0 = secret0
        self.secret1 = secret1
        self.reg = <fl_reg*>(base + metrics_offset)
        self.stripes = base + metrics_offset + nlimiters * REG_ENTRY_BYTES
        self.nlimiters = nlimiters
        self.nstripes = nstripes

    cdef int64_t* _stripe_owner(self, uint64_t i) noexcept:
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


def set_evict(TableView view, bint evict):
    """Make new keys that meet full buckets in ``view``'s table take the
    live rate slot due soonest (True) or find the table full (False): a
    choice of this process's mapping, made by ``SharedTable``."""
    view.engine.evict = evict


def header_cas(buffer, Py_ssize_t offset, int64_t expected, int64_t value):
    """Compare-and-swap the 8-byte word at ``offset`` of ``buffer`` (a
    table's header): set it to ``value`` if it holds ``expected``.  Returns
    what it held (``expected`` when the swap happened).  For words that
    processes settle once, such as the clock a table runs on."""
    cdef unsigned char[::1] mv = buffer
    cdef int64_t seen = expected
    if offset < 0 or offset % 8 or offset + 8 > mv.shape[0]:
        raise ValueError(f"offset {offset} is not an aligned word of the buffer")
    if not fl_cas_i64(<int64_t*>(&mv[0] + offset), &seen, value):
        return seen
    return expected
