# cython: language_level=3, binding=False
"""A policy's decision path, compiled: the one way from a request to a
:class:`PolicyDecision`.

``Policy.hit``, ``Policy.peek``, ``Policy.resolve`` and both middlewares all
run it.  A request ``(method, path, identity, client address)`` is matched
against the routes (:class:`RouteIndex`: a dict for literal paths, a trie of
segments for the rest, never a scan of the rules), its caller classified
(the identity's kind, tier and key), and its limits resolved into hits
(:class:`fastlimit.limiters._counting.Hit`); then its caps are checked, its
concurrency leases taken, and its rates and quotas counted all or none by
the counting loop, on the shared table in C.  The decision makes its
header fields (:mod:`fastlimit.http._fields`), resolution and composite
result only when they are asked for.

Nothing is remembered per request, caller or path: the per-request work
is the same for the millionth distinct key as for the first, so no
attacker's keys can thrash a cache into the slow path.
"""

cimport cython
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_GET_LENGTH
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memchr, memcmp

from fastlimit._core cimport Leases, fl_answer
from fastlimit.http._addr cimport ip_key
from fastlimit.http._fields cimport Fields, Window, binding, retry_seconds
from fastlimit.limiters._counting cimport (
    KIND_OTHER, KIND_QUOTA, KIND_RATE, Hit, Meter, capacity, copy_answer, count, new_hit, over,
    wall_now, with_state)

import logging
import math

from fastlimit.core.gcra import check_cost
from fastlimit.errors import CallbackError, ConfigurationError


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object text)
    const char* PyUnicode_DATA(object text)
    Py_ssize_t PyUnicode_FindChar(object text, Py_UCS4 ch, Py_ssize_t start, Py_ssize_t end,
                                  int direction) except -2
    object PyUnicode_Substring(object text, Py_ssize_t start, Py_ssize_t end)
    object PyUnicode_DecodeASCII(const char* data, Py_ssize_t size, const char* errors)
    object PyUnicode_DecodeUTF8(const char* data, Py_ssize_t size, const char* errors)
    object PyBytes_FromStringAndSize(const char* data, Py_ssize_t size)


cdef enum:
    MAX_SEGMENTS = 32   # the fast walk's depth; deeper paths take the list walk


log = logging.getLogger("fastlimit")


# -- the overrides' generation -------------------------------------------------------

@cython.final
cdef class Generation:
    """The overrides' generation counter: one 8-byte word of a file every
    process of a policy maps (``Overrides`` bumps it on each change), or a
    word of this process for in-process overrides.  A check reads it with
    one load."""

    def __init__(self, buffer=None):
        self.local = 0
        self.words = buffer

    cpdef uint64_t value(self):
        """The counter now."""
        return self.words[0] if self.words is not None else self.local

    cpdef void set(self, uint64_t value):
        if self.words is not None:
            self.words[0] = value
        else:
            self.local = value

    def release(self):
        """Stop reading the file's word (the map may then be closed)."""
        self.words = None


# -- routes ---------------------------------------------------------------------------

@cython.final
cdef class RouteNode:
    """A node of the routes' segment trie (built by ``routes.RouteTable``):
    literal children, the ``{param}`` child, and the rules by method ending
    here or in a ``**`` here."""

    def __init__(self):
        self.literal = {}
        self.param = None
        self.here = {}
        self.tail = {}
        self.keys = None

    cdef seal(self, dict codes):
        """Keep the literal children as C arrays of their ASCII bytes too,
        when they are few and ASCII: a walk then compares a path's bytes
        with them, making no segment text and hashing none.  With ``codes``
        (64 rules and 16 methods at most), keep each method's rules as a
        bit mask too."""
        cdef int i
        self.keys = None
        self.nkeys = 0
        if 0 < len(self.literal) <= 16 and all(k.isascii() for k in self.literal):
            self.keys = tuple((k.encode("ascii"), child) for k, child in self.literal.items())
            for i, (key, child) in enumerate(self.keys):
                self.key_len[i] = PyBytes_GET_SIZE(key)
                self.key_data[i] = PyBytes_AS_STRING(key)
                self.key_child[i] = <PyObject*>child
            self.nkeys = len(self.keys)
        self.masked = codes is not None
        for i in range(MAX_METHODS):
            self.here_mask[i] = self.tail_mask[i] = 0
        if codes is not None:
            for m, found in self.here.items():
                self.here_mask[<int>codes[m]] = _mask_of(found)
            for m, found in self.tail.items():
                self.tail_mask[<int>codes[m]] = _mask_of(found)


cdef uint64_t _mask_of(list rules):
    cdef uint64_t mask = 0
    for i in rules:
        mask |= (<uint64_t>1) << <int>i
    return mask


cdef str _OTHER = "\0other"  # stands for every method no pattern names


cdef inline str _upper(str method):
    """``method.upper()``, without a call for the usual upper-case ASCII."""
    cdef Py_ssize_t i, n = PyUnicode_GET_LENGTH(method)
    cdef const char* p
    if PyUnicode_IS_ASCII(method):
        p = PyUnicode_DATA(method)
        for i in range(n):
            if b"a" <= p[i] <= b"z":
                return method.upper()
        return method
    return method.upper()


cpdef str normalize_path(str path):
    """The path as routing sees it: no query, no empty or ``.`` segments,
    ``..`` applied, no trailing slash.

    Limits must not be dodged by writing ``/auth//session/login/`` for
    ``/auth/session/login``: frameworks route both to the same handler.

    Example:
        >>> normalize_path("/auth//session/./login/?next=/")
        '/auth/session/login'
    """
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(path), i
    cdef const char* p
    if n and PyUnicode_IS_ASCII(path):
        p = PyUnicode_DATA(path)
        if p[0] == b"/" and p[n - 1] != b"/" and memchr(p, b"?", n) == NULL:
            # a byte loop, not memchr per segment: its call costs more than
            # a short segment, and a client chooses how many there are
            for i in range(n - 1):  # never the last byte: that is not a "/"
                if p[i] == b"/" and (p[i + 1] == b"/" or p[i + 1] == b"."):
                    break
            else:
                return path  # the common case: nothing to do
    return _normalized(path)


