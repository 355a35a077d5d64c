"""What the sync and asyncio Redis backends share: options, the failure
state (counters per kind of failure, rate-limited warnings, the nodes
marked down) and the script calls' arguments.  The operations themselves are sans-I/O plans
(:mod:`.plans`) that each backend drives with its client."""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import logging
import math
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from time import monotonic as _monotonic
from typing import Any, Literal, Protocol, TypeVar

try:  # redis-py, for every module of the backend
    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.asyncio.retry
    import redis.cluster
    import redis.retry
    from redis.backoff import NoBackoff
    from redis.crc import key_slot
    from redis.exceptions import (
        AskError,
        ClusterDownError,
        MaxConnectionsError,
        NoScriptError,
        OutOfMemoryError,
        ReadOnlyError,
        RedisClusterException,
        RedisError,
        ResponseError,
        SlotNotCoveredError,
    )
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fastlimit's Redis backend needs redis-py: pip install 'fastlimit[redis]'") from e

from fastlimit.clock import NS_PER_S
from fastlimit.core.results import QuotaMode
from fastlimit.errors import BackendError, ConfigurationError, TableError
from fastlimit.stores.contract import Kind as StateKind
from fastlimit.stores.contract import key_identity, on_full_code
from fastlimit.stores.table import DEFAULT_CAPACITY, SharedTable
from fastlimit.stores.table import Kind as TableKind
from fastlimit.stores.table import OnFull as TableOnFull

__all__ = ["CALL_ERRORS", "DEFAULT_LEASE_TTL", "SCRIPTS", "BackendBase", "Fail", "Failure",
           "Keyspace", "NoBackoff", "NoScriptError", "RedisError", "RedisStats", "failure_kind",
           "key_slot", "on_full_of", "redis", "retry_safe"]

log = logging.getLogger("fastlimit")

# What a call to Redis can raise that the failure policy answers: redis-py's
# errors, the OS's, and its cluster client's own (a refresh that reached no
# node, a slot no node serves), which are not RedisErrors.
CALL_ERRORS = (RedisError, RedisClusterException, OSError)

Key = str | bytes | int
Fail = Literal["open", "closed", "raise", "local"]
HashTag = Callable[[str, Key], str | bytes]
T = TypeVar("T")
# A script call: the script's name (a key of SCRIPTS), its keys, its args.
Call = tuple[str, list[bytes], list[bytes]]
# an operation: yields script calls, is sent their replies
Plan = Generator[Call, list[int], T]


class Runs(Protocol):
    """A sync backend's ``_run``: drives a plan, returns its result."""

    def __call__(self, plan: Plan[T]) -> T: ...


class RunsAsync(Protocol):
    """An asyncio backend's ``_run``."""

    async def __call__(self, plan: Plan[T]) -> T: ...


def _lua(name: str) -> str:
    return importlib.resources.files("fastlimit.stores.redis").joinpath("lua", name).read_text(
        "utf-8")


# The scripts, shipped as package data: the GCRA of limiters, calendar-quota
# steps, concurrency leases, a policy's whole request, and fleet mode's
# lease take.  Each call runs one of them, atomically; each is sent after
# lib.lua, the arithmetic they share.
SCRIPTS: dict[str, str] = {
    name: _lua("lib.lua") + _lua(f"{name}.lua")
    for name in ("gcra", "quota", "leases", "request", "fleet")
}
# fleet.lua's argument that gives units back (see plans.lease_take)
_FLEET_GIVE = 6

_FAILS = ("local", "open", "closed", "raise")
# the byte between a name and the key's hash tag, by kind (see Keyspace)
_KINDS: dict[str, bytes] = {"rate": b"", "quota": b"quota", "concurrency": b"lease",
                            "lease": b"lease"}
_ALL_KINDS: frozenset[StateKind] = frozenset({"rate", "quota", "concurrency"})
# A Limiter's on_full, when given, overrides the backend's policy for it:
# "the store cannot answer" is what both mean.
# "local" is the Redis backends' own: a limiter given on_full="local" (as
# backend.limiter(fail="local") does) is answered by the local table.
FAIL_OF_ON_FULL: dict[str, Fail] = {"allow": "open", "deny": "closed", "raise": "raise",
                                    "local": "local"}
ON_FULL_OF_FAIL: dict[str, str] = {"open": "allow", "closed": "deny", "raise": "raise",
                                   "local": "local"}


