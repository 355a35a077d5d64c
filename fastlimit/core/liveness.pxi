# Which process owns a lock or a lease: its pid and start time, packed into
# the word it writes, and whether that process still lives (/proc).  A word is
# recomputed in the child after fork.  Included by fastlimit/_core.pyx.

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
