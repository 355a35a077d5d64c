# cython: language_level=3
"""Rate-limit header fields, compiled: every response renders them.

``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` as text (WSGI) or as
ASGI's raw lower-case bytes, from a Decision, without making an int object
per number.
"""

cimport cython

from fastlimit._core cimport Decision


cdef extern from "Python.h":
    object PyUnicode_DecodeASCII(const char *s, Py_ssize_t size, const char *errors)
    object PyBytes_FromStringAndSize(const char *s, Py_ssize_t size)


@cython.cdivision(True)  # value >= 0: C's / and % are Python's
cdef object _decimal(long long value, bint raw=False):
    """str(value) for value >= 0 (bytes if ``raw``), without making an int
    object first."""
    cdef char digits[24]
    cdef int at = 24
    while True:
        at -= 1
        digits[at] = <char>(48 + value % 10)
        value //= 10
        if value == 0:
            break
    if raw:
        return PyBytes_FromStringAndSize(digits + at, 24 - at)
    return PyUnicode_DecodeASCII(digits + at, 24 - at, NULL)


cdef object _reset(after_ns, int reset_format, wall_now_ns, bint raw):
    if not (-2**62 < after_ns < 2**62 and -2**62 < wall_now_ns < 2**62):
        # far outside anything a clock gives: Python's unbounded ints
        at = max(0, after_ns) + (wall_now_ns if reset_format == 1 else 0)
        return _text(str(-(-at // 1_000_000_000)), raw)
    cdef long long reset = after_ns
    if reset < 0:
        reset = 0
    if reset_format == 1:
        reset += <long long>wall_now_ns
    if reset < 0:  # an epoch before 1970: no sign for _decimal to write
        return _text(str(-(-reset // 1_000_000_000)), raw)
    # rounded up without adding first: reset may be near the top of int64
    return _decimal(reset // 1_000_000_000 + (reset % 1_000_000_000 != 0), raw)


cdef inline object _text(str value, bint raw):
    return value.encode("ascii") if raw else value


cpdef str reset_seconds(after_ns, int reset_format, wall_now_ns):
    """``X-RateLimit-Reset`` in whole seconds, rounded up (a client that
    waits that long finds the key replenished): ``reset_format`` 0 is
    seconds from now, 1 Unix seconds.  ``after_ns`` below 0 counts as 0."""
    return _reset(after_ns, reset_format, wall_now_ns, False)


cdef list decision_fields(Decision decision, int reset_format, wall_now_ns, tuple limit, bint raw):
    cdef long long remaining = decision.remaining
    return [limit,
            (b"x-ratelimit-remaining" if raw else "X-RateLimit-Remaining",
             _decimal(remaining, raw) if remaining >= 0 else _text(str(remaining), raw)),
            (b"x-ratelimit-reset" if raw else "X-RateLimit-Reset",
             _reset(decision.reset_after_ns, reset_format, wall_now_ns, raw))]


cpdef list legacy_fields(decision, int reset_format, wall_now_ns, tuple limit=None):
    """``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` of ``decision``,
    the reset as :func:`reset_seconds` writes it.  ``limit``: the first
    field, when the caller has it made already."""
    if limit is None:
        limit = ("X-RateLimit-Limit", str(decision.limit))
    return decision_fields(decision, reset_format, wall_now_ns, limit, False)


