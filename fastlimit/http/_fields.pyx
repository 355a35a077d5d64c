# cython: language_level=3, cdivision=True
"""Rate-limit header fields, compiled: every response renders them.

The one rendering of the fields a :class:`~fastlimit.HeaderStyle` asks
for, as text (WSGI, ``PolicyDecision.headers``) or as ASGI's raw lower-case
bytes, from a check's answer: ``X-RateLimit-Limit``, ``-Remaining`` and
``-Reset`` (seconds from now, Unix seconds or ISO 8601), the IETF
``RateLimit-Policy`` and ``RateLimit`` fields, and ``Retry-After`` on a
denial.  ``HeaderStyle.render`` and the policy's decisions both call it,
so the middlewares and ``Policy.hit`` cannot disagree on a field.
"""

cimport cython
from libc.stdint cimport int64_t
from libc.stdio cimport snprintf
from libc.time cimport time_t, tm

from fastlimit._core cimport Decision, fl_answer, next_unit
from fastlimit.limiters._counting cimport Window

import time

from fastlimit.errors import ConfigurationError


cdef extern from "Python.h":
    object PyUnicode_DecodeASCII(const char *s, Py_ssize_t size, const char *errors)
    object PyBytes_FromStringAndSize(const char *s, Py_ssize_t size)
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void* PyUnicode_DATA(object o)


cdef extern from "<string.h>" nogil:
    void* memcpy(void* dest, const void* src, size_t n)


cdef extern from "<time.h>" nogil:
    tm* gmtime_r(const time_t* t, tm* out)


cdef int64_t NS = 1_000_000_000
# 2**62 as a C constant: written as 2**62 in a comparison, Cython compares
# Python ints (two ints made per response)
cdef int64_t _BOUND = (<int64_t>1) << 62
# X-RateLimit-Limit and -Remaining of a request no limit applies to: the
# largest signed 32-bit integer, which every client's int parses
cdef int64_t UNLIMITED = 2_147_483_647
UNLIMITED_FIELD = UNLIMITED

RESET_CODES = {"delta": RESET_DELTA, "epoch": RESET_EPOCH, "iso": RESET_ISO}


cdef const char* _PAIRS = (b"00010203040506070809101112131415161718192021222324252627282930313233"
                           b"34353637383940414243444546474849505152535455565758596061626364656667"
                           b"6869707172737475767778798081828384858687888990919293949596979899")


cdef object _decimal(long long value, bint raw):
    """str(value) (bytes if ``raw``) for any value, without an int object
    first for the non-negative ones every response has."""
    cdef char digits[24]
    cdef int at = 24, two
    if value < 0:
        return _text(str(value), raw)
    while value >= 100:  # two digits a step: a Unix time is five steps
        two = <int>(value % 100) * 2
        value //= 100
        at -= 2
        digits[at] = _PAIRS[two]
        digits[at + 1] = _PAIRS[two + 1]
    if value >= 10:
        two = <int>value * 2
        at -= 2
        digits[at] = _PAIRS[two]
        digits[at + 1] = _PAIRS[two + 1]
    else:
        at -= 1
        digits[at] = <char>(48 + value)
    if raw:
        return PyBytes_FromStringAndSize(digits + at, 24 - at)
    return _ascii(digits + at, 24 - at)


cdef inline object _ascii(const char* s, Py_ssize_t n):
    """A str of ``n`` ASCII bytes known to be ASCII: no decoder's checks."""
    out = PyUnicode_New(n, 127)
    memcpy(PyUnicode_DATA(out), s, n)
    return out


cdef inline object _text(str value, bint raw):
    return value.encode("latin-1") if raw else value


cdef inline int64_t _ceil_s(int64_t ns) noexcept:
    """ceil(ns / 1 s) without an add that could overflow near the top of int64."""
    return ns // NS + (1 if ns % NS > 0 else 0) if ns >= 0 else -((-ns) // NS)