def on_full_of(fail: Fail | None) -> Any:
    """The ``on_full`` a limiter is given for a ``fail=`` of a backend's
    conveniences (``backend.limiter(fail=...)``); None: the backend's."""
    return None if fail is None else ON_FULL_OF_FAIL[check_fail(fail)]


# Seconds a concurrency lease counts without a renew (RedisBackend(lease_ttl=)).
DEFAULT_LEASE_TTL = 60.0
# quota.lua's mode argument for a refund
_QUOTA_REFUND = b"%d" % QuotaMode.REFUND
# Keys per script call in hit_many: one call blocks the server while it runs.
_CHUNK = 1000


@dataclass(frozen=True)
class RedisStats:
    """Counters of one backend object (this process only).

    Attributes:
        calls: script calls Redis answered.
        errors: script calls that failed, whatever the kind (the kinds
            below count them again, one each).
        skipped: script calls not attempted because their node was marked
            down (within its backoff after a failure).
        failed_open: checks allowed by the failure policy.
        failed_closed: checks denied by the failure policy.
        raised: BackendErrors raised (``fail="raise"``).
        cache_hits: checks denied by the local deny cache, with no round trip.
        down: whether a node's last call failed (a node Redis must answer
            again before it is tried without backoff).
        last_error: the last failure, as text.
        connection_errors: calls that failed to connect or lost their
            connection (the node is marked down).
        timeouts: calls that timed out (the node is marked down).
        retries: calls tried again on a fresh connection after a connection
            error, a timeout or a READONLY reply.
        pool_timeouts: calls that found no free connection in the pool
            within ``timeout`` (the node is not marked down: it is busy
            here, not down); their checks are denied even under
            ``fail="open"``.
        oom: calls Redis refused for want of memory (OOM, its
            ``maxmemory``); answered by the failure policy, node not down.
        readonly: READONLY replies (the URL reaches a replica).
        moved: MOVED/ASK replies on a client that is not a cluster client
            (a configuration error: the URL reaches a Redis Cluster node).
        cluster_down: CLUSTERDOWN replies (or a slot no node serves): the
            cluster cannot serve the slot, e.g. a dead primary's replica has
            not taken over yet.  The node answered, so it is not marked down;
            its calls are answered by the failure policy for a fixed
            ``retry_interval / 4`` (redis-py waits 0.25 s and refreshes the
            slot map on each such reply: a call per hold pays it, not every
            check).
        noscript: scripts Redis did not have (NOSCRIPT), loaded again.
        response_errors: other error replies.
        failed_local: checks answered by the local table (``fail="local"``).
        down_nodes: the nodes (``host:port``) whose last call failed.
        batches: round trips of ``batch=True`` (pipelines sent; see
            :mod:`.batching`).
        batched: script calls those round trips carried.
        refreshes: cluster slot maps read again because a call was due to a
            node marked down (at most one per ``retry_interval / 4``): a
            replica may have taken its slots over, and redis-py refreshes
            only after a call fails, which a skipped call never does.
    """

    calls: int
    errors: int
    skipped: int
    failed_open: int
    failed_closed: int
    raised: int
    cache_hits: int
    down: bool
    last_error: str | None
    connection_errors: int = 0
    timeouts: int = 0
    retries: int = 0
    pool_timeouts: int = 0
    oom: int = 0
    readonly: int = 0
    moved: int = 0
    noscript: int = 0
    response_errors: int = 0
    failed_local: int = 0
    down_nodes: tuple[str, ...] = ()
    batches: int = 0
    batched: int = 0
    cluster_down: int = 0
    refreshes: int = 0


# The kinds of failure (RedisStats fields).  Only a node that cannot be
# reached or does not answer in time is marked down; an error reply is an
# answer.
_DOWN_KINDS = frozenset({"connection_errors", "timeouts"})
_KIND_FIELDS = ("connection_errors", "timeouts", "retries", "pool_timeouts", "oom", "readonly",
                "moved", "noscript", "response_errors", "failed_local", "cluster_down")
# what the warning says of a failure of each kind that is not the node being down
_ADVICE = {
    "pool_timeouts": "no connection of the pool was free within the timeout: this process has "
                     "more checks in flight than max_connections",
    "oom": "Redis is out of memory (maxmemory reached under noeviction): writes fail until keys "
           "expire; give it more memory or a Redis of fastlimit's own (see the README's Sizing)",
    "readonly": "it is a read-only replica: point the URL at the primary, or use "
                "redis+sentinel://",
    "moved": "it is a Redis Cluster node and this client is not a cluster client: use a "
             "redis+cluster:// URL or a RedisCluster client",
    "cluster_down": "the cluster cannot serve this slot now (a primary is down and no replica "
                    "has taken over yet); tried again every retry_interval / 4",
}