cdef str _normalized(str path):
    """``normalize_path``'s work, in one pass over the path's bytes (UTF-8
    where it is not ASCII: "/", "." and "?" are single bytes there too), so
    that a client's 8 KB of ``/./a/..`` costs what reading 8 KB costs."""
    cdef bint ascii = PyUnicode_IS_ASCII(path)
    cdef bytes encoded = None
    cdef const char* p
    cdef const char* slash
    cdef Py_ssize_t n, i = 0, j, k, o = 0
    cdef char* out
    if ascii:
        p = PyUnicode_DATA(path)
        n = PyUnicode_GET_LENGTH(path)
    else:
        encoded = path.encode("utf-8", "surrogatepass")
        p = PyBytes_AS_STRING(encoded)
        n = PyBytes_GET_SIZE(encoded)
    slash = <const char*>memchr(p, b"?", n)
    if slash != NULL:
        n = slash - p
    buffer = PyBytes_FromStringAndSize(NULL, n + 1)
    out = PyBytes_AS_STRING(buffer)
    while i < n:
        if p[i] == b"/":
            i += 1
            continue
        # copy the segment after a "/" as it is read (a call of memcpy costs
        # more than a short segment), then keep it unless it is "." or ".."
        out[o] = b"/"
        k = o + 1
        j = i
        while j < n and p[j] != b"/":
            out[k] = p[j]
            k += 1
            j += 1
        if j - i == 1 and p[i] == b".":
            pass
        elif j - i == 2 and p[i] == b"." and p[i + 1] == b".":
            while o > 0 and out[o - 1] != b"/":    # each byte goes at most once
                o -= 1
            if o > 0:
                o -= 1
        else:
            o = k
        i = j
    if o == 0:
        return "/"
    if ascii:
        return PyUnicode_DecodeASCII(out, o, NULL)
    return PyUnicode_DecodeUTF8(out, o, "surrogatepass")


