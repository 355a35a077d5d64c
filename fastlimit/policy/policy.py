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
:mod:`fastlimit.composite`) and returns a :class:`PolicyDecision` carrying
the headers and, for a denial, the status and body to answer with.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from fastlimit._core import Decision
from fastlimit.http.headers import DenialResponse, most_restrictive, retry_after_seconds
from fastlimit.limiters.composite import CompositeResult, LimitCheck, hit_all, peek_all
from fastlimit.limiters.concurrency import ConcurrencyLimit, Lease
from fastlimit.limiters.limiter import Limiter
from fastlimit.limiters.quota import Quota, QuotaSpec, state_dir
from fastlimit.limiters.rate import Rate
from fastlimit.policy.config import load_dict, load_file
from fastlimit.policy.identity import Identity
from fastlimit.policy.overrides import Overrides, default_path
from fastlimit.policy.routes import RouteTable
from fastlimit.policy.spec import IdentitySpec, PolicySpec, RouteSpec, TierSpec, UsageSpec
from fastlimit.stores.table import SharedTable
from fastlimit.web._serve import DecisionFields

__all__ = ["Identity", "Policy", "PolicyDecision", "Resolution"]

log = logging.getLogger("fastlimit")

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


class _Limit:
    """One configured limit: its name, default rate, and a Limiter per rate
    it has been used at (overrides bring other rates)."""

    __slots__ = ("name", "rate", "shadow", "_bucket", "_store", "_clock", "_limiters")

    def __init__(self, name: str, bucket: str, rate: Rate | None, shadow: bool,
                 store: Any, clock: Callable[[], int] | None) -> None:
        self.name, self.rate, self.shadow = name, rate, shadow
        self._bucket, self._store, self._clock = bucket, store, clock
        self._limiters: dict[Rate, Limiter] = {}

    def check(self, key: str, rate: Rate) -> LimitCheck:
        lim = self._limiters.get(rate)
        if lim is None:
            # Same table name at every rate: a key's state (a time) carries
            # over when its rate changes, so an override applies at once.
            lim = self._limiters[rate] = Limiter(
                rate, self._store, name=self._bucket, clock=self._clock)
        return LimitCheck(self.name, lim, key, self.shadow)