cdef object _reset(int64_t after_ns, int fmt, int64_t wall_now_ns, bint raw):
    """X-RateLimit-Reset for a key replenished in ``after_ns`` (below 0: 0)."""
    cdef long long reset, at_ms
    cdef time_t seconds
    cdef tm t
    cdef char out[40]
    cdef int n
    if fmt == RESET_ISO:
        at = <object>wall_now_ns + max(0, after_ns)  # in Python ints: it may pass 2**63
        if 0 <= at < 253402300800 * NS:  # to the end of year 9999
            at_ms = <long long>at
            at_ms = at_ms // 1_000_000 + (1 if at_ms % 1_000_000 else 0)  # rounded up
            seconds = at_ms // 1000
            gmtime_r(&seconds, &t)
            n = snprintf(out, sizeof(out), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                         t.tm_year + 1900, t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min,
                         t.tm_sec, <int>(at_ms % 1000))
            return PyBytes_FromStringAndSize(out, n) if raw else PyUnicode_DecodeASCII(
                out, n, NULL)
        seconds_py, ms = divmod(-(-at // 1_000_000), 1000)  # what Python's clock says
        return _text(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds_py))
                     + f".{ms:03d}Z", raw)
    if not (-_BOUND < after_ns < _BOUND and -_BOUND < wall_now_ns < _BOUND):
        # far outside anything a clock gives: Python's unbounded ints
        at = max(0, <object>after_ns) + (<object>wall_now_ns if fmt == RESET_EPOCH else 0)
        return _text(str(-(-at // NS)), raw)
    reset = after_ns
    if reset < 0:
        reset = 0
    if fmt == RESET_EPOCH:
        reset += <long long>wall_now_ns
    return _decimal(_ceil_s(reset), raw)


cdef int64_t window_next_unit(const fl_answer* d, const Window* w) noexcept:
    """Nanoseconds until the key has one more unit than now (0: replenished)."""
    if w.calendar:  # a quota refills all at once, when its period ends
        return d.reset_after_ns if d.remaining < d.limit else 0
    return next_unit(d.limit, d.reset_after_ns, w.emission_interval_ns)


cdef int64_t retry_seconds(const fl_answer* d, const Window* w) noexcept:
    """Retry-After of a denial: whole seconds, rounded up, at least 1, and
    never earlier than the ``t`` of the RateLimit field."""
    cdef int64_t a = _ceil_s(d.retry_after_ns), b = _ceil_s(window_next_unit(d, w))
    if b > a:
        a = b
    return a if a > 1 else 1


cdef int binding(fl_answer** answers, int n) noexcept:
    """Index of the answer headers describe: among denials, the one with
    the longest wait; when all allow, the fewest left (then the longest to
    replenish).  The first such, on ties."""
    cdef int i, best = -1
    cdef bint denied = False
    for i in range(n):
        if not answers[i].allowed:
            if not denied or answers[i].retry_after_ns > answers[best].retry_after_ns:
                best = i
            denied = True
    if denied:
        return best
    best = 0
    for i in range(1, n):
        if answers[i].remaining < answers[best].remaining or (
                answers[i].remaining == answers[best].remaining
                and answers[i].reset_after_ns > answers[best].reset_after_ns):
            best = i
    return best


cdef fl_answer answer_of(Decision d) noexcept:
    cdef fl_answer a
    a.allowed = d.allowed
    a.limit = d.limit
    a.remaining = d.remaining
    a.reset_after_ns = d.reset_after_ns
    a.retry_after_ns = d.retry_after_ns
    return a


cdef Window window_of(object window):
    """A Rate's or a quota's CalendarWindow numbers."""
    cdef Window w
    w.period_ns = window.period_ns
    w.calendar = not hasattr(window, "emission_interval_ns")
    w.emission_interval_ns = 0 if w.calendar else window.emission_interval_ns
    w.limit = 0 if w.calendar else window.limit
    return w


def next_unit_ns(decision, window):
    """See fastlimit.http.headers.next_unit_ns."""
    cdef fl_answer a = answer_of(decision)
    cdef Window w = window_of(window)
    return window_next_unit(&a, &w)


def retry_after_seconds(decision, window):
    """See fastlimit.http.headers.retry_after_seconds."""
    cdef fl_answer a = answer_of(decision)
    cdef Window w = window_of(window)
    return retry_seconds(&a, &w)


def most_restrictive(decisions):
    """See fastlimit.http.headers.most_restrictive."""
    cdef int n = len(decisions), i
    if n == 0:
        raise ValueError("no decisions to choose from")
    cdef fl_answer[16] small
    cdef fl_answer* ptrs[16]
    if n > 16:  # headers of more limits than any policy has: the slow way
        denied = [i for i, d in enumerate(decisions) if not d.allowed]
        if denied:
            return max(denied, key=lambda i: decisions[i].retry_after_ns)
        return min(range(n), key=lambda i: (decisions[i].remaining,
                                            -decisions[i].reset_after_ns))
    for i in range(n):
        small[i] = answer_of(decisions[i])
        ptrs[i] = &small[i]
    return binding(ptrs, n)


def sf_string(text):
    """See fastlimit.http.headers.sf_string."""
    if not all(" " <= c <= "~" for c in text):
        raise ConfigurationError(
            f"{text!r} cannot be a structured-field String: use printable ASCII only")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


cdef class Fields:
    """The fields one header style renders (what ``HeaderStyle`` holds)."""

    def __cinit__(self, str reset, bint legacy, bint ietf):
        if reset not in RESET_CODES:
            raise ConfigurationError(
                f"reset format must be one of ('epoch', 'iso', 'delta'), got {reset!r}")
        self.reset = RESET_CODES[reset]
        self.legacy = legacy
        self.ietf = ietf
        self.items = {}

    cdef object _item(self, name):
        found = self.items.get(name)
        if found is None:
            if len(self.items) >= 4096:  # names come from policies: a handful
                self.items = {}
            found = self.items[name] = sf_string(name)
        return found

    def render(self, Decision decision, name, window, int64_t wall_now_ns):
        """What ``HeaderStyle.render`` returns (text pairs)."""
        cdef fl_answer a = answer_of(decision)
        cdef Window w = window_of(window)
        return self.fields(&a, name, &w, wall_now_ns, False)

    cdef str policy_item(self, name, const fl_answer* d, const Window* w):
        """The RateLimit-Policy item of one rate or quota: ``"api";q=30;w=60``."""
        cdef int64_t span
        # w is the span the quota q refills over: the period when the
        # burst is the rate's limit, burst x T otherwise; whole seconds
        if w.calendar:
            span = _ceil_s(w.period_ns)
        else:  # in Python ints: limit x period may exceed 64 bits
            span = -(-(<object>d.limit * <object>w.period_ns) // (<object>w.limit * NS))
        return f"{self._item(name)};q={d.limit};w={span if span > 1 else 1}"

    cdef str lease_item(self, name, int64_t leases):
        """The RateLimit-Policy item of a concurrency limit: no window, its
        unit the draft's ``concurrent-requests``."""
        return f'{self._item(name)};q={leases};qu="concurrent-requests"'

    cdef list fields(self, const fl_answer* d, name, const Window* w, int64_t wall_now_ns,
                     bint raw, str policies=None):
        """The fields of one limit's answer; ``policies``: the whole
        RateLimit-Policy list when more than this limit applies."""
        cdef list out = []
        cdef int64_t t
        if self.legacy:
            out.append((b"x-ratelimit-limit" if raw else "X-RateLimit-Limit",
                        _decimal(d.limit, raw)))
            out.append((b"x-ratelimit-remaining" if raw else "X-RateLimit-Remaining",
                        _decimal(d.remaining, raw)))
            out.append((b"x-ratelimit-reset" if raw else "X-RateLimit-Reset",
                        _reset(d.reset_after_ns, self.reset, wall_now_ns, raw)))
        if self.ietf:
            policy = policies if policies is not None else self.policy_item(name, d, w)
            t = _ceil_s(window_next_unit(d, w))
            state = f"{self._item(name)};r={d.remaining};t={t}"
            out.append((b"ratelimit-policy", policy.encode()) if raw else
                       ("RateLimit-Policy", policy))
            out.append((b"ratelimit", state.encode()) if raw else ("RateLimit", state))
        if not d.allowed:
            out.append((b"retry-after" if raw else "Retry-After",
                        _decimal(retry_seconds(d, w), raw)))
        return out

    cdef list concurrency(self, name, int64_t leases, int64_t retry_s, int64_t wall_now_ns,
                          bint raw, str policies=None):
        """The fields of a concurrency limit's denial: its own numbers (all
        ``leases`` held, none left), more in ``retry_s`` as far as anyone
        can tell: the Reset, ``t`` and Retry-After all say it."""
        cdef list out = []
        if self.legacy:
            out.append((b"x-ratelimit-limit" if raw else "X-RateLimit-Limit",
                        _decimal(leases, raw)))
            out.append((b"x-ratelimit-remaining" if raw else "X-RateLimit-Remaining",
                        _decimal(0, raw)))
            out.append((b"x-ratelimit-reset" if raw else "X-RateLimit-Reset",
                        _reset(retry_s * NS, self.reset, wall_now_ns, raw)))
        if self.ietf:
            policy = policies if policies is not None else self.lease_item(name, leases)
            state = f"{self._item(name)};r=0;t={retry_s}"
            out.append((b"ratelimit-policy", policy.encode()) if raw else
                       ("RateLimit-Policy", policy))
            out.append((b"ratelimit", state.encode()) if raw else ("RateLimit", state))
        out.append((b"retry-after" if raw else "Retry-After", _decimal(retry_s, raw)))
        return out

    cdef list unlimited(self, int64_t wall_now_ns, bint raw, str policies=None):
        """The fields of a request no rate or quota applies to (an
        unlimited tier): legacy fields saying UNLIMITED of UNLIMITED left,
        replenished now, so that a client reading them as numbers (seed
        000's sample does) carries on; ``policies``: the concurrency limits
        that still apply, if any (there is no RateLimit item to send)."""
        cdef list out = []
        if self.legacy:
            out.append((b"x-ratelimit-limit" if raw else "X-RateLimit-Limit",
                        _decimal(UNLIMITED, raw)))
            out.append((b"x-ratelimit-remaining" if raw else "X-RateLimit-Remaining",
                        _decimal(UNLIMITED, raw)))
            out.append((b"x-ratelimit-reset" if raw else "X-RateLimit-Reset",
                        _reset(0, self.reset, wall_now_ns, raw)))
        if self.ietf and policies is not None:
            out.append((b"ratelimit-policy", policies.encode()) if raw else
                       ("RateLimit-Policy", policies))
        return out

    def render_concurrency(self, name, int64_t leases, int64_t retry_s, int64_t wall_now_ns):
        """What ``HeaderStyle.render_concurrency`` returns (text pairs)."""
        return self.concurrency(name, leases, retry_s, wall_now_ns, False)

    def render_unlimited(self, int64_t wall_now_ns):
        """What ``HeaderStyle.render_unlimited`` returns (text pairs)."""
        return self.unlimited(wall_now_ns, False)


def legacy_fields(Decision decision, int reset_format, int64_t wall_now_ns, tuple limit=None):
    """``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` of ``decision``,
    the reset as :func:`reset_seconds` writes it (``reset_format`` 0 delta,
    1 epoch).  ``limit``: the first field, when the caller has it made."""
    cdef fl_answer a = answer_of(decision)
    fmt = RESET_EPOCH if reset_format else RESET_DELTA
    out = [limit or ("X-RateLimit-Limit", _decimal(a.limit, False)),
           ("X-RateLimit-Remaining", _decimal(a.remaining, False)),
           ("X-RateLimit-Reset", _reset(a.reset_after_ns, fmt, wall_now_ns, False))]
    return out