@cython.final
cdef class RouteIndex:
    """Every rule whose pattern matches ``(method, path)``, in the rules'
    order, combined once per set of rules matched (``combine``)."""

    def __init__(self, RouteNode root, dict exact, bint dynamic, list values, combine=None):
        cdef list todo = [(root, 0)]
        cdef list nodes = []
        cdef RouteNode node
        cdef const char* base
        cdef int d
        self.depth = 0
        while todo:  # a walk, not recursion: patterns may be thousands of segments deep
            node, d = todo.pop()
            nodes.append(node)
            self.depth = max(self.depth, d)
            todo.extend([(child, d + 1) for child in node.literal.values()])
            if node.param is not None:
                todo.append((node.param, d + 1))
        methods = {_OTHER: None}
        for node in nodes:
            methods.update(dict.fromkeys(node.here))
            methods.update(dict.fromkeys(node.tail))
        self.codes = None
        self.other = self.nmethods = 0
        if len(values) <= 64 and len(methods) <= MAX_METHODS:
            self.codes = {m: i for i, m in enumerate(methods)}
            self.other = self.codes[_OTHER]
            if all(m.isascii() for m in methods):
                self.method_bytes = "".join(methods).encode("ascii")
                base = self.method_bytes
                for m in methods:
                    self.method_len[self.nmethods] = len(m)
                    self.method_data[self.nmethods] = base
                    self.nmethods += 1
                    base += len(m)
        for node in nodes:
            node.seal(self.codes)
        self.root = root
        self.combine = combine
        self.exact = {path: {m: self._combined(found) for m, found in answers.items()}
                      for path, answers in exact.items()}
        self.longest = max(map(len, self.exact), default=0)
        self.dynamic = dynamic
        self.values = values
        self.combos = {}
        self.empty = self._combined(())

    cdef object _combined(self, tuple found):
        return found if self.combine is None else self.combine(found)

    cpdef object match(self, str method, str path):
        """The rules of ``method path`` (combined, if the index combines)."""
        cdef dict answers
        path = normalize_path(path)
        # no literal pattern is longer: a client's 8 KB path is not hashed
        answers = (self.exact.get(path) if PyUnicode_GET_LENGTH(path) <= self.longest
                   else None)
        if answers is not None:
            found = answers.get(method)
            if found is None:
                upper = _upper(method)
                found = answers.get(upper) if upper is not method else None
                if found is None:
                    found = answers[_OTHER]
            return found
        if not self.dynamic:
            return self.empty
        return self._walk(_upper(method), path)

    def walk(self, str method, str path):
        """The trie's answer for a normalized ``path`` and exactly ``method``."""
        return self._walk(method, path)

    cdef int _code(self, str method):
        """The method's code: its bytes compared with the patterns' few."""
        cdef Py_ssize_t n = PyUnicode_GET_LENGTH(method)
        cdef int i
        if self.nmethods and PyUnicode_IS_ASCII(method):
            for i in range(self.nmethods):
                if self.method_len[i] == n and memcmp(
                        self.method_data[i], PyUnicode_DATA(method), n) == 0:
                    return i
            return self.other
        found = self.codes.get(method)
        return self.other if found is None else <int>found

    cdef object _walk(self, str method, str path):
        # ``path`` is normalized: "/" or "/a/b", no empty segments.  Segment
        # k is path[starts[k]:starts[k + 1] - 1]; its text is made only when
        # a node has literal children to look it up in.
        cdef Py_ssize_t n = PyUnicode_GET_LENGTH(path), i = 1, j
        cdef const char* slash
        cdef int code
        cdef Py_ssize_t starts[MAX_SEGMENTS + 1]
        cdef PyObject* texts[MAX_SEGMENTS]
        cdef PyObject* nodes[MAX_SEGMENTS + 2]
        cdef int depth[MAX_SEGMENTS + 2]
        cdef int nseg = 0, top = 0, k
        cdef RouteNode node
        cdef uint64_t mask = 0
        cdef bint ascii = PyUnicode_IS_ASCII(path)
        cdef const char* data = PyUnicode_DATA(path) if ascii else NULL
        cdef Py_ssize_t length
        if self.codes is None:
            return self._walk_deep(method, path)
        code = self._code(method)
        if n > 1:
            if ascii:  # the usual path: split on its bytes
                starts[0] = 1
                texts[0] = NULL
                nseg = 1
                slash = <const char*>memchr(data + 1, b"/", n - 1)
                while slash != NULL:
                    if nseg == MAX_SEGMENTS:
                        return self._walk_deep(method, path)
                    j = slash - data
                    starts[nseg] = j + 1
                    texts[nseg] = NULL
                    nseg += 1
                    slash = <const char*>memchr(slash + 1, b"/", n - j - 1)
            else:
                while True:
                    if nseg == MAX_SEGMENTS:
                        return self._walk_deep(method, path)
                    starts[nseg] = i
                    texts[nseg] = NULL
                    nseg += 1
                    j = PyUnicode_FindChar(path, 0x2F, i, n, 1)  # "/"
                    if j < 0:
                        break
                    i = j + 1
        starts[nseg] = n + 1
        nodes[0] = <PyObject*>self.root
        depth[0] = 0
        top = 1
        try:
            while top:
                top -= 1
                node = <RouteNode>nodes[top]
                k = depth[top]
                mask |= node.tail_mask[code]
                if k == nseg:
                    mask |= node.here_mask[code]
                    continue
                if node.nkeys and ascii:
                    length = starts[k + 1] - 1 - starts[k]
                    for j in range(node.nkeys):
                        if node.key_len[j] == length and memcmp(
                                node.key_data[j], data + starts[k], length) == 0:
                            nodes[top] = node.key_child[j]
                            depth[top] = k + 1
                            top += 1
                            break
                elif node.literal:
                    if texts[k] == NULL:
                        text = PyUnicode_Substring(path, starts[k], starts[k + 1] - 1)
                        Py_INCREF(text)  # held by texts[], released below
                        texts[k] = <PyObject*>text
                    child = node.literal.get(<object>texts[k])
                    if child is not None:
                        nodes[top] = <PyObject*>child
                        depth[top] = k + 1
                        top += 1
                if node.param is not None:
                    nodes[top] = <PyObject*>node.param
                    depth[top] = k + 1
                    top += 1
        finally:
            for k in range(nseg):
                if texts[k] != NULL:
                    Py_DECREF(<object>texts[k])
        if mask == 0:
            return self.empty
        return self._of_mask(mask)

    cdef object _of_mask(self, uint64_t mask):
        """What the rules of the bits of ``mask`` amount to (combined once per set)."""
        found = self.combos.get(mask)
        if found is None:
            found = self._combined(tuple(self.values[i] for i in range(64) if mask >> i & 1))
            self.combos[mask] = found  # sets of at most 64 rules matched: a bounded few
        return found

    cdef object _walk_deep(self, str method, str path):
        """The walk of a path of more segments than the fast walk holds."""
        # ["", "a", "b"]; past the trie's depth no node is left to match a
        # segment, so the rest stays one string: a client's 4,000 segments
        # cost one split per level of the routes, not 4,000 strings
        cdef list segments = path.split("/", self.depth + 1)
        cdef Py_ssize_t end = len(segments)
        cdef list hits = []
        cdef list stack = [(self.root, 1)]
        cdef RouteNode node
        cdef Py_ssize_t i
        while stack:
            node, i = stack.pop()
            if node.tail:
                hits += node.tail.get(method) or node.tail.get(_OTHER) or ()
            if i == end:
                if node.here:
                    hits += node.here.get(method) or node.here.get(_OTHER) or ()
                continue
            child = node.literal.get(segments[i])
            if child is not None:
                stack.append((child, i + 1))
            if node.param is not None:
                stack.append((node.param, i + 1))
        if not hits:
            return self.empty
        return self._rules(hits)

    cdef object _rules(self, list hits):
        """What the rules of indices ``hits`` amount to (combined once per set)."""
        key = tuple(sorted(set(hits)))
        found = self.combos.get(key)
        if found is None:
            found = self._combined(tuple(self.values[i] for i in key))
            if len(self.combos) < 4096:  # sets of rules, not paths: a bounded few
                self.combos[key] = found
        return found


# -- what a policy's limits are --------------------------------------------------------

@cython.final
cdef class Bucket:
    """One configured limit (an identity's or a route's): its name, default
    rate, and the meter of each rate it has been used at (overrides and
    tiers bring other rates; the bucket keeps one store name, so a key's
    state, a time, carries over when its rate changes)."""

    def __init__(self, str name, str bucket, rate, bint shadow, make_limiter,
                 int ipv6_prefix=64):
        if not 1 <= ipv6_prefix <= 128:
            raise ValueError(f"ipv6_prefix must be between 1 and 128, got {ipv6_prefix}")
        self.name = name
        self.bucket = bucket
        self.rate = rate
        self.shadow = shadow
        self.ipv6_prefix = ipv6_prefix
        self.by_ip = self
        self.make_limiter = make_limiter
        self.meters = {}
        self.default = None if rate is None else self.meter(rate)

    cdef Meter meter(self, rate):
        cdef Meter m = self.meters.get(rate)
        if m is None:
            m = self.meters[rate] = self.make_limiter(rate, self.bucket)._meter
        return m

    def limiter(self, rate):
        """The Limiter of this bucket at ``rate``."""
        return self.meter(rate).limit


@cython.final
cdef class RouteRule:
    """A route limit: its bucket, the anonymous callers' bucket, and how it
    is keyed."""

    def __init__(self, spec, Bucket limit, Bucket anonymous):
        self.spec = spec
        self.limit = limit
        self.anonymous = anonymous
        self.per_ip = spec.per == "ip"
        self.dedicated = spec.dedicated