class _RouteLimit:
    __slots__ = ("spec", "limit", "anonymous")

    def __init__(self, spec: RouteSpec, limit: _Limit, anonymous: _Limit | None) -> None:
        self.spec, self.limit, self.anonymous = spec, limit, anonymous


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
            (``[store] quotas`` is not used).
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
        if store is None:
            if spec.store.table is not None:
                store = SharedTable.open(spec.store.table, capacity=spec.store.capacity)
            else:
                store = SharedTable.anonymous(capacity=spec.store.capacity or 65_536)
            self._owned.append(store)
        self.store = store
        self.overrides = self._open_overrides(overrides, store)
        self._wall_clock = wall_clock or time.time_ns
        self.shadow_denials: Counter[str] = Counter()
        """Shadow denials seen by this process, by limit name."""

        def limit(name: str, rate: Rate | None, shadow: bool, suffix: str = "") -> _Limit:
            return _Limit(name, f"{spec.name}/{name}{suffix}", rate, shadow or spec.shadow,
                          store, clock)

        self._identities: dict[str, tuple[IdentitySpec, _Limit]] = {
            kind: (s, limit(s.name, s.rate if isinstance(s.rate, Rate) else None, s.shadow))
            for kind, s in spec.identities.items()}
        routes = [
            _RouteLimit(r, limit(r.name, r.rate, r.shadow),
                        None if r.anonymous_rate is None else
                        limit(r.name, r.anonymous_rate, r.shadow, "#anonymous"))
            for r in spec.routes]
        self._routes: RouteTable[_RouteLimit] = RouteTable(
            (p, r) for r in routes for p in r.spec.patterns)
        self._usage: RouteTable[UsageSpec] = RouteTable(
            (p, u) for u in spec.usage for p in u.patterns)
        # Per-request work that depends only on the request's path or on who
        # makes it (the spec never changes): remembered, in bounded dicts.
        self._matches: dict[tuple[str, str], tuple[tuple[_RouteLimit, ...],
                                                   tuple[UsageSpec, ...]]] = {}
        self._who: dict[Identity, tuple[str, str | None, Rate | None, str | None,
                                        TierSpec | None]] = {}
        # Whole resolutions too, while the overrides stay the same (a change
        # starts a new dict: a thread still filling the old one is harmless).
        self._resolved: dict[tuple[str, str, Identity, str | None], Resolution] = {}
        self._resolved_version = -1
        self._quotas: dict[tuple[str, QuotaSpec], Quota] = {}
        self._quota_table: SharedTable | None = None
        self._concurrency = {
            u.name: ConcurrencyLimit(None, store, name=f"{spec.name}/{u.name}",
                                     retry_after=float(u.retry_after), clock=clock)
            for u in spec.usage if u.kind == "concurrency"}

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

    def _open_overrides(self, given: Overrides | str | os.PathLike[str] | None,
                        store: Any) -> Overrides:
        if isinstance(given, Overrides):
            return given
        path = given if given is not None else self.spec.store.overrides
        if path is None and getattr(store, "path", None) is not None:
            path = default_path(store.path)
        overrides = Overrides(path)
        self._owned.append(overrides)
        return overrides

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def tiers(self) -> Mapping[str, TierSpec]:
        return self.spec.tiers

    def _quota(self, usage: UsageSpec, allowance: QuotaSpec) -> Quota:
        """The Quota counting ``usage.name`` at ``allowance`` (tiers differ
        in limit, not in counts: an upgrade keeps the month's usage)."""
        quota = self._quotas.get((usage.name, allowance))
        if quota is None:
            quota = self._quotas[(usage.name, allowance)] = Quota(
                allowance, store=self._quota_store(), name=f"{self.spec.name}/{usage.name}",
                tz=usage.tz, clock=self._wall_clock)
        return quota

    def _quota_store(self) -> Any:
        """Where quotas count: a store other than a SharedTable (a
        RedisBackend) counts them itself, across hosts; a rate table cannot
        (its slots hold times, not counts), so beside it the policy opens a
        quota file, kept across restarts."""
        if not isinstance(self.store, SharedTable):
            return self.store
        if self._quota_table is None:
            path = self.spec.store.quotas or os.path.join(
                state_dir(), f"{self.spec.name}-quotas.tbl")
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._quota_table = SharedTable.open(
                path=path, capacity=self.spec.store.capacity or 65_536, kind="quotas")
            self._owned.append(self._quota_table)
        return self._quota_table

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
        identity = identity or _ANONYMOUS
        overrides = self.overrides
        overrides.refresh()
        resolved = self._resolved
        if overrides.version != self._resolved_version:
            resolved = self._resolved = {}
            self._resolved_version = overrides.version
        key = (method, path, identity, client_ip)
        found = resolved.get(key)
        if found is None:
            found = self._resolve(method, path, identity, client_ip)
            _remember(resolved, key, found)
        return found

    def _resolve(self, method: str, path: str, identity: Identity,
                 client_ip: str | None) -> Resolution:
        routes, usages = self._match(method, path)
        who = self._who.get(identity)
        if who is None:
            who = self._identity(identity)
            _remember(self._who, identity, who)
        kind, subject, rate, rejected, tier = who
        checks: list[LimitCheck] = []
        applied: str | None = None
        entry = self._identities.get(kind)
        if entry is not None and not (routes and any(r.spec.dedicated for r in routes)):
            applied = kind
            limit = entry[1]
            key = subject if subject is not None else _need_ip(client_ip, limit.name)
            rate = self.overrides.rate_for(limit.name, key) or rate
            if rate is not None:
                checks.append(limit.check(key, rate))
        anonymous = kind == "anonymous"
        for r in routes:
            limit = r.anonymous if anonymous and r.anonymous is not None else r.limit
            if r.spec.per == "ip" or subject is None:
                key = _need_ip(client_ip, limit.name)
            else:
                key = subject
            rate = self.overrides.rate_for(limit.name, key) or limit.rate
            assert rate is not None  # route limits always have a rate
            checks.append(limit.check(key, rate))
        if tier is None or subject is None:
            return Resolution(tuple(checks), applied, rejected, tier)
        leases: list[tuple[str, ConcurrencyLimit, str, int]] = []
        caps: list[tuple[str, int]] = []
        for u in usages:
            if u.kind == "quota":
                allowance = tier.quotas.get(u.name)
                if allowance is not None:
                    checks.append(LimitCheck(u.name, self._quota(u, allowance), subject))
            elif u.kind == "concurrency":
                n = tier.concurrency.get(u.name)
                if n is not None:
                    leases.append((u.name, self._concurrency[u.name], subject, n))
            else:
                cap = tier.caps.get(u.name)
                if cap is not None:
                    caps.append((u.name, cap))
        return Resolution(tuple(checks), applied, rejected, tier, tuple(leases), tuple(caps))

    def _match(self, method: str, path: str) -> tuple[tuple[_RouteLimit, ...],
                                                      tuple[UsageSpec, ...]]:
        """The route limits and usages of ``method path``, remembered: most
        traffic goes to a few paths, and the answer never changes."""
        found = self._matches.get((method, path))
        if found is None:
            m = method.upper()
            found = (self._routes.match(m, path), self._usage.match(m, path))
            _remember(self._matches, (method, path), found)
        return found

    def _identity(self, identity: Identity
                  ) -> tuple[str, str | None, Rate | None, str | None, TierSpec | None]:
        """(kind, subject, rate, rejected, tier) for the identity limit; the
        subject is None for anonymous callers (they are keyed by IP)."""
        kind = identity.kind
        if kind in ("session", "token") and identity.subject:
            return kind, identity.subject, self._default_rate(kind), None, None
        rejected: str | None = None
        if kind == "api_key" and identity.subject:
            entry = self._identities.get("api_key")
            subject = identity.account or identity.subject
            if entry is None or entry[0].rate != "tier":
                return kind, subject, self._default_rate(kind), None, None
            tier = self.tier_of(identity)
            assert tier is not None
            if tier.api_access:
                return kind, subject, tier.rate, None, tier
            # The seed: API keys come with STARTER and above, and invalid
            # keys get the anonymous limit.  A FREE account's key is such.
            rejected = f"tier {tier.name} has no API access"
        return "anonymous", None, self._default_rate("anonymous"), rejected, None

    def _default_rate(self, kind: str) -> Rate | None:
        entry = self._identities.get(kind)
        return None if entry is None else entry[1].rate

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
        resolution = self.resolve(method, path, identity, client_ip)
        for name, cap in resolution.caps:
            size = content_length if name.endswith("_bytes") else files
            if size is not None and size > cap:
                return PolicyDecision(self, resolution, peek_all(resolution.checks, cost),
                                      self._wall_clock(), denial=("too_large", name))
        leases: list[Lease] = []
        for name, limit, key, n in resolution.leases:
            lease = limit.try_acquire(key, limit=n)
            if lease is None:
                for held in leases:
                    held.release()
                return PolicyDecision(self, resolution, peek_all(resolution.checks, cost),
                                      self._wall_clock(), denial=("concurrency", name))
            leases.append(lease)
        try:
            result = hit_all(resolution.checks, cost)
        except BaseException:
            for held in leases:
                held.release()
            raise
        if not result.allowed:
            for held in leases:
                held.release()
            leases = []
        decision = PolicyDecision(self, resolution, result, self._wall_clock(), leases=leases)
        if result.shadow_denied:
            self._report_shadow(decision, method, path)
        return decision

    def peek(self, method: str, path: str, identity: Identity | None = None,
             client_ip: str | None = None, *, cost: int = 1) -> PolicyDecision:
        """What :meth:`hit` would answer now, counting nothing (and logging
        nothing).

        Example:
            >>> policy = Policy.from_dict({"identities": {"token": {"rate": "100/1h"}}})
            >>> policy.peek("GET", "/ocr", Identity.token("t")).decision.remaining
            100
        """
        resolution = self.resolve(method, path, identity, client_ip)
        return PolicyDecision(self, resolution, peek_all(resolution.checks, cost),
                              self._wall_clock())

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


