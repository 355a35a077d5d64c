"""Policy: every limit of an API in one place, enforced per request.

A request is ``(method, path, identity, client IP)``.  :meth:`Policy.resolve`
turns it into the limits that apply:

- the identity's limit: an API key gets its tier's rate (per account, or
  per key), a session the session rate, a token the token rate (100/1h by
  default, changeable per token at run time), and a caller with no
  credential, an invalid one, or a key of a tier without API access gets the
  anonymous rate per source IP;
- every route limit whose pattern matches (per IP, or per identity); a
  ``dedicated`` route limit replaces the identity's limit, so bulk routes
  and webhooks do not eat the tier's budget.

For an API key on a tier, the routes of ``[quotas]``, ``[concurrency]`` and
``[caps]`` add the tier's allowances: a calendar quota counted with the
rates, a concurrency lease held while the request is in flight, and size
caps checked before anything is counted.

:meth:`Policy.hit` then counts the request against all of them at once (see
:mod:`fastlimit.limiters.composite`) and returns a :class:`PolicyDecision`
carrying the headers and, for a denial, the status and body to answer
with.  Both are the compiled decision path of ``policy/_plan.pyx``, which
the middlewares run too.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from fastlimit.errors import ConfigurationError
from fastlimit.limiters.aio import AsyncConcurrencyLimit, AsyncLimiter, AsyncQuota
from fastlimit.limiters.composite import CompositeResult, LimitCheck
from fastlimit.limiters.concurrency import ConcurrencyLimit
from fastlimit.limiters.limiter import Limiter
from fastlimit.limiters.quota import Quota, QuotaSpec
from fastlimit.limiters.rate import Rate
from fastlimit.policy._plan import (
    Bucket,
    Plan,
    PolicyDecision,
    RouteRule,
    RouteSet,
    TierPlan,
    Usage,
)
from fastlimit.policy.config import load_dict, load_file
from fastlimit.policy.identity import Identity
from fastlimit.policy.overrides import Overrides, default_path
from fastlimit.policy.routes import RouteTable
from fastlimit.policy.spec import (
    DEFAULT_QUOTA_CAPACITY,
    IDENTITY_KINDS,
    FailPolicy,
    PolicySpec,
    TierSpec,
    UsageSpec,
)
from fastlimit.stores.contract import AsyncStore, Store
from fastlimit.stores.table import (
    SharedTable,
    anonymous_path,
    overrides_path,
    quotas_path,
    state_dir,
)

__all__ = ["Identity", "Policy", "PolicyDecision", "Resolution"]

log = logging.getLogger("fastlimit")
# a limit's fail (policy TOML) as the on_full a Redis backend's state reads
_ON_FULL_OF_FAIL: dict[str, str] = {"local": "local", "open": "allow", "closed": "deny"}


class Resolution(NamedTuple):
    """The limits a request is subject to, in the order they are hit.

    Attributes:
        checks: the limits and keys.
        identity: the identity limit's kind that applied (``"anonymous"``
            for invalid credentials), or None for a dedicated route.
        rejected: why the credential was treated as invalid, if it was
            (e.g. ``"tier FREE has no API access"``): the application
            should refuse the request (401/403) as well.
        tier: the caller's tier (with customer caps applied), for API keys.
        leases: the concurrency limits the request holds a lease of while
            in flight: (name, limit, key, leases per key).
        caps: the tier's caps that apply: (name, maximum).
    """

    checks: tuple[LimitCheck, ...]
    identity: str | None
    rejected: str | None = None
    tier: TierSpec | None = None
    leases: tuple[tuple[str, ConcurrencyLimit, str, int], ...] = ()
    caps: tuple[tuple[str, int], ...] = ()


class Policy:
    """Tiers, identities, route limits, overrides and HTTP answers.

    Load one with :meth:`from_file` (TOML) or :meth:`from_dict`; the schema
    is in :mod:`fastlimit.config`.

    Args:
        spec: the checked policy.
        store: the SharedTable for state (default: the ``[store]`` table,
            else an anonymous table shared only with forked children), or a
            :class:`~fastlimit.RedisBackend`: then rates, quotas and
            concurrency leases all live in Redis, shared by every host
            (``[store] quotas`` is not used), and each request is one
            script call (its leases, rates and quotas, all or nothing; a
            release one more).  On an :class:`~fastlimit.AsyncRedisBackend`
            the same, awaited: count with :meth:`ahit` or behind the ASGI
            middleware (``hit``, the WSGI middleware and RouteLimit refuse
            it, as they cannot await).
        clock: monotonic int-ns clock for the limiters and concurrency
            limits (tests: FakeClock).
        wall_clock: Unix-time int-ns clock for epoch/ISO reset headers
            and quota periods (default ``time.time_ns``).
        overrides: an :class:`Overrides` or its path (default: the
            ``[store] overrides`` path, else a file beside the named table,
            else in-process only).

    Example:
        >>> from fastlimit import FakeClock
        >>> clock = FakeClock()
        >>> policy = Policy.from_dict({
        ...     "identities": {"token": {"rate": "2/1h"}},
        ...     "headers": {"reset": "delta"},
        ... }, clock=clock)
        >>> me = Identity.token("tok_1")
        >>> [policy.hit("GET", "/ocr", me).allowed for _ in range(3)]
        [True, True, False]
        >>> denied = policy.hit("GET", "/ocr", me)
        >>> denied.status, denied.retry_after, denied.headers[-1]
        (429, 1800, ('Retry-After', '1800'))
        >>> policy.overrides.set("token", "tok_1", "10/1h")   # seen at the next check
        >>> clock.advance(360)                                 # 1/10 h, not 1/2 h
        >>> policy.hit("GET", "/ocr", me).allowed
        True
    """

    def __init__(
        self,
        spec: PolicySpec,
        *,
        store: Any = None,
        clock: Callable[[], int] | None = None,
        wall_clock: Callable[[], int] | None = None,
        overrides: Overrides | str | os.PathLike[str] | None = None,
    ) -> None:
        self.spec = spec
        self._owned: list[Any] = []
        self._told: set[str] = set()  # the identity kinds it warned of having no rule for
        self.made_in: int | None = None
        """The process that made this policy's table of its own (no ``[store]
        table``, no ``store=``), which only it and its forked children share;
        None when the table is named or given."""
        if store is None:
            if spec.store.table is not None:
                store = SharedTable.open(spec.store.table, capacity=spec.store.capacity)
            else:
                store = SharedTable.anonymous(capacity=spec.store.capacity or 65_536)
                self.made_in = os.getpid()
            self._owned.append(store)
        self.store = store
        self.asynchronous = not isinstance(store, Store) and isinstance(store, AsyncStore)
        """Whether the store is an asyncio one (an AsyncRedisBackend): then
        requests are counted with ``await`` (:meth:`ahit`, the ASGI
        middleware), never blocking the event loop."""
        self.anonymous_store = self._open_anonymous_store(store)
        """Where per-IP keys count (anonymous callers, per-IP routes): a
        table of their own beside a shared table, so a flood of new
        addresses fills only it and never takes the slots new authenticated
        callers need; the store itself when it has no fixed capacity (Redis)."""
        self.overrides = self._open_overrides(overrides, store)
        self._wall_clock = wall_clock or time.time_ns
        self._clock = clock
        self.shadow_denials: Counter[str] = Counter()
        """Shadow denials seen by this process, by limit name."""
        self._quotas: dict[tuple[str, QuotaSpec], Quota | AsyncQuota] = {}
        self._quota_table: SharedTable | None = None
        if any(u.kind == "quota" for u in spec.usage):
            try:
                self._quota_store()  # a directory it cannot write fails now, not at a request
            except BaseException:
                self.close()
                raise
        concurrency = AsyncConcurrencyLimit if self.asynchronous else ConcurrencyLimit
        self._concurrency = {
            u.name: concurrency(None, store, name=f"{spec.name}/{u.name}",
                                retry_after=float(u.retry_after), clock=clock,
                                on_full=self._on_full(u.fail))
            for u in spec.usage if u.kind == "concurrency"}
        self._plan = self._compile()
        # a store that counts a whole request in one call (Redis) is given it
        count_request = getattr(store, "count_request", None)
        if count_request is not None:
            self._plan.remote = count_request
            self._plan.remote_ops = store.request_ops
            self._plan.remote_async = inspect.iscoroutinefunction(count_request)
        # A policy's checks are its compiled plan's, bound on the instance
        # (one C call), unless a subclass overrides them: then its own run,
        # and the middlewares call them too.
        for method in ("hit", "peek"):
            if getattr(type(self), method) is getattr(Policy, method) and not self.asynchronous:
                setattr(self, method, getattr(self._plan, method))

    def _compile(self) -> Plan:
        """The decision path of this policy's spec (see policy/_plan.pyx)."""
        spec = self.spec

        def limiters(store: Any, fail: FailPolicy | None
                     ) -> Callable[[Rate, str], Limiter | AsyncLimiter]:
            on_full = self._on_full(fail)

            def limiter(rate: Rate, bucket: str) -> Limiter | AsyncLimiter:
                kind = AsyncLimiter if self.asynchronous else Limiter
                return kind(rate, store, name=bucket, clock=self._clock, on_full=on_full)
            return limiter

        separate = self.anonymous_store is not self.store

        def bucket(name: str, rate: Any, shadow: bool, prefix: int, suffix: str = "", *,
                   per_ip: bool = False, by_ip: bool = True,
                   fail: FailPolicy | None = None) -> Bucket:
            """A limit's bucket; ``per_ip``: only per-IP keys count in it;
            ``by_ip``: some may (they count in its twin on the anonymous
            class's table)."""
            args = (name, f"{spec.name}/{name}{suffix}", rate, shadow or spec.shadow)
            limiter, ip_limiter = limiters(self.store, fail), limiters(self.anonymous_store, fail)
            if per_ip and separate:
                return Bucket(*args, ip_limiter, prefix)
            b = Bucket(*args, limiter, prefix)
            if by_ip and separate:
                b.by_ip = Bucket(*args, ip_limiter, prefix)
            return b

        identities = {kind: bucket(s.name, s.rate if isinstance(s.rate, Rate) else None,
                                   s.shadow, s.ipv6_prefix, per_ip=kind == "anonymous",
                                   by_ip=False, fail=s.fail)
                      for kind, s in spec.identities.items()}
        rules: list[tuple[str, RouteRule | Usage]] = []
        for r in spec.routes:
            rule = RouteRule(r, bucket(r.name, r.rate, r.shadow, r.ipv6_prefix,
                                       per_ip=r.per == "ip", fail=r.fail),
                             None if r.anonymous_rate is None else
                             bucket(r.name, r.anonymous_rate, r.shadow, r.ipv6_prefix,
                                    "#anonymous", per_ip=True, fail=r.fail))
            rules += [(p, rule) for p in r.patterns]
        for u in spec.usage:
            usage = Usage(u, self._concurrency.get(u.name))
            rules += [(p, usage) for p in u.patterns]
        api = identities.get("api_key")
        tiers = {name: TierPlan(t, api) for name, t in spec.tiers.items()}
        customers = {name: TierPlan(t, api) for name, t in spec.customers.items()}
        routes: RouteTable[RouteRule | Usage] = RouteTable(rules, combine=_route_set)
        self._routes = routes
        return Plan(self, identities, routes._index, tiers, customers, self.overrides,
                    None if self._wall_clock is time.time_ns else self._wall_clock,
                    spec.headers, dict(spec.responses),
                    {name: c.retry_after for name, c in self._concurrency.items()},
                    api_tiers=api is not None and spec.identities["api_key"].rate == "tier",
                    identity_type=Identity, resolution_type=Resolution,
                    check_type=LimitCheck, result_type=CompositeResult)

    # -- construction --------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **options: Any) -> Policy:
        """Load the TOML policy at ``path``; ``options`` as for :class:`Policy`.

        Raises:
            ConfigurationError: naming the file, the key path and what was
                expected.

        Example:
            >>> policy = Policy.from_file("examples/seed000.toml")   # doctest: +SKIP
        """
        return cls(load_file(path), **options)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **options: Any) -> Policy:
        """Load a policy from a dict shaped like the TOML file.

        Example:
            >>> Policy.from_dict({"identities": {"session": {"rate": "300/1m"}}}).name
            'policy'
        """
        return cls(load_dict(data), **options)

    def _open_anonymous_store(self, store: Any) -> Any:
        if not isinstance(store, SharedTable) or store.kind != "rates":
            return store  # no fixed capacity to share out (Redis; a store of your own)
        capacity = self.spec.store.anonymous_capacity or store.capacity
        # "evict": when it is full, the per-IP key due soonest is forgotten
        # rather than a new caller refused (a forgotten key starts afresh)
        on_full = self.spec.store.anonymous_on_full
        if store.path is None:
            table = SharedTable.anonymous(capacity, on_full=on_full)
        else:
            table = SharedTable.open(path=anonymous_path(store.path), capacity=capacity,
                                     on_full=on_full)
        self._owned.append(table)
        return table

    def _open_overrides(self, given: Overrides | str | os.PathLike[str] | None,
                        store: Any) -> Overrides:
        if isinstance(given, Overrides):
            return given
        path = given if given is not None else self.spec.store.overrides
        if path is None and getattr(store, "path", None) is not None:
            path = overrides_path(store.path, self.spec.name)
            legacy = default_path(store.path)  # before 0.2: one file for every policy
            if not os.path.exists(path) and os.path.exists(legacy):
                log.warning("fastlimit: policy %r keeps using the overrides at %s, written "
                            "before 0.2 and shared by every policy on its table; move it "
                            "to %s (its own) or set [store] overrides", self.spec.name,
                            legacy, path)
                path = legacy
        try:
            overrides = Overrides(path)
        except (ConfigurationError, OSError) as e:
            if given is not None or self.spec.store.overrides is None:
                raise
            raise ConfigurationError(
                f"{self.spec.source}: store.overrides: {e}; expected a file in a directory "
                f"that exists and is this user's") from None
        self._owned.append(overrides)
        return overrides

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def tables(self) -> dict[str, SharedTable]:
        """Its shared tables by the class of key they hold: ``"authenticated"``
        (API keys, sessions, tokens, accounts) and ``"anonymous"`` (per-IP
        keys); their ``stats().full_events`` are each class's, and
        ``prometheus_text(*policy.tables.values())`` labels them by table.
        Empty on a store that is not a table (Redis)."""
        found = {"authenticated": self.store, "anonymous": self.anonymous_store}
        return {k: t for k, t in found.items() if isinstance(t, SharedTable)}

    @property
    def tiers(self) -> Mapping[str, TierSpec]:
        return self.spec.tiers

    def _quota(self, usage: UsageSpec, allowance: QuotaSpec) -> Quota | AsyncQuota:
        """The Quota (AsyncQuota on an asyncio store) counting ``usage.name``
        at ``allowance`` (tiers differ in limit, not in counts: an upgrade
        keeps the month's usage)."""
        quota = self._quotas.get((usage.name, allowance))
        if quota is None:
            name = f"{self.spec.name}/{usage.name}"
            on_full = self._on_full(usage.fail)
            quota = self._quotas[(usage.name, allowance)] = AsyncQuota(
                allowance, self.store, name=name, tz=usage.tz, clock=self._wall_clock,
                on_full=on_full) if self.asynchronous else Quota(
                allowance, store=self._quota_store(), name=name, tz=usage.tz,
                clock=self._wall_clock, on_full=on_full)
        return quota

    def _on_full(self, fail: FailPolicy | None) -> Any:
        """The ``on_full`` a limit with the policy's ``fail`` gets: on Redis
        (a store with local tables for fail="local") the failure policy it
        names; elsewhere none (a shared table cannot fail, and its on_full
        is about a full table)."""
        if fail is None or not hasattr(self.store, "local_tables"):
            return None
        return _ON_FULL_OF_FAIL[fail]

    def _quota_store(self) -> Any:
        """Where quotas count: a store that holds quota counts (Redis) counts
        them itself, across hosts; one that holds only rates (a rate table:
        its slots hold times, not counts) gets a quota file beside it, kept
        across restarts."""
        if "quota" in self.store.kinds:
            return self.store
        if self._quota_table is None:
            self._quota_table = self._open_quota_table()
            self._owned.append(self._quota_table)
        return self._quota_table

    def _open_quota_table(self) -> SharedTable:
        spec = self.spec
        # its own capacity (accounts x quotas), not the rate table's
        capacity = spec.store.quota_capacity or DEFAULT_QUOTA_CAPACITY
        path = spec.store.quotas or quotas_path(getattr(self.store, "path", None), spec.name)
        if path is None:  # a table of this process's: its quotas count beside it, in memory
            return SharedTable.anonymous(capacity, kind="quotas")
        legacy = os.path.join(state_dir(), f"{spec.name}-quotas.tbl")  # before 0.2
        if spec.store.quotas is None and not os.path.exists(path) and os.path.exists(legacy):
            log.warning("fastlimit: policy %r keeps counting quotas in %s, written before "
                        "0.2 and shared by every policy named %r on any table; move it to "
                        "%s (its table's) or set [store] quotas", spec.name, legacy,
                        spec.name, path)
            path = legacy
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            # a file made before keeps the size it was made with
            return SharedTable.open(path=path, capacity=None if os.path.exists(path)
                                    else capacity, kind="quotas")
        except OSError as e:
            where = ("store.quotas" if spec.store.quotas else
                     "the quota file (set [store] quotas, or $FASTLIMIT_STATE_DIR)")
            raise ConfigurationError(
                f"{spec.source}: {where}: cannot open {path}: {e.strerror or e}; expected a "
                f"file in a directory this user can write") from None

    def reset(self) -> None:
        """Forget every count: its tables' rate and quota state (every key
        in them, including another policy's that shares them), and the
        shadow denials seen.  Overrides are configuration and stay; leases
        in flight stay until their requests end.  For tests and for starting
        over; see :meth:`SharedTable.clear`.

        Raises:
            ConfigurationError: the store is not a shared table (on Redis,
                delete the keys under the backend's prefix).

        Example:
            >>> policy = Policy.from_dict({"identities": {"anonymous": {"rate": "1/1h"}}})
            >>> policy.hit("GET", "/", client_ip="10.0.0.1").allowed
            True
            >>> policy.hit("GET", "/", client_ip="10.0.0.1").allowed
            False
            >>> policy.reset()
            >>> policy.hit("GET", "/", client_ip="10.0.0.1").allowed
            True
        """
        tables = list(self.tables.values())
        if not tables:
            raise ConfigurationError(
                f"policy {self.name!r} counts in {type(self.store).__name__}, not a shared "
                f"table: reset() cannot clear it (on Redis, delete the keys under the "
                f"backend's prefix)")
        if any(u.kind == "quota" for u in self.spec.usage) and "quota" not in self.store.kinds:
            tables.append(self._quota_store())
        for table in tables:
            table.clear()
        self.shadow_denials.clear()

    def missing_identities(self, kinds: Iterable[str] = IDENTITY_KINDS) -> tuple[str, ...]:
        """The identity kinds of ``kinds`` the policy has no rule for: their
        callers are not limited by any identity limit (only by route limits).
        ``rate = "unlimited"`` is a rule: it says so on purpose.

        Example:
            >>> policy = Policy.from_dict({"identities": {"token": {"rate": "100/1h"}}})
            >>> policy.missing_identities(["anonymous", "token"])
            ('anonymous',)
        """
        return tuple(k for k in kinds if k not in self.spec.identities)

    def _unruled(self, kind: str, why: str = "") -> None:
        """Warn, once per kind, that ``kind`` callers meet no identity limit."""
        if kind in self._told:
            return
        self._told.add(kind)
        who = ("callers without a credential (or with one that fails)"
               if kind == "anonymous" else f"{kind} callers")
        log.warning(
            "fastlimit: policy %r (%s) has no [identities.%s] rule, so %s%s are limited by "
            "no identity limit. Add [identities.%s] with a rate, or rate = \"unlimited\" to "
            "say so.", self.name, self.spec.source, kind, who, why, kind)

    def close(self) -> None:
        """Release the table and overrides this policy opened itself."""
        for thing in reversed(self._owned):
            thing.close()
        self._owned.clear()

    def __enter__(self) -> Policy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Policy {self.name!r} from {self.spec.source}>"

    # -- resolving -----------------------------------------------------------

    def tier_of(self, identity: Identity) -> TierSpec | None:
        """The tier (with customer caps) an API key's limits come from.

        Raises:
            ValueError: the identity names a tier the policy does not have.

        Example:
            >>> policy = Policy.from_dict({
            ...     "identities": {"api_key": {"rate": "tier"}},
            ...     "tiers": {"STARTER": {"requests_per_minute": 30,
            ...                           "quotas": {"chat": "200/month"}}}})
            >>> str(policy.tier_of(Identity.api_key("k", "STARTER")).quotas["chat"])
            '200/month'
        """
        if identity.kind != "api_key":
            return None
        if identity.account is not None:
            custom = self.spec.customers.get(identity.account)
            if custom is not None:
                return custom
        tier = self.spec.tiers.get(identity.tier or "")
        if tier is None:
            raise ValueError(
                f"unknown tier {identity.tier!r}; this policy has: {', '.join(self.spec.tiers)}")
        return tier

    def resolve(self, method: str, path: str, identity: Identity | None = None,
                client_ip: str | None = None) -> Resolution:
        """The limits ``method path`` from ``identity`` at ``client_ip`` is
        subject to, with their keys, in the order they are hit.

        ``path`` is the path as routed (percent-decoded); a query string is
        ignored.  ``client_ip`` must be the peer address, or a proxy's
        forwarded address only when the proxy is trusted.

        Raises:
            ValueError: a per-IP limit applies and ``client_ip`` is missing,
                or an API key names an unknown tier.

        Example:
            >>> policy = Policy.from_dict({
            ...     "identities": {"session": {"rate": "300/1m"}},
            ...     "routes": {"POST /login": "5/1m"}})
            >>> r = policy.resolve("POST", "/login/", Identity.session("u1"), "10.0.0.1")
            >>> [(c.name, c.key, str(c.limiter.rate)) for c in r.checks]
            [('session', 'u1', '300/1m'), ('POST /login', '10.0.0.1', '5/1m')]
        """
        found: Resolution = self._plan.resolve(method, path, identity, client_ip)
        return found

    # -- checking ------------------------------------------------------------

    def hit(self, method: str, path: str, identity: Identity | None = None,
            client_ip: str | None = None, *, cost: int = 1,
            content_length: int | None = None, files: int | None = None) -> PolicyDecision:
        """Count the request against every limit it is subject to.

        It passes only if all enforced limits allow it; if one denies,
        nothing is consumed from any (see :mod:`fastlimit.composite`).
        Shadow limits are counted and logged but never deny.  In order:
        the tier's caps (413, nothing counted), its concurrency leases
        (taken now; :meth:`PolicyDecision.release` gives them back when the
        response is done), then the rate limits and quotas together.

        Args:
            cost: what the request costs on each limit (e.g. N for a batch
                of N files).
            content_length: the request body's size in bytes, checked
                against the tier's payload caps (413).
            files: the number of files in a batch upload, checked against
                the tier's batch size cap (413).

        Raises:
            CapacityError: ``cost`` exceeds an enforced limit's burst.
            ValueError: as for :meth:`resolve`.

        Example:
            >>> from fastlimit import FakeClock
            >>> policy = Policy.from_dict({"identities": {"anonymous": {"rate": "1/1m"}}},
            ...                           clock=FakeClock(), wall_clock=lambda: 0)
            >>> for header in policy.hit("GET", "/", client_ip="10.0.0.1").headers:
            ...     print(*header)
            X-RateLimit-Limit 1
            X-RateLimit-Remaining 0
            X-RateLimit-Reset 60
        """
        if self.asynchronous:
            raise ConfigurationError(self._awaited("hit"))
        return self._plan.hit(method, path, identity, client_ip, cost=cost,
                              content_length=content_length, files=files)

    async def ahit(self, method: str, path: str, identity: Identity | None = None,
                   client_ip: str | None = None, *, cost: int = 1,
                   content_length: int | None = None,
                   files: int | None = None) -> PolicyDecision:
        """:meth:`hit` for asyncio code: on an asyncio store (an
        :class:`~fastlimit.AsyncRedisBackend`) the request is counted in one
        awaited call, and the event loop runs on meanwhile; on any other
        store it is :meth:`hit`.  A decision holding leases gives them back
        with ``await decision.release()``."""
        d: PolicyDecision = await self._plan.hit(
            method, path, identity, client_ip, cost=cost, content_length=content_length,
            files=files).settle()
        return d

    async def apeek(self, method: str, path: str, identity: Identity | None = None,
                    client_ip: str | None = None, *, cost: int = 1) -> PolicyDecision:
        """:meth:`peek` for asyncio code (see :meth:`ahit`)."""
        d: PolicyDecision = await self._plan.peek(method, path, identity, client_ip,
                                                  cost=cost).settle()
        return d

    def _awaited(self, method: str) -> str:
        return (f"policy {self.name!r} counts on an asyncio store ({self.store!r}): use "
                f"`await policy.a{method}(...)` or the ASGI middleware; for synchronous code "
                f"give it a RedisBackend")

    def peek(self, method: str, path: str, identity: Identity | None = None,
             client_ip: str | None = None, *, cost: int = 1) -> PolicyDecision:
        """What :meth:`hit` would answer now, counting nothing (and logging
        nothing).

        Example:
            >>> policy = Policy.from_dict({"identities": {"token": {"rate": "100/1h"}}})
            >>> policy.peek("GET", "/ocr", Identity.token("t")).decision.remaining
            100
        """
        if self.asynchronous:
            raise ConfigurationError(self._awaited("peek"))
        return self._plan.peek(method, path, identity, client_ip, cost=cost)

    def _report_shadow(self, decision: PolicyDecision, method: str, path: str) -> None:
        for i in decision.result.shadow_denied:
            check = decision.checks[i]
            self.shadow_denials[check.name] += 1
            d = decision.result.decisions[i]
            log.info(
                "fastlimit shadow: %s %s would be denied by %r (%s); %s; would send %s",
                method, path, check.name, decision.resolution.identity or "route",
                d if d is not None else "cost exceeds its burst",
                decision.render(i) if d is not None else [])


def _route_set(rules: tuple[RouteRule | Usage, ...]) -> RouteSet:
    return RouteSet(tuple(r for r in rules if isinstance(r, RouteRule)),
                    tuple(u for u in rules if isinstance(u, Usage)))