@cython.final
cdef class Usage:
    """Where a tier allowance applies (a UsageSpec), as the plan needs it."""

    def __init__(self, spec, concurrency):
        self.spec = spec
        self.name = spec.name
        self.kind = spec.kind
        self.bytes = spec.name.endswith("_bytes")
        self.concurrency = concurrency
        self.slots = None if concurrency is None else concurrency._leases


@cython.final
cdef class RouteSet:
    """What a set of matched rules amounts to: route limits, allowances,
    and whether a route's bucket replaces the caller's own."""

    def __init__(self, tuple rules, tuple usages):
        cdef RouteRule r
        self.rules = rules
        self.usages = usages
        self.dedicated = False
        for r in rules:
            self.dedicated |= r.dedicated
        self.by_tier = {}

    cdef TierUsage of(self, TierPlan tier, policy):
        """What these routes' allowances are under ``tier`` (worked out once
        per tier: tiers and customers are the policy's, a bounded few)."""
        if tier is self.last_tier:  # the usual: callers of one tier in a row
            return self.last_usage
        cdef TierUsage found = self.by_tier.get(tier)
        cdef Usage u
        if found is None:
            quotas, leases, caps = [], [], []
            for u in self.usages:
                if u.kind == "quota":
                    allowance = tier.spec.quotas.get(u.name)
                    if allowance is not None:
                        quotas.append((u.name, policy._quota(u.spec, allowance)._meter))
                elif u.kind == "concurrency":
                    n = tier.spec.concurrency.get(u.name)
                    if n is not None:
                        leases.append((u, n))
                else:
                    cap = tier.spec.caps.get(u.name)
                    if cap is not None:
                        caps.append((u, cap))
            found = TierUsage.__new__(TierUsage)
            found.quotas = tuple(quotas)
            found.leases = tuple(leases) or None
            found.caps = tuple(caps) or None
            self.by_tier[tier] = found
        self.last_tier, self.last_usage = tier, found
        return found


@cython.final
cdef class TierUsage:
    """The allowances of some routes under one tier: quota meters, leases
    (Usage, limit) and caps (Usage, maximum)."""


@cython.final
cdef class TierPlan:
    """A tier (or one customer's contract) as the plan needs it: the rate
    meter of its API keys, and its allowances."""

    def __init__(self, spec, Bucket api):
        self.spec = spec
        self.api_access = spec.api_access
        self.rate = spec.rate
        self.meter = None if api is None or spec.rate is None else api.meter(spec.rate)
        self.quotas = {}
        self.rejected = f"tier {spec.name} has no API access"


# -- the decision path ------------------------------------------------------------------

cdef enum:
    K_ANONYMOUS = 0
    K_SESSION = 1
    K_TOKEN = 2
    K_API_KEY = 3


cdef tuple _KIND_NAMES = ("anonymous", "session", "token", "api_key")


cdef inline int _kind_code(kind) noexcept:
    """An identity kind's code; the names are interned, so identity
    usually decides before equality is asked."""
    if kind is "api_key" or kind == "api_key":
        return K_API_KEY
    if kind is "session" or kind == "session":
        return K_SESSION
    if kind is "token" or kind == "token":
        return K_TOKEN
    return K_ANONYMOUS


cdef inline list _more(list more, Hit first, Hit h):
    """The hits of a request of more than one: ``first``, then the others."""
    if more is None:
        return [first, h]
    more.append(h)
    return more


cdef inline bint _given(object value) except -1:
    """``bool(value)``, without a call for a str."""
    if type(value) is str:
        return PyUnicode_GET_LENGTH(value) != 0
    return value is not None and bool(value)


cdef inline object _need_ip(object client_ip, Bucket b):
    """The per-IP key of ``client_ip`` under ``b`` (IPv6: its network)."""
    if not client_ip:
        raise ValueError(f"limit {b.name!r} is counted per source IP: pass client_ip")
    return ip_key(client_ip, b.ipv6_prefix) if type(client_ip) is str else client_ip


cdef str _policies(PolicyDecision d):
    """The RateLimit-Policy list: every enforced rate and quota the request
    is subject to, in the order they are counted, then its concurrency
    limits.  Draft-10 wants the field to stay the same over a caller's
    responses, so it lists them all whichever one binds (RateLimit and the
    legacy fields describe the binding one).  None when nothing applies."""
    cdef Fields f = d.plan.fields
    cdef Hit h
    cdef Usage u
    cdef Window w
    cdef list items = []
    for h in d.hits:
        if h.done and not h.shadow:
            h.meter.window_at(d.wall_ns, &w)
            items.append(f.policy_item(h.name, &h.a, &w))
    if d.leases is not None:
        for u, n in d.leases:
            items.append(f.lease_item(u.name, n))
    if not items:
        return None
    return items[0] if len(items) == 1 else ", ".join(items)


cdef int64_t _leases_of(PolicyDecision d, name) except -1:
    """How many leases the concurrency limit ``name`` allows the caller."""
    cdef Usage u
    for u, n in d.leases or ():
        if u.name == name:
            return n
    raise ValueError(f"no concurrency limit {name!r} applies to this request")


# Retry-After of a request whose state found no room (503 LIMITER_FULL): room
# comes back as the operator resizes, or at the period's end; a minute is a
# polite wait, not a promise.
FULL_RETRY_AFTER = 60
cdef set _FULL_LOGGED = set()


cdef _log_full(name):
    if name not in _FULL_LOGGED and len(_FULL_LOGGED) < 1024:  # names come from the policy
        _FULL_LOGGED.add(name)
        log.error("fastlimit: %s's state is full: new keys are answered 503 LIMITER_FULL "
                  "(size it with [store] quota_capacity)", name)