_ANONYMOUS = Identity.anonymous()
_REMEMBER = 4096  # entries per cache; a full cache starts over


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _REMEMBER:
        cache.clear()  # cheaper than LRU upkeep on every request
    cache[key] = value


def _need_ip(client_ip: str | None, limit: str) -> str:
    if not client_ip:
        raise ValueError(f"limit {limit!r} is counted per source IP: pass client_ip")
    return client_ip


class PolicyDecision(DecisionFields):
    """The answer to one request under a policy.

    Attributes:
        allowed: whether to serve the request (shadow limits never deny).
        resolution: the limits that applied (:class:`Resolution`).
        result: the composite outcome, one Decision per limit.
        kind: what denied: ``"rate"``, ``"quota"``, ``"concurrency"`` or
            ``"too_large"``; None when allowed.

    The headers describe the most restrictive enforced limit, once; a
    denial adds ``Retry-After`` and has a :attr:`status` and :attr:`body`.
    """

    # The fields live in the compiled base (fastlimit.web._serve.DecisionFields),
    # so that the middlewares' compiled check can fill them in directly.
    __slots__ = ()
    allowed: bool
    resolution: Resolution
    result: CompositeResult
    kind: str | None
    _denied_by: str | None
    _policy: Policy
    _wall_ns: int
    _headers: list[tuple[str, str]] | None
    _binding: int | None
    _leases: Sequence[Lease]

    def __init__(self, policy: Policy, resolution: Resolution, result: CompositeResult,
                 wall_ns: int, *, denial: tuple[str, str] | None = None,
                 leases: list[Lease] | None = None) -> None:
        self.allowed = result.allowed and denial is None
        self.resolution = resolution
        self.result = result
        self.kind = None  # what denied: "rate", "quota", "concurrency", "too_large"
        self._denied_by = None  # the limit or cap named in the body
        if denial is not None:
            self.kind, self._denied_by = denial
        elif not result.allowed:
            assert result.denied_by is not None
            check = resolution.checks[result.denied_by]
            self.kind = "quota" if isinstance(check.limiter, Quota) else "rate"
        self._policy = policy
        self._wall_ns = wall_ns
        self._headers = None
        self._binding = -1  # -1: not computed yet
        self._leases = leases or ()

    def __bool__(self) -> bool:
        return self.allowed

    @property
    def checks(self) -> tuple[LimitCheck, ...]:
        return self.resolution.checks

    @property
    def would_allow(self) -> bool:
        """Whether it would pass with shadow limits enforced too."""
        return self.allowed and not self.result.shadow_denied

    @property
    def rejected(self) -> str | None:
        """Why the credential was treated as invalid (see :class:`Resolution`)."""
        return self.resolution.rejected

    @property
    def binding(self) -> int | None:
        """Index of the most restrictive enforced limit, or None if none applied."""
        if self._binding == -1:
            decisions = self.result.decisions
            if len(decisions) == 1:  # the common case
                self._binding = 0 if decisions[0] is not None and not self.checks[0].shadow \
                    else None
                return self._binding
            checks, decisions = self.checks, self.result.decisions
            enforced: list[int] = []
            found: list[Decision] = []
            for i, d in enumerate(decisions):
                if d is not None and not checks[i].shadow:
                    enforced.append(i)
                    found.append(d)
            if not enforced:
                self._binding = None
            else:
                self._binding = enforced[0 if len(found) == 1 else most_restrictive(found)]
        return self._binding

    @property
    def limit(self) -> str | None:
        """Name of the limit the headers describe (on a denial: the one
        that makes the client wait longest)."""
        i = self.binding
        return None if i is None else self.checks[i].name

    @property
    def decision(self) -> Decision | None:
        """The Decision of :attr:`limit`."""
        i = self.binding
        return None if i is None else self.result.decisions[i]

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Rate-limit headers to send, each once; empty when no enforced
        limit applied (e.g. an unlimited tier) and on a 413."""
        headers = self._headers
        if headers is None:
            kind = self.kind
            if kind is None and len(self.result.decisions) == 1:
                # allowed by a single limit: every response of most APIs
                check = self.resolution.checks[0]
                d = self.result.decisions[0]
                headers = [] if check.shadow or d is None else self._policy.spec.headers.render(
                    d, name=check.name, rate=check.limiter.window(), wall_now_ns=self._wall_ns)
            elif kind == "too_large":
                headers = []
            else:
                i = self.binding
                headers = [] if i is None else self.render(i)
                if kind == "concurrency":
                    headers.append(("Retry-After", str(self.retry_after)))
            self._headers = headers
        return headers

    def render(self, index: int) -> list[tuple[str, str]]:
        """The headers limit ``index`` alone would produce."""
        d = self.result.decisions[index]
        check = self.resolution.checks[index]
        if d is None:
            raise ValueError(f"limit {check.name!r} has no decision")
        return self._policy.spec.headers.render(
            d, name=check.name, rate=check.limiter.window(), wall_now_ns=self._wall_ns)

    @property
    def retry_after(self) -> int | None:
        """Seconds to wait (the Retry-After value) when denied, else None
        (and None on a 413: waiting does not help)."""
        if self.allowed or self.kind == "too_large":
            return None
        if self.kind == "concurrency":
            assert self._denied_by is not None
            return max(1, math.ceil(self._policy._concurrency[self._denied_by].retry_after))
        i = self.binding
        if i is None:
            return None
        d = self.result.decisions[i]
        assert d is not None
        return retry_after_seconds(d, self.checks[i].limiter.window())

    @property
    def status(self) -> int | None:
        """The status to answer a denial with (429, or 413 for a cap,
        unless configured)."""
        return None if self.kind is None else self._response().status

    @property
    def content_type(self) -> str:
        return self._response().content_type

    @property
    def body(self) -> bytes | None:
        """The denial's body (JSON by default), or None when allowed."""
        if self.kind is None:
            return None
        name = self._denied_by or self.limit or ""
        return self._response().render(retry_after=self.retry_after or 0, limit=name)

    def _response(self) -> DenialResponse:
        return self._policy.spec.responses[self.kind or "rate"]

    @property
    def holding(self) -> bool:
        """Whether :meth:`release` has something to give back."""
        return bool(self._leases)

    def release(self) -> None:
        """End the request: give back what it holds while in flight (its
        concurrency leases).  Call it once the response is sent; calling it
        again, or on a denial, does nothing."""
        leases, self._leases = self._leases, ()
        for lease in leases:
            lease.release()

    def __repr__(self) -> str:
        by = self._denied_by or self.limit
        state = "allowed" if self.allowed else f"denied ({self.kind}) by {by!r}"
        return f"<PolicyDecision {state} limits={[c.name for c in self.checks]}>"