def retry_safe(script: str, args: Sequence[bytes], kind: str) -> bool:
    """Whether a call may go again after a failure of ``kind``.  A call that
    timed out may have run: again, a hit counts twice (the safe side: it
    denies sooner), but a refund would give back twice, so it does not;
    nor does a fleet take that gives units back (its take alone would
    only pay twice, the safe side too)."""
    if kind != "timeouts":
        return True
    return not ((script == "gcra" and args[:1] == [b"refund"])
                or (script == "quota" and args[:1] == [_QUOTA_REFUND])
                or (script == "fleet" and args[_FLEET_GIVE] != b"0"))


def failure_kind(exc: BaseException) -> str:
    """The RedisStats field that counts a failure ``exc`` of a call."""
    if isinstance(exc, MaxConnectionsError) or (
            isinstance(exc, RedisConnectionError) and "No connection available" in str(exc)):
        return "pool_timeouts"
    if isinstance(exc, (RedisTimeoutError, TimeoutError)):
        return "timeouts"
    if isinstance(exc, OutOfMemoryError):
        return "oom"
    if isinstance(exc, ReadOnlyError):
        return "readonly"
    if isinstance(exc, AskError):  # MovedError is one
        return "moved"
    if isinstance(exc, (ClusterDownError, SlotNotCoveredError)):  # MASTERDOWN too
        return "cluster_down"
    if isinstance(exc, ResponseError):
        return "response_errors"
    return "connection_errors"  # ConnectionError (LOADING too), OSError, protocol errors


class _Node:
    """The failure state of one node (one server, or one cluster node)."""

    __slots__ = ("down_until", "failures", "last_error")

    def __init__(self) -> None:
        self.failures = 0  # consecutive, of the kinds that mark a node down
        # calls before then are skipped: a down node's backoff, or the hold
        # after a CLUSTERDOWN reply (which leaves ``failures`` as it was)
        self.down_until = 0.0
        self.last_error: str | None = None


class Failure(Exception):
    """A call Redis did not answer; ``cause`` is redis-py's exception,
    ``kind`` the RedisStats field that counted it ("skipped": not tried)."""

    def __init__(self, message: str, cause: BaseException | None,
                 kind: str = "skipped") -> None:
        super().__init__(message)
        self.cause = cause
        self.kind = kind


def split_ns(ns: int) -> tuple[int, int]:
    # the script's time representation: whole seconds and nanoseconds
    return divmod(ns, NS_PER_S)


def check_fail(fail: Any) -> Fail:
    if fail not in _FAILS:
        raise ConfigurationError(
            f"fail must be one of {', '.join(map(repr, _FAILS))}, got {fail!r}")
    result: Fail = fail
    return result