@cython.final
cdef class Plan:
    """The compiled decision path of one :class:`~fastlimit.Policy` (its
    ``hit``, ``peek`` and ``resolve``); see the module docs."""

    def __init__(self, policy, dict identities, RouteIndex routes, dict tiers, dict customers,
                 overrides, wall_clock, style, dict responses, dict concurrency_retry, *,
                 bint api_tiers, identity_type, resolution_type, check_type, result_type):
        self.policy = policy
        self.resolution_type = resolution_type
        self.check_type = check_type
        self.result_type = result_type
        self.identities = identities
        self.routes = routes
        self.tiers = tiers
        self.customers = customers
        self.overrides = overrides
        self.generation = overrides._generation
        self.seen = self.generation.value()
        self.override_limits = overrides.limits
        self.wall_clock = wall_clock
        self.identity_type = identity_type
        self.fields = style._fields
        self.responses = responses
        self.concurrency_retry = concurrency_retry
        self.spread = 0
        self.api = identities.get("api_key")
        self.api_tiers = api_tiers
        self.by_kind = tuple(identities.get(name) for name in _KIND_NAMES)

    # -- resolving ------------------------------------------------------------------

    cdef int _watch(self) except -1:
        """Pick up overrides other processes (or this one) changed."""
        cdef uint64_t gen = self.generation.value()
        if gen != self.seen:
            self.overrides.refresh()
            self.override_limits = self.overrides.limits
            self.seen = gen
        return 0

    cdef Meter _rate_meter(self, Bucket b, Meter given, rate, str key):
        """The meter of ``b`` for ``key``: its override's rate, if any."""
        if self.override_limits and b.name in self.override_limits:
            found = self.overrides.rate_for(b.name, key)
            if found is not None:
                return b.meter(found)
        return given if given is not None or rate is None else b.meter(rate)

    cdef TierPlan _tier(self, tuple identity):
        account = identity[3]
        if account is not None and self.customers:
            found = self.customers.get(account)
            if found is not None:
                return found
        tier = identity[2]
        found = self.tiers.get(tier if _given(tier) else "")
        if found is None:
            # the application's identify (or its lookup) said so: a
            # tier added upstream before the policy, a misread token
            raise CallbackError(
                f"unknown tier {tier!r}: an API key's identity names a tier policy "
                f"{self.policy.name!r} does not have (it has: {', '.join(self.tiers)}); "
                f"identify (or its lookup) must give one of those, or add the tier to "
                f"[tiers]", ("tier", tier if type(tier) is str else type(tier).__name__))
        return found

    cdef PolicyDecision _resolve(self, method, path, identity, client_ip):
        """A decision holding the limits the request is subject to, nothing counted."""
        cdef PolicyDecision d = PolicyDecision.__new__(PolicyDecision)
        cdef RouteSet rs
        cdef RouteRule r
        cdef TierUsage usage
        cdef Bucket b
        cdef Meter m = None
        cdef TierPlan tier = None
        cdef int kind = K_ANONYMOUS
        cdef Hit first = None, h
        cdef list more = None
        cdef tuple fields
        d.plan = self
        d.binding_ = -2
        d.denied_at = -1
        self._watch()
        if type(method) is not str or type(path) is not str:
            raise TypeError(f"method and path must be str, got {method!r} and {path!r}")
        rs = self.routes.match(method, path)
        subject = None
        rate = None
        rejected = None
        if identity is not None:
            if type(identity) is not self.identity_type and not isinstance(
                    identity, self.identity_type):
                raise TypeError(f"identity must be a fastlimit.Identity (or None for an "
                                f"anonymous caller), got {identity!r}")
            fields = <tuple>identity  # an Identity is a tuple: its fields without __getitem__
            subject = fields[1]
            if _given(subject):
                kind = _kind_code(fields[0])
            if kind == K_API_KEY:
                account = fields[3]
                if _given(account):  # per account, when given
                    subject = account
                if self.api_tiers:
                    tier = self._tier(fields)
                    if tier.api_access:
                        m = tier.meter
                        rate = tier.rate
                    else:
                        # The seed: invalid keys get the anonymous limit, and
                        # a key of a tier without API access is such.
                        rejected = tier.rejected
                        tier = None
                        kind = K_ANONYMOUS
            if kind == K_ANONYMOUS:
                subject = None
        d.rejected_ = rejected
        d.tier_ = None if tier is None else tier.spec
        b = <Bucket>self.by_kind[kind]
        if b is None and not (self.told >> kind) & 1:
            self.told |= 1 << kind
            self.policy._unruled(_KIND_NAMES[kind])
        if b is not None and not rs.dedicated:
            d.applied = _KIND_NAMES[kind]
            if subject is None:  # per IP: in the anonymous class's slots
                key = _need_ip(client_ip, b)
                b = b.by_ip
            else:
                key = subject
            if m is None and tier is None:
                m, rate = b.default, b.rate
            m = self._rate_meter(b, m, rate, key)
            if m is not None:
                first = new_hit(m, key, b.name, b.shadow)
        for r in rs.rules:
            b = r.anonymous if kind == K_ANONYMOUS and r.anonymous is not None else r.limit
            if r.per_ip or subject is None:
                key = _need_ip(client_ip, b)
                b = b.by_ip
            else:
                key = subject
            h = new_hit(self._rate_meter(b, b.default, b.rate, key), key, b.name, b.shadow)
            if first is None:
                first = h
            else:
                more = _more(more, first, h)
        if tier is not None and subject is not None and rs.usages:
            usage = rs.of(tier, self.policy)
            for name, m in usage.quotas:
                h = new_hit(m, subject, name, False)
                if first is None:
                    first = h
                else:
                    more = _more(more, first, h)
            d.subject = subject
            d.leases = usage.leases
            d.caps = usage.caps
        # a tuple: one allocation (and Python's tuple free list) for the usual one hit
        d.hits = tuple(more) if more is not None else (() if first is None else (first,))
        return d

    # -- counting -------------------------------------------------------------------

    cdef PolicyDecision decide(self, method, path, identity, client_ip, cost,
                               content_length, files, bint consume):
        """The decision on a request: what ``hit`` (``consume``) and ``peek`` answer."""
        cdef PolicyDecision d = self._resolve(method, path, identity, client_ip)
        cdef Usage u
        cdef int64_t wall = wall_now(self.wall_clock)
        d.wall_ns = wall
        if consume and d.caps is not None:
            for u, cap in d.caps:
                size = content_length if u.bytes else files
                if size is not None and size > cap:
                    if self.remote is None:  # (one call per limit on a remote store: spared)
                        d._count(cost, False)
                    return d._deny("too_large", u.name)
        # one limit and no lease is one call either way: its own script is the
        # cheaper (an asyncio store's is always awaited)
        if self.remote is not None and (self.remote_async or len(d.hits) > 1 or (
                consume and d.leases is not None)):
            ops = d._ops(cost, consume)
            if ops is not None:
                if self.remote_async:  # the middleware awaits the store, then finish()
                    d.pending = (ops[0], ops[1], cost, consume)
                    d.method_, d.path_ = method, path
                    return d
                if d._answered(self.remote(ops[0], ops[1]), cost):
                    if d.shadows and d.kind != "concurrency":
                        self.policy._report_shadow(d, method, path)
                    return d
        if not consume:
            return d._count(cost, False)
        d._take_all(cost)
        if d.shadows and d.kind != "concurrency":
            self.policy._report_shadow(d, method, path)
        return d

    def hit(self, method, path, identity=None, client_ip=None, *, cost=1,
            content_length=None, files=None):
        """``Policy.hit``."""
        return self.decide(method, path, identity, client_ip, cost, content_length, files, True)

    def peek(self, method, path, identity=None, client_ip=None, *, cost=1):
        """``Policy.peek``."""
        return self.decide(method, path, identity, client_ip, cost, None, None, False)

    def resolve(self, method, path, identity=None, client_ip=None):
        """``Policy.resolve``."""
        return self._resolve(method, path, identity, client_ip).resolution


