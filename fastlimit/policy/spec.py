"""What a policy says, as plain immutable data: tiers, identities, routes.

:mod:`fastlimit.config` builds these from TOML or dicts and checks them;
:class:`fastlimit.Policy` enforces them.  Monthly quotas, concurrency limits
and size caps are kept here with every tier so that enforcing them (with
``fastlimit.Quota`` and ``fastlimit.ConcurrencyLimit``) needs no change to
the model; the rate limits are what a Policy enforces today.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from fastlimit.http.headers import DenialResponse, HeaderStyle, default_responses
from fastlimit.limiters.quota import QuotaSpec
from fastlimit.limiters.rate import Rate

__all__ = [
    "DEFAULT_IPV6_PREFIX",
    "DEFAULT_QUOTA_CAPACITY",
    "IDENTITY_KINDS",
    "IdentityKind",
    "IdentitySpec",
    "PolicySpec",
    "RouteSpec",
    "StoreSpec",
    "TierSpec",
    "UsageSpec",
]

# Per-IP limits count an IPv6 client under its /64: the block one host (a
# home line, a VM) is given, whose 2**64 addresses are its to choose from.
DEFAULT_IPV6_PREFIX = 64

# What a limit answers on Redis while Redis cannot (RedisBackend's fail=):
# the host's local table, allowed, or denied.  ("raise" is not a policy's:
# a request would get a 500.)
FailPolicy = Literal["local", "open", "closed"]
FAILS: tuple[FailPolicy, ...] = ("local", "open", "closed")

# (account, quota) pairs a policy's quota file holds per period, by default:
# its own size, not the rate table's (6 MB at 23 bytes a pair).
DEFAULT_QUOTA_CAPACITY = 262_144

IdentityKind = Literal["api_key", "session", "token", "anonymous"]
IDENTITY_KINDS: tuple[IdentityKind, ...] = ("api_key", "session", "token", "anonymous")


@dataclass(frozen=True, slots=True)
class TierSpec:
    """A subscription tier (or one customer's contract on a tier).

    Attributes:
        name: the tier's name, e.g. ``"STARTER"``.
        rate: the API rate for keys on this tier; None means unlimited.
        api_access: whether API keys of this tier are accepted at all (the
            seed's FREE tier has none: its keys count as invalid).
        quotas: allowances per calendar period by name (None:
            unlimited), e.g. ``{"ai_descriptions": QuotaSpec(500, "month")}``.
        concurrency: in-flight limits by name (None: unlimited), e.g.
            ``{"uploads": 20}``.
        caps: size and count caps by name (None: unlimited); names ending
            in ``_bytes`` are byte sizes, e.g. ``{"batch_files": 50,
            "batch_payload_bytes": 2_000_000_000}``.
    """

    name: str
    rate: Rate | None
    api_access: bool = True
    quotas: Mapping[str, QuotaSpec | None] = field(default_factory=dict)
    concurrency: Mapping[str, int | None] = field(default_factory=dict)
    caps: Mapping[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IdentitySpec:
    """The limit for one kind of caller.

    ``rate`` is a Rate, None (unlimited) or, for ``api_key``, ``"tier"``:
    each key gets its tier's rate.  ``name`` names the limit in headers,
    in the table and in overrides.  Where it counts per source IP (the
    anonymous callers), an IPv6 client counts under its ``/ipv6_prefix``
    network.
    """

    kind: IdentityKind
    name: str
    rate: Rate | Literal["tier"] | None
    shadow: bool = False
    ipv6_prefix: int = DEFAULT_IPV6_PREFIX
    fail: FailPolicy | None = None


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """A limit on some routes, counted per source IP (or per identity).

    Attributes:
        name: the limit's name (headers, table, overrides).
        patterns: ``"METHOD /path"`` patterns (see :mod:`fastlimit.routes`);
            all of them share one bucket per key.
        rate: the rate for authenticated callers (and for everyone when
            ``anonymous_rate`` is None).
        anonymous_rate: the rate for callers with no or an invalid
            credential, counted in a bucket of its own.
        per: ``"ip"`` or ``"identity"`` (anonymous callers: their IP).
        dedicated: these routes do not consume the caller's identity limit
            (the tier budget); this bucket replaces it.
        shadow: compute and log, never deny.
        ipv6_prefix: an IPv6 client counts per IP as its network of this
            many bits (128: each address).
        fail: on Redis, what its checks answer while Redis cannot
            (``"local"``, ``"open"``, ``"closed"``; None: the backend's).
    """

    name: str
    patterns: tuple[str, ...]
    rate: Rate
    anonymous_rate: Rate | None = None
    per: Literal["ip", "identity"] = "ip"
    dedicated: bool = False
    shadow: bool = False
    ipv6_prefix: int = DEFAULT_IPV6_PREFIX
    fail: FailPolicy | None = None


UsageKind = Literal["quota", "concurrency", "cap"]


@dataclass(frozen=True, slots=True)
class UsageSpec:
    """Where one of the tiers' allowances applies: requests on these routes
    spend the tier's quota ``name``, hold one of its concurrency leases
    ``name`` while in flight, or are checked against its cap ``name``.

    Attributes:
        kind: ``"quota"``, ``"concurrency"`` or ``"cap"``.
        name: the allowance's name in the tiers (``quotas``, ``concurrency``
            or ``caps``).
        patterns: ``"METHOD /path"`` patterns (see :mod:`fastlimit.routes`).
        tz: quotas: the time zone of the calendar periods.
        retry_after: concurrency: the ``Retry-After`` (seconds) when full.
        fail: quotas and concurrency on Redis: what they answer while Redis
            cannot (None: the backend's).
    """

    kind: UsageKind
    name: str
    patterns: tuple[str, ...]
    tz: str = "UTC"
    retry_after: int = 1
    fail: FailPolicy | None = None


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """Where state lives: a named shared table (None: an anonymous one,
    shared only with forked children), the overrides file (None: kept in
    the process) and the quota file (None: beside its table, ``stores.table.quotas_path``)."""

    table: str | None = None
    capacity: int | None = None
    overrides: str | None = None
    quotas: str | None = None
    quota_capacity: int | None = None  # None: DEFAULT_QUOTA_CAPACITY
    anonymous_capacity: int | None = None  # per-IP keys' own table; None: as capacity
    anonymous_on_full: Literal["deny", "evict"] = "deny"  # when that table is full


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """A whole policy, as loaded from a config file."""

    name: str
    identities: Mapping[str, IdentitySpec]
    tiers: Mapping[str, TierSpec] = field(default_factory=dict)
    customers: Mapping[str, TierSpec] = field(default_factory=dict)
    routes: tuple[RouteSpec, ...] = ()
    headers: HeaderStyle = field(default_factory=HeaderStyle)
    responses: Mapping[str, DenialResponse] = field(default_factory=default_responses)
    usage: tuple[UsageSpec, ...] = ()
    store: StoreSpec = field(default_factory=StoreSpec)
    shadow: bool = False
    source: str = "<dict>"
    ipv6_prefix: int = DEFAULT_IPV6_PREFIX
