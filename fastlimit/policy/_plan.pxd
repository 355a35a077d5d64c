# What the middlewares' compiled calls (fastlimit/web/_serve.pyx) see of a
# policy's decision path.
from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint64_t

from fastlimit._core cimport Leases
from fastlimit.http._fields cimport Fields
from fastlimit.limiters._counting cimport Meter


cdef enum:
    MAX_METHODS = 16    # methods the masks tell apart (patterns' methods, and the rest)


cdef class Generation:
    cdef uint64_t[::1] words    # the word in the mapped file, or None
    cdef uint64_t local         # the word of in-process overrides

    cpdef uint64_t value(self)
    cpdef void set(self, uint64_t value)


cdef class RouteNode:
    cdef public dict literal
    cdef public RouteNode param
    cdef public dict here, tail
    cdef tuple keys             # the literal children as (ASCII bytes, child), or None
    # ... and as C arrays over those bytes and children (borrowed: keys holds them)
    cdef int nkeys
    cdef Py_ssize_t key_len[16]
    cdef const char* key_data[16]
    cdef PyObject* key_child[16]
    # here and tail as bit masks of rules, by method code (RouteIndex.codes)
    cdef bint masked
    cdef uint64_t here_mask[MAX_METHODS]
    cdef uint64_t tail_mask[MAX_METHODS]

    cdef seal(self, dict codes)


cdef class RouteIndex:
    cdef RouteNode root
    cdef dict exact, combos
    cdef dict codes             # method -> code, for the masks; None if too many rules or methods
    cdef int other              # the code of a method no pattern names
    cdef int nmethods           # codes[:nmethods] as ASCII bytes, compared without hashing
    cdef bytes method_bytes
    cdef Py_ssize_t method_len[MAX_METHODS]
    cdef const char* method_data[MAX_METHODS]
    cdef bint dynamic
    cdef int depth              # of the trie's deepest node: what a walk can reach
    cdef Py_ssize_t longest     # the longest literal path in exact
    cdef list values
    cdef object combine, empty

    cdef object _combined(self, tuple found)
    cpdef object match(self, str method, str path)
    cdef int _code(self, str method)
    cdef object _walk(self, str method, str path)
    cdef object _walk_deep(self, str method, str path)
    cdef object _of_mask(self, uint64_t mask)
    cdef object _rules(self, list hits)


cdef class Bucket:
    cdef readonly str name, bucket
    cdef readonly object rate
    cdef readonly bint shadow
    cdef readonly int ipv6_prefix    # per-IP keys of IPv6 clients: their /ipv6_prefix
    cdef public Bucket by_ip         # where its per-IP keys count (the anonymous class's table)
    cdef object make_limiter
    cdef dict meters
    cdef Meter default

    cdef Meter meter(self, rate)


cdef class RouteRule:
    cdef readonly object spec
    cdef readonly Bucket limit, anonymous
    cdef readonly bint per_ip, dedicated


cdef class Usage:
    cdef readonly object spec, concurrency
    cdef object slots           # the concurrency limit's lease slots
    cdef readonly str name, kind
    cdef readonly bint bytes


cdef class RouteSet:
    cdef readonly tuple rules, usages
    cdef readonly bint dedicated
    cdef dict by_tier           # TierPlan -> TierUsage
    cdef TierPlan last_tier     # the last of by_tier asked for
    cdef TierUsage last_usage

    cdef TierUsage of(self, TierPlan tier, policy)


cdef class TierUsage:
    cdef tuple quotas           # (name, Meter)
    cdef tuple leases, caps     # (Usage, limit), (Usage, maximum); or None


cdef class TierPlan:
    cdef readonly object spec, rate
    cdef readonly bint api_access
    cdef Meter meter
    cdef dict quotas
    cdef str rejected


cdef class Plan:
    cdef object policy, overrides, wall_clock, identity_type
    cdef object resolution_type, check_type, result_type
    cdef dict identities, tiers, customers, responses, concurrency_retry
    cdef RouteIndex routes
    cdef Generation generation
    cdef uint64_t seen
    cdef frozenset override_limits
    cdef Fields fields
    cdef int64_t spread
    cdef Bucket api
    cdef tuple by_kind    # the identity buckets, by kind code
    cdef int told         # bit per kind code: the policy was told it has no rule
    cdef bint api_tiers
    # A store that counts a whole request in one call (Redis): its
    # count_request, and the module of the ops it takes; else None.
    cdef public object remote, remote_ops
    cdef public bint remote_async   # count_request is a coroutine function

    cdef int _watch(self) except -1
    cdef Meter _rate_meter(self, Bucket b, Meter given, rate, str key)
    cdef TierPlan _tier(self, tuple identity)
    cdef PolicyDecision _resolve(self, method, path, identity, client_ip)
    cdef PolicyDecision decide(self, method, path, identity, client_ip, cost,
                               content_length, files, bint consume)


cdef class PolicyDecision:
    cdef readonly bint allowed
    cdef readonly object kind
    cdef Plan plan
    cdef Leases lease           # the first lease held, when it is the shared table's,
    cdef uint64_t lease_slot    # and its slot (given back without hashing the key again)
    cdef list held              # the other leases held: (slots, key, token)
    cdef tuple hits, leases, caps
    cdef object applied, rejected_, tier_, denied_by, subject
    cdef int64_t wall_ns
    cdef int denied_at, binding_
    cdef bint shadows
    cdef object resolution_, result_, headers_
    cdef tuple failover         # the leases' slots answering by their failure policy, or None
    cdef readonly object pending  # the ops an asyncio store is still to count, or None
    cdef object method_, path_    # what a pending decision reports shadows under

    cdef PolicyDecision _count(self, cost, bint consume)
    cdef object _ops(self, cost, bint consume)
    cdef bint _answered(self, answer, cost) except -1
    cdef int _fail_over(self, failure) except -1
    cdef PolicyDecision _take_all(self, cost)
    cdef PolicyDecision _deny(self, str kind, str by)
    cdef Usage _byte_cap(self)
    cdef bint _take(self, slots, key, n, int64_t spread) except -1
    cdef bint holds(self)
    cdef int _binding(self)
    cdef list fields(self, bint raw)
    cdef list _render(self, int i, bint raw)
    cdef object _response(self)
    cdef bytes denial_body(self)
    cdef list text_fields(self)
    cpdef release(self)