def _check_timeout(what: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigurationError(f"{what} must be a number of seconds > 0 or None, got {value!r}")
    return float(value)


def no_braces(what: str, text: Any) -> str:
    if not isinstance(text, str) or not text:
        raise ConfigurationError(f"{what} must be a non-empty str, got {text!r}")
    if "{" in text or "}" in text:
        raise ConfigurationError(
            f"{what} {text!r} must not contain '{{' or '}}': the key part is the "
            f"Redis Cluster hash tag")
    return text


class Keyspace:
    """One name on one backend, for one kind of state: its Redis keys and
    its failure policy.  Limiters, quotas and concurrency limits build on
    it, and each of their operations is a plan (below), shared by the sync
    and async front ends.

    ``kind`` goes between the name and the key's hash tag: b"" for limiters
    (``<prefix>:<name>:{<key>}``), b"quota" and b"lease" for the others
    (``<prefix>:<name>:quota{<key>}``).  The byte before the first brace
    tells the kinds apart (names have no braces), so a limiter and a quota
    of one name never share a key, and all state of one user key still
    shares its hash slot."""

    def __init__(self, backend: BackendBase, name: str, fail: Fail, kind: bytes = b"",
                 what: str = "a limiter name") -> None:
        self.backend = backend
        self.name = no_braces(what, name)
        self.fail = fail
        base = f"{backend.prefix}:{name}:".encode() + kind
        self._base = base
        self._str_base = base + b"{"
        self._int_base = base + b"#{"
        self._hash_tag = backend._hash_tag

    def rkey(self, key: Key) -> bytes:
        """The Redis key holding ``key``'s state (see the module docstring)."""
        identity = key_identity(key)
        if isinstance(identity, int):
            kb, is_int = b"%d" % identity, True
        else:
            kb, is_int = identity, False
        if self._hash_tag is None:
            return (self._int_base if is_int else self._str_base) + kb + b"}"
        tag = self._hash_tag(self.name, key)
        tb = tag.encode("utf-8") if isinstance(tag, str) else tag
        if not isinstance(tb, bytes) or not tb or b"}" in tb or b"{" in tb:
            raise ConfigurationError(
                f"hash_tag returned {tag!r} for key {key!r}: it must be a non-empty str "
                f"or bytes without braces")
        # the tag ends at the first '}', so what follows is the key verbatim
        return self._base + b"{" + tb + (b"}#" if is_int else b"}:") + kb

    def failed_allows(self, failure: Failure, checks: int = 1) -> bool:
        """Whether the failure policy allows ``checks`` checks Redis could
        not answer (counted); raises BackendError under ``"raise"``.  (Not
        for ``"local"``: its answers come from the local table.)

        A check that found no free connection within the timeout is denied
        even under ``"open"``: Redis is not down, this process has more
        checks in flight than connections, and admitting them unchecked
        would switch the limit off exactly under load."""
        self.raise_if_loud(failure)
        allow = self.fail == "open" and failure.kind != "pool_timeouts"
        self.backend._count("failed_open" if allow else "failed_closed", checks)
        return allow

    def answered_locally(self, checks: int = 1) -> bool:
        """True (and counted) if the failure policy is ``"local"``: the
        caller answers from its local state."""
        if self.fail != "local":
            return False
        self.backend._count("failed_local", checks)
        return True

    def raise_if_loud(self, failure: Failure) -> None:
        if self.fail == "raise":
            self.backend._count("raised")
            raise BackendError(str(failure)) from failure.cause

    def forget(self, key: Key) -> None:
        """Drop what is known locally about ``key`` (a limiter's deny cache)."""

    def reset_local(self, key: Key) -> None:
        """Reset ``key`` on the local table (``fail="local"``)."""

    def reset(self, key: Key) -> Plan[None]:
        rkey = self.rkey(key)
        self.forget(key)
        self.reset_local(key)
        try:
            # gcra.lua's 'reset' deletes its keys, whatever they hold
            yield "gcra", [rkey], [b"reset"]
        except Failure as f:
            self.raise_if_loud(f)


_Backend = TypeVar("_Backend", bound="BackendBase")


class BackendBase:
    """Options, counters, logging and the failure state shared by the sync
    and async backends."""

    _cluster: bool
    _client: Any

    # what a subclass talks to Redis with: its clients' types, and how it
    # makes one from a URL (redis-py's sync or asyncio client)
    _client_types: tuple[type, ...]
    _client_name: str
    _cluster_type: type

    def __init__(
        self,
        url_or_client: Any = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "fastlimit",
        fail: Fail = "local",
        connect_timeout: float | None = 0.5,
        timeout: float | None = 0.5,
        deny_cache: SharedTable | None = None,
        local_table: SharedTable | None = None,
        local_quota_table: SharedTable | None = None,
        hash_tag: HashTag | None = None,
        retry_interval: float = 1.0,
        max_retry_interval: float = 30.0,
        log_interval: float = 10.0,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        **redis_options: Any,
    ) -> None:
        self.prefix = no_braces("prefix", prefix)
        self.fail: Fail = check_fail(fail)
        self.connect_timeout = _check_timeout("connect_timeout", connect_timeout)
        self.timeout = _check_timeout("timeout", timeout)
        if deny_cache is not None and not isinstance(deny_cache, SharedTable):
            raise ConfigurationError(
                f"deny_cache must be a SharedTable or None, got {deny_cache!r}")
        for what, table, kind in (("local_table", local_table, "rates"),
                                  ("local_quota_table", local_quota_table, "quotas")):
            if table is not None and (not isinstance(table, SharedTable) or table.kind != kind):
                raise ConfigurationError(
                    f"{what} must be a SharedTable of kind {kind!r} or None, got {table!r}")
        if hash_tag is not None and not callable(hash_tag):
            raise ConfigurationError(f"hash_tag must be callable or None, got {hash_tag!r}")
        for what, value in (("retry_interval", retry_interval),
                            ("max_retry_interval", max_retry_interval),
                            ("log_interval", log_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(f"{what} must be a number of seconds >= 0, got {value!r}")
        if (isinstance(lease_ttl, bool) or not isinstance(lease_ttl, (int, float))
                or not 0.001 <= lease_ttl <= 365 * 86400):
            raise ConfigurationError(
                f"lease_ttl must be a number of seconds from 0.001 to 365 days, got {lease_ttl!r}")
        self.lease_ttl = float(lease_ttl)
        self._lease_ttl_ms = math.ceil(lease_ttl * 1000)
        self._deny_table = deny_cache
        # fail="local": the tables that answer while Redis cannot, made on
        # first need unless given (see _local_table)
        self._local_tables: dict[str, SharedTable] = {}
        if local_table is not None:
            self._local_tables["rates"] = local_table
        if local_quota_table is not None:
            self._local_tables["quotas"] = local_quota_table
        self._given_local = frozenset(self._local_tables)
        self._hash_tag = hash_tag
        self._retry_interval = float(retry_interval)
        self._max_retry_interval = max(float(max_retry_interval), self._retry_interval)
        self._log_interval = float(log_interval)
        self._url = url_or_client if isinstance(url_or_client, str) else None
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(
            ("calls", "errors", "skipped", "failed_open", "failed_closed", "raised",
             "cache_hits", *_KIND_FIELDS, "batches", "batched", "refreshes"), 0)
        # Failure domains: each node (a server, or a cluster node) is marked
        # down on its own, so a dead cluster primary fails only its slots.
        self._nodes: dict[str, _Node] = {}
        self._next_refresh = 0.0  # see _refresh_wanted
        self._last_error: str | None = None
        self._next_log = 0.0
        self._unlogged = 0
        self._memory_checked = False
        self.maxmemory_policy: str | None = None
        self._options = dict(
            prefix=prefix, fail=fail, connect_timeout=connect_timeout, timeout=timeout,
            deny_cache=deny_cache, local_table=local_table,
            local_quota_table=local_quota_table, hash_tag=hash_tag, retry_interval=retry_interval,
            max_retry_interval=max_retry_interval, log_interval=log_interval,
            lease_ttl=lease_ttl, **redis_options)
        if isinstance(url_or_client, str):
            # No retries inside redis-py: a failure must reach the policy
            # after one timeout, not after several with backoff between.
            options: dict[str, Any] = dict(
                socket_connect_timeout=self.connect_timeout, socket_timeout=self.timeout)
            options.update(redis_options)
            client = self._bounded_pool(self._from_url(url_or_client, options))
        elif isinstance(url_or_client, self._client_types):
            if redis_options:
                raise ConfigurationError("redis options go with a URL, not with a client")
            from fastlimit.stores.redis.topology import check_client

            check_client(url_or_client, type(self).__name__, self.connect_timeout, self.timeout)
            client = url_or_client
        else:
            raise ConfigurationError(
                f"{type(self).__name__} takes a URL or a {self._client_name} client, got "
                f"{url_or_client!r}")
        self._client = client
        self._cluster = isinstance(client, self._cluster_type)
        self._scripts = {name: client.register_script(text) for name, text in SCRIPTS.items()}

    @classmethod
    def from_url(cls: type[_Backend], url: str, **options: Any) -> _Backend:
        """The backend for ``url``, with its options read from the URL's
        query as well as given here (see :mod:`.topology`).

        ``redis://``, ``rediss://`` and ``unix://`` name one server (a
        cluster node's URL is followed as a cluster's seed, a replica's is
        refused); ``redis+cluster://h1:7000,h2:7001`` a Redis Cluster;
        ``redis+sentinel://h1:26379,h2:26379/service[/db]`` the master of a
        Sentinel service, followed through failovers.

        Raises:
            ConfigurationError: a URL that does not read, an option given
                both in the URL and here, or a URL that points at the wrong
                kind of Redis (naming the URL to write).

        Example:
            >>> url = "redis+cluster://10.0.0.5:7000,10.0.0.6:7000?fail=closed"
            >>> RedisBackend.from_url(url)  # doctest: +SKIP
            <RedisBackend redis+cluster://10.0.0.5:7000 prefix='fastlimit' fail='closed'>
        """
        from fastlimit.stores.redis.topology import split_options

        url, found = split_options(url)
        twice = sorted(set(found) & set(options))
        if twice:
            raise ConfigurationError(
                f"{twice[0]} is given both in the URL and as a keyword: give it once")
        return cls(url, **found, **options)

    def _from_url(self, url: str, options: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _bounded_pool(self, client: Any) -> Any:
        """``client`` on a blocking pool (a client made from a URL): a check
        that finds every connection in use waits for one, for up to
        ``timeout``, rather than failing at once."""
        raise NotImplementedError

    @property
    def kinds(self) -> frozenset[StateKind]:
        """Redis holds every kind of state: rates, quotas and leases."""
        return _ALL_KINDS

    # -- public helpers -----------------------------------------------------------

    def redis_key(self, name: str, key: Key, kind: str = "rate") -> bytes:
        """The Redis key that holds ``key``'s state for the limiter (or
        quota, or concurrency limit: ``kind``) ``name``.

        Example:
            >>> from fastlimit import RedisBackend
            >>> RedisBackend("redis://127.0.0.1:6379/0").redis_key("api", "user:42")
            b'fastlimit:api:{user:42}'
            >>> RedisBackend("redis://127.0.0.1:6379/0").redis_key("ai", "acct", "quota")
            b'fastlimit:ai:quota{acct}'
        """
        if kind not in _KINDS:
            raise ValueError(f"kind must be 'rate', 'quota' or 'concurrency', got {kind!r}")
        return Keyspace(self, name, self.fail, _KINDS[kind]).rkey(key)

    def stats(self) -> RedisStats:
        """This process's counters: calls, failures, policy answers, cache hits."""
        with self._lock:
            down = tuple(sorted(n for n, st in self._nodes.items() if st.failures))
            return RedisStats(**self._counts, down=bool(down), last_error=self._last_error,
                              down_nodes=down)

    def _local_table(self, kind: TableKind, injected: bool = False) -> SharedTable:
        """The local table of ``kind`` ("rates": limiters and leases;
        "quotas") that answers for Redis under ``fail="local"``.

        Unless given, it is a named table (``redis-local.<digest>``, the
        digest of the prefix and the address): every process on the host
        that uses this Redis with this prefix shares it, however it was
        started, so an outage admits at most the limit per host.  Limiters
        on an injected clock (tests) get an anonymous table of their own:
        a named table's clock is the monotonic one."""
        key: str = kind
        if injected and kind == "rates" and kind not in self._given_local:
            key = "rates:injected"
        with self._lock:
            table = self._local_tables.get(key)
            if table is None:
                table = self._local_tables[key] = self._make_local_table(kind, injected)
            return table

    def _make_local_table(self, kind: TableKind, injected: bool) -> SharedTable:
        # rates: a full table forgets the key due soonest rather than refuse one
        on_full: TableOnFull = "evict" if kind == "rates" else "deny"
        if not injected:
            digest = hashlib.sha256(f"{self.prefix}\0{self.address}".encode()).hexdigest()[:16]
            name = f"redis-local{'' if kind == 'rates' else '-quotas'}.{digest}"
            try:
                return SharedTable.open(name, capacity=DEFAULT_CAPACITY, on_full=on_full,
                                        kind=kind)
            except (TableError, OSError) as e:
                log.warning("fastlimit: no local table %r for fail='local' (%s): this process "
                            "uses one of its own", name, e)
        return SharedTable.anonymous(DEFAULT_CAPACITY, on_full=on_full, kind=kind)

    @property
    def local_tables(self) -> dict[str, SharedTable]:
        """The local tables made or given for ``fail="local"`` so far."""
        with self._lock:
            return dict(self._local_tables)

    @property
    def deny_cache(self) -> SharedTable | None:
        """The local deny cache, if any."""
        return self._deny_table

    @functools.cached_property
    def address(self) -> str:
        """Where Redis is, for messages (never with credentials)."""
        # (cached: every call's failure-state lookup names it)
        if self._url is not None:
            # a cluster or Sentinel URL names several hosts: its first one
            from fastlimit.stores.redis.topology import address_of

            return address_of(self._url)
        kw = getattr(getattr(self._client, "connection_pool", None), "connection_kwargs", {})
        if "path" in kw:
            return f"unix://{kw['path']}"
        if "host" in kw:
            return f"{kw['host']}:{kw.get('port', 6379)}"
        return type(self._client).__name__

    # -- failure state -------------------------------------------------------------

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self._counts[what] += n

    def _node_of(self, keys: Sequence[bytes]) -> str:
        """The node a call on ``keys`` goes to, as ``host:port``: the
        server, or on a cluster the node that holds the first key's slot."""
        if not self._cluster or not keys:
            return self.address
        try:
            node = self._client.get_node_from_key(keys[0])
        except Exception:  # noqa: BLE001 - e.g. a cluster client not yet initialised
            return self.address
        return self.address if node is None else str(node.name)

    def _skip(self, node: str) -> Failure | None:
        """The failure to answer at once while ``node`` is marked down (or
        held after CLUSTERDOWN), or None."""
        state = self._nodes.get(node)
        if state is None or _monotonic() >= state.down_until:
            return None
        with self._lock:
            self._counts["skipped"] += 1
            self._unlogged += 1
        why = "is marked down after" if state.failures else "said"
        return Failure(f"Redis at {node} {why} {state.last_error}", None)

    def _refresh_wanted(self, node: str) -> bool:
        """Whether a call due to ``node`` should first read the cluster's
        slot map again: the node is marked down, so a replica may have
        taken its slots over since, and the skipped calls would never tell
        (redis-py refreshes after a failed call).  At most once per
        ``retry_interval / 4`` for the backend: the caller told True does."""
        if not self._cluster:
            return False
        state = self._nodes.get(node)
        now = _monotonic()
        if state is None or not state.failures or now >= state.down_until:
            return False
        with self._lock:
            if now < self._next_refresh:
                return False
            self._next_refresh = now + self._retry_interval / 4
            self._counts["refreshes"] += 1
        return True

    def _refreshed(self, keys: Sequence[bytes], node: str, error: BaseException | None) -> str:
        """After a refresh for a call due to ``node`` (``error``: what the
        refresh raised): the node the call goes to now.  A down node that
        serves no slots any more (its replica took over) is forgotten, so it
        is not reported down, nor pinged, for ever."""
        if error is not None:
            return node
        try:
            primaries = {str(n.name) for n in self._client.get_primaries()}
        except Exception:  # noqa: BLE001 - a client that cannot say: keep what is known
            return node
        with self._lock:
            gone = [n for n in self._nodes if n not in primaries]
            for n in gone:
                del self._nodes[n]
        moved = self._node_of(keys)
        if gone:
            log.warning("fastlimit: Redis Cluster: %s serves no slots now; its keys go to the "
                        "nodes that do (%s for this call)", ", ".join(gone), moved)
        return moved

    def _retries(self, node: str, kind: str) -> bool:
        """Whether a call that failed with ``kind`` goes again on a fresh
        connection: once, and only on a node that answered its last call (a
        node known to be down costs one attempt per backoff, not two)."""
        if kind not in _DOWN_KINDS and kind != "readonly":
            return False
        state = self._nodes.get(node)
        if state is not None and state.failures:
            return False
        self._count("retries")
        return True

    def _failure(self, exc: BaseException, node: str | None = None,
                 mark: bool = True) -> Failure:
        """Count and log a failed call to ``node`` (None: the backend's
        address); ``mark``: mark the node down if the kind says so (not for
        a cluster's ping, which names no one node)."""
        node = self.address if node is None else node
        kind = failure_kind(exc)
        now = _monotonic()
        text = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._counts["errors"] += 1
            self._counts[kind] += 1
            self._last_error = text
            if kind in _DOWN_KINDS and mark:
                state = self._nodes.setdefault(node, _Node())
                state.failures += 1
                state.last_error = text
                # backoff: the interval doubles with each failure in a row
                backoff = self._retry_interval * 2.0 ** min(state.failures - 1, 30)
                state.down_until = now + min(backoff, self._max_retry_interval)
            elif kind == "cluster_down" and mark:
                # the node answered: a fixed hold, never doubled, so the
                # slot is served again soon after a replica takes over
                state = self._nodes.setdefault(node, _Node())
                state.last_error = text
                state.down_until = max(state.down_until, now + self._retry_interval / 4)
            emit = now >= self._next_log
            if emit:
                unlogged, self._unlogged = self._unlogged, 0
                self._next_log = now + self._log_interval
            else:
                self._unlogged += 1
        if emit:
            more = f"; {unlogged} more failures since the last warning" if unlogged else ""
            advice = f": {_ADVICE[kind]}" if kind in _ADVICE else ""
            log.warning(
                "fastlimit: Redis at %s failed (%s)%s; checks answer by their failure policy "
                "(backend default fail=%r)%s", node, text, advice, self.fail, more)
        return Failure(f"Redis at {node} failed: {text}", exc, kind)

    def _success(self, node: str | None = None) -> None:
        """A call to ``node`` was answered; None: Redis as a whole (a ping),
        which ends every node's marked-down period."""
        with self._lock:
            self._counts["calls"] += 1
            if node is None:
                revived = [n for n, st in self._nodes.items() if st.failures]
            else:
                state = self._nodes.get(node)
                if state is not None:
                    state.down_until = 0.0  # a CLUSTERDOWN hold ends too
                revived = [node] if state is not None and state.failures else []
            if not revived:
                return
            for n in revived:
                self._nodes[n].failures = 0
                self._nodes[n].down_until = 0.0
            unlogged, self._unlogged = self._unlogged, 0
            self._next_log = 0.0
        log.warning("fastlimit: Redis at %s answers again (%d failures since the last warning)",
                    ", ".join(revived), unlogged)

    def _ping_plan(self) -> Generator[dict[str, Any], BaseException | None, bool]:
        """What :meth:`ping` does, without its I/O: yields the keyword
        arguments of each ``client.ping(...)`` to make (first the client's
        own; on a cluster then one per node marked down, ``target_nodes=``),
        is sent what each raised (None: answered), and returns whether Redis
        answered.  A cluster's own ping names no one node, so its failure
        marks none down; a down node revives only if it answers itself."""
        error = yield {}
        if error is not None:
            self._failure(error, mark=not self._cluster)
            return False
        if not self._cluster:
            self._success(None)
            return True
        answered = True
        for name in self.stats().down_nodes:
            node = self._client.get_node(node_name=name)
            # (a node gone from the cluster has no slots left: nothing to ask)
            error = None if node is None else (yield {"target_nodes": node})
            if error is not None:
                self._failure(error, name)
                answered = False
            else:
                self._success(name)
        return answered

    def _first_success(self) -> bool:
        # a plain read first: the lock is for the one call that checks
        return not self._memory_checked and self._memory_policy_checked()

    def _memory_policy_checked(self) -> bool:
        """True the first time only (then the caller asks Redis its
        maxmemory-policy)."""
        with self._lock:
            first, self._memory_checked = not self._memory_checked, True
        return first

    def _memory_policy(self, reply: Any) -> None:
        """Warn once if Redis may evict fastlimit's keys (CONFIG GET's reply)."""
        policy = reply.get("maxmemory-policy", reply.get(b"maxmemory-policy")) \
            if isinstance(reply, dict) else None
        if isinstance(policy, bytes):
            policy = policy.decode("ascii", "replace")
        if not isinstance(policy, str):
            return
        self.maxmemory_policy = policy
        if policy != "noeviction":
            log.warning(
                "fastlimit: Redis at %s has maxmemory-policy %s: when it reaches maxmemory it "
                "evicts keys, and a limit whose key is evicted starts again from zero (every "
                "fastlimit key has a TTL, so volatile-* policies evict them first). Give "
                "fastlimit a Redis with maxmemory-policy noeviction, or one of its own "
                "(see the README's Sizing).", self.address, policy)

    # -- building calls --------------------------------------------------------------

    def _fail_of(self, on_full: str | None, fail: Fail | None = None) -> Fail:
        """The failure policy of a limiter, quota or concurrency limit."""
        if fail is None:
            if on_full is not None and on_full != "local":
                on_full_code(on_full)  # refuses a bad value with the contract's message
            fail = self.fail if on_full is None else FAIL_OF_ON_FULL[on_full]
        return check_fail(fail)

    def _args(self, mode: bytes, now: int | None,
              groups: Sequence[Sequence[bytes]]) -> list[bytes]:
        if now is None:
            args = [mode, b"", b"", b"%d" % len(groups)]
        else:
            now_s, now_ns = split_ns(now)
            args = [mode, b"%d" % now_s, b"%d" % now_ns, b"%d" % len(groups)]
        for g in groups:
            args.extend(g)
        return args

    def _batches(self, rkeys: Sequence[bytes], todo: list[int]) -> list[list[int]]:
        """Indices of ``todo`` in script-sized batches, in order.  On a cluster
        a script's keys must share a slot: batch per slot (a key's own checks
        stay in order; checks of different keys are independent)."""
        if not self._cluster:
            return [todo[i:i + _CHUNK] for i in range(0, len(todo), _CHUNK)]
        by_slot: dict[int, list[int]] = {}
        for i in todo:
            by_slot.setdefault(key_slot(rkeys[i]), []).append(i)
        return [g[i:i + _CHUNK] for g in by_slot.values() for i in range(0, len(g), _CHUNK)]