async def _await_all(list waits):
    for w in waits:
        await w


@cython.freelist(64)
@cython.final
@cython.no_gc  # it refers to its plan, hits, leases and what it made: never back to itself
cdef class PolicyDecision:
    """The answer to one request under a policy.

    Attributes:
        allowed: whether to serve the request (shadow limits never deny).
        kind: what denied: ``"rate"``, ``"quota"``, ``"concurrency"`` or
            ``"too_large"``; None when allowed.
        resolution: the limits that applied (:class:`~fastlimit.Resolution`).
        result: the composite outcome, one Decision per limit.

    The headers describe the most restrictive enforced limit, once; a
    denial adds ``Retry-After`` and has a :attr:`status` and :attr:`body`.
    """

    cdef PolicyDecision _take_all(self, cost):
        """Take the request's leases, then count its rates and quotas: a
        denial gives back what was taken."""
        cdef Usage u
        cdef Py_ssize_t i
        if self.leases is not None:
            for i in range(len(self.leases)):
                u, n = self.leases[i]
                slots = u.slots if self.failover is None else self.failover[i]
                if not self._take(slots, self.subject, n, self.plan.spread):
                    self.release()
                    self._count(cost, False)
                    return self._deny("concurrency", u.name)
                self.plan.spread += 1
        try:
            self._count(cost, True)
        except BaseException:
            self.release()
            raise
        if not self.allowed:
            self.release()
        return self

    # -- on a store that counts a request in one call (Redis) ------------------------

    cdef object _ops(self, cost, bint consume):
        """(leases, hits): the request as the store's ``count_request`` takes
        it (``remote_ops``' LeaseOp, RateOp and QuotaOp; None for a shadow
        above its burst, which is not asked), or None when a limit is not
        the store's."""
        cdef Hit h
        cdef Meter m
        cdef Usage u
        ops = self.plan.remote_ops
        capacity(self.hits, cost)
        hits = []
        for h in self.hits:
            m = h.meter
            if over(cost, m):
                hits.append(None)
            elif m.kind == KIND_RATE and m.gcra is None:
                hits.append(ops.RateOp(m.state, h.key, cost, h.shadow, consume and cost != 0))
            elif m.kind == KIND_QUOTA and m.counter is None:
                n = 1 if type(cost) is int and cost == 1 else check_cost(cost, m.burst, m.what)
                mine = consume
                if n == 0 and consume:  # a hit of 0 answers as a peek of 1, as Meter.check
                    mine, n = False, 1
                m._period(self.wall_ns)
                hits.append(ops.QuotaOp(m.state, h.key, n, h.shadow, mine, m.tag,
                                        m.end - self.wall_ns))
            else:
                return None
        leases = [] if not consume or self.leases is None else [
            ops.LeaseOp(u.slots, self.subject, n) for u, n in self.leases]
        return leases, hits

    cdef bint _answered(self, answer, cost) except -1:
        """Take the store's answer to :meth:`_ops`' request; False when it
        gave none (then the request is counted limit by limit: after a
        failure, by each limit's failure policy)."""
        cdef Hit h
        cdef Usage u
        cdef Py_ssize_t i
        if answer is None:
            return False
        if isinstance(answer, BaseException):
            self._fail_over(answer)
            return False
        full, tokens, decisions = answer
        for i in range(len(self.hits)):
            h = self.hits[i]
            found = decisions[i]
            if found is None:
                h.shadow_denied = over(cost, h.meter) == 1  # a shadow above its burst
                continue
            copy_answer(found, &h.a)
            h.done = True
            if not h.a.allowed:
                if h.shadow:
                    h.shadow_denied = True
                elif self.denied_at < 0:
                    self.denied_at = i
            if h.shadow_denied:
                self.shadows = True
        self.allowed = self.denied_at < 0
        if not self.allowed:
            h = self.hits[self.denied_at]
            self.kind = "quota" if h.meter.kind == KIND_QUOTA else "rate"
        if full >= 0:
            u = self.leases[full][0]
            self._deny("concurrency", u.name)
        elif self.allowed and tokens:
            self.held = [(u.slots, self.subject, token)
                         for (u, _n), token in zip(self.leases, tokens)]
        return True

    cdef int _fail_over(self, failure) except -1:
        """Count limit by limit in states that answer by their failure
        policy, with no more calls to the store."""
        cdef Hit h
        cdef Usage u
        fail = self.plan.remote_ops.failed
        self.hits = tuple([
            new_hit(with_state(h.meter, fail(h.meter.state, failure)), h.key, h.name, h.shadow)
            if h.meter.kind != KIND_OTHER else h for h in self.hits])
        if self.leases is not None:
            self.failover = tuple([fail(u.slots, failure) for u, _n in self.leases])
        return 0

    def finish(self, answer):
        """Complete a :attr:`pending` decision with what the asyncio store's
        ``count_request(*decision.pending[:2])`` answered; the decision."""
        if self.pending is None:
            raise ValueError("this decision is not pending")
        leases, hits, cost, consume = self.pending
        self.pending = None
        if not self._answered(answer, cost):
            if answer is None:
                raise ConfigurationError(
                    f"policy {self.plan.policy.name!r} cannot count this request in one call "
                    f"of its asyncio store (on a Redis Cluster its keys are in more than one "
                    f"hash slot: a caller's key and a per-IP key); give the limits a common "
                    f"hash_tag=, or use a RedisBackend")
            if consume:
                self._take_all(cost)
            else:
                self._count(cost, False)
        if consume and self.shadows and self.kind != "concurrency":
            self.plan.policy._report_shadow(self, self.method_, self.path_)
        return self

    async def settle(self):
        """Count a :attr:`pending` decision on its asyncio store (one call,
        awaited); the decision.  A decision that is not pending is returned
        as it is."""
        if self.pending is not None:
            self.finish(await self.plan.remote(self.pending[0], self.pending[1]))
        return self

    cdef PolicyDecision _count(self, cost, bint consume):
        """Count (or peek) the rates and quotas; set the verdict."""
        cdef Hit h
        self.denied_at = count(self.hits, cost, consume, self.wall_ns)
        self.allowed = self.denied_at < 0
        if not self.allowed:
            h = self.hits[self.denied_at]
            if h.full:  # no room to count it: not the caller's doing, never QUOTA_EXCEEDED
                self.kind = "full"
                _log_full(h.name)
            else:
                self.kind = "quota" if h.meter.kind == KIND_QUOTA else "rate"
        for h in self.hits:
            if h.shadow_denied:
                self.shadows = True
                break
        return self

    cdef Usage _byte_cap(self):
        cdef Usage u
        cdef Usage found = None
        smallest = None
        for u, cap in self.caps or ():
            if u.bytes and (smallest is None or cap < smallest):
                found, smallest = u, cap
        return found

    def byte_cap(self):
        """The size the request's body may not exceed (the smallest byte
        cap of its routes), or None: what the middleware counts the body
        against as it is read."""
        cdef Usage u = self._byte_cap()
        return None if u is None else dict(self.caps)[u]

    def streamed_past_cap(self):
        """Make this decision the 413 of its byte cap: the body turned out
        larger than it while it was read."""
        cdef Usage u = self._byte_cap()
        if u is None:
            raise ValueError("this decision has no byte cap")
        return self._deny("too_large", u.name)

    cdef PolicyDecision _deny(self, str kind, str by):
        self.allowed = False
        self.kind = kind
        self.denied_by = by
        return self

    cdef bint _take(self, slots, key, n, int64_t spread) except -1:
        """A lease of ``key`` from ``slots`` (a ConcurrencyLimit's), held by
        this decision; False if every one is held."""
        cdef uint64_t slot = 0
        if type(slots) is Leases and self.lease is None:
            token = (<Leases>slots).acquire_(key, n, spread, &slot)
            if token >= 0:
                self.lease = <Leases>slots
                self.lease_slot = slot
                return True
        else:
            token = (<Leases>slots).acquire_(key, n, spread) if type(slots) is Leases else \
                slots.acquire(key, n, spread)
            if token >= 0:
                if self.held is None:
                    self.held = []
                self.held.append((slots, key, token))
                return True
        return token == -2  # Acquired.UNRECORDED: admitted, nothing to give back

    cdef bint holds(self):
        return self.lease is not None or bool(self.held)

    # -- what the request is subject to -------------------------------------------------

    @property
    def resolution(self):
        """The limits the request is subject to, in the order they are hit."""
        if self.resolution_ is None:
            check = self.plan.check_type
            self.resolution_ = self.plan.resolution_type(
                tuple(check(h.name, h.meter.limit, h.key, h.shadow) for h in self.hits),
                self.applied, self.rejected_, self.tier_,
                tuple((u.name, u.concurrency, self.subject, n) for u, n in self.leases or ()),
                tuple((u.name, cap) for u, cap in self.caps or ()))
        return self.resolution_

    @property
    def checks(self):
        return self.resolution.checks

    @property
    def result(self):
        """The composite outcome (a :class:`~fastlimit.CompositeResult`)."""
        cdef Hit h
        if self.result_ is None:
            self.result_ = self.plan.result_type(
                self.denied_at < 0, tuple(h.result() for h in self.hits),
                None if self.denied_at < 0 else self.denied_at,
                tuple(i for i, h in enumerate(self.hits) if h.shadow_denied))
        return self.result_

    @property
    def rejected(self):
        """Why the credential was treated as invalid (see ``Resolution``)."""
        return self.rejected_

    @property
    def would_allow(self):
        """Whether it would pass with shadow limits enforced too."""
        return self.allowed and not self.shadows

    def __bool__(self):
        return self.allowed

    # -- the limit headers describe -----------------------------------------------------

    cdef int _binding(self):
        cdef Hit h
        cdef fl_answer* answers[16]
        cdef int found[16]
        cdef int i, n = 0
        if self.binding_ == -2:
            self.binding_ = -1
            for i in range(len(self.hits)):
                h = self.hits[i]
                if h.done and not h.shadow:
                    if n == 16:  # more limits than any policy has: the first 16
                        break
                    answers[n] = &h.a
                    found[n] = i
                    n += 1
            if n:
                self.binding_ = found[binding(answers, n)]
        return self.binding_

    @property
    def binding(self):
        """Index of the most restrictive enforced limit, or None if none applied."""
        i = self._binding()
        return None if i < 0 else i

    @property
    def limit(self):
        """Name of the limit the headers describe (on a denial: the one
        that makes the client wait longest)."""
        i = self._binding()
        return None if i < 0 else (<Hit>self.hits[i]).name

    @property
    def decision(self):
        """The Decision of :attr:`limit`."""
        i = self._binding()
        return None if i < 0 else (<Hit>self.hits[i]).decision()

    # -- the answer ------------------------------------------------------------------

    cdef list fields(self, bint raw):
        """The rate-limit header fields (raw: as ASGI bytes)."""
        cdef Fields f = self.plan.fields
        cdef Hit h
        cdef Window w
        cdef int i
        # kind is None on every allowed request: three string compares saved
        if self.kind is not None and self.kind == "too_large":
            return []
        if self.kind is not None and self.kind == "full":  # the caller used nothing
            return [(b"retry-after", str(FULL_RETRY_AFTER).encode())] if raw else [
                ("Retry-After", str(FULL_RETRY_AFTER))]
        policies = _policies(self) if f.ietf else None
        if self.kind is not None and self.kind == "concurrency":  # its own numbers
            return f.concurrency(self.denied_by, _leases_of(self, self.denied_by),
                                 self.retry_after, self.wall_ns, raw, policies)
        if not self.hits:  # no rate or quota applies: say so in numbers clients parse
            return f.unlimited(self.wall_ns, raw, policies)
        i = self._binding()
        if i < 0:  # shadow limits only: a dry run shows the client nothing
            return []
        h = self.hits[i]
        h.meter.window_at(self.wall_ns, &w)
        return f.fields(&h.a, h.name, &w, self.wall_ns, raw, policies)

    cdef list _render(self, int i, bint raw):
        cdef Hit h = self.hits[i]
        cdef Window w
        h.meter.window_at(self.wall_ns, &w)
        return self.plan.fields.fields(&h.a, h.name, &w, self.wall_ns, raw)

    @property
    def headers(self):
        """Rate-limit headers to send, each once: the legacy and ``RateLimit``
        fields of the most restrictive limit, ``RateLimit-Policy`` listing
        every limit that applies.  A request no rate or quota applies to
        (an unlimited tier) gets ``X-RateLimit-Limit`` and ``-Remaining`` of
        ``UNLIMITED`` (2147483647); a concurrency denial the concurrency
        limit's own numbers.  Empty on a 413 and when only shadow limits
        applied."""
        return self.text_fields()

    def raw_headers(self):
        """:attr:`headers` as ASGI raw pairs (lower-case names, bytes)."""
        return self.fields(True)

    def render(self, int index):
        """The headers limit ``index`` alone would produce."""
        cdef Hit h = self.hits[index]
        if not h.done:
            raise ValueError(f"limit {h.name!r} has no decision")
        return self._render(index, False)

    @property
    def retry_after(self):
        """Seconds to wait (the Retry-After value) when denied, else None
        (and None on a 413: waiting does not help)."""
        cdef Hit h
        cdef Window w
        if self.allowed or self.kind == "too_large":
            return None
        if self.kind == "full":
            return FULL_RETRY_AFTER
        i = self._binding()
        wait = None
        if i >= 0:
            h = self.hits[i]
            if not h.a.allowed:
                h.meter.window_at(self.wall_ns, &w)
                wait = retry_seconds(&h.a, &w)
        if self.kind == "concurrency":  # its own wait, or the limits' when longer
            own = max(1, math.ceil(self.plan.concurrency_retry[self.denied_by]))
            return own if wait is None or wait < own else wait
        return wait

    @property
    def status(self):
        """The status to answer a denial with (429, or 413 for a cap,
        unless configured)."""
        return None if self.kind is None else self._response().status

    @property
    def content_type(self):
        return self._response().content_type

    @property
    def body(self):
        """The denial's body (JSON by default), or None when allowed."""
        return None if self.kind is None else self.denial_body()

    cdef bytes denial_body(self):
        response = self._response()
        fixed = response.fixed
        if fixed is not None:
            return fixed
        name = self.denied_by or self.limit or ""
        return response.render(retry_after=self.retry_after or 0, limit=name)

    cdef list text_fields(self):
        """:attr:`headers`."""
        if self.headers_ is None:
            self.headers_ = self.fields(False)
        return self.headers_

    cdef object _response(self):
        return self.plan.responses[self.kind or "rate"]

    # -- in flight --------------------------------------------------------------------

    @property
    def holding(self):
        """Whether :meth:`release` has something to give back."""
        return self.holds()

    cpdef release(self):
        """End the request: give back what it holds while in flight (its
        concurrency leases).  Call it once the response is sent; calling it
        again, or on a denial, does nothing.  On an asyncio store it returns
        an awaitable to await (the releases), else None."""
        lease, self.lease = self.lease, None
        if lease is not None:
            lease.give_back_slot(self.lease_slot)
        held, self.held = self.held, None
        waits = None
        if held:
            for slots, key, token in held:
                if type(slots) is Leases:
                    (<Leases>slots).give_back(key, token)
                else:
                    given = slots.release(key, token)
                    if type(given) is not bool and hasattr(given, "__await__"):
                        waits = [given] if waits is None else waits + [given]
        # an asyncio store's releases: the caller awaits them
        return None if waits is None else _await_all(waits)

    def __repr__(self):
        by = self.denied_by or self.limit
        state = "allowed" if self.allowed else f"denied ({self.kind}) by {by!r}"
        return f"<PolicyDecision {state} limits={[(<Hit>h).name for h in self.hits]}>"
