"""Reading a policy from TOML (or an equivalent dict) into a PolicySpec.

Every value is checked where it is read, and every error names the file,
the key path and what was expected, e.g.::

    seed000.toml: tiers.STARTER.requests_per_minute: expected a positive
    integer or "unlimited", got 'thirty'

The schema (``examples/seed000.toml`` and ``examples/seed002.toml`` use all of it)::

    [policy]      name = "api"; shadow = false; ipv6_prefix = 64 (per-IP limits
                  count an IPv6 client under its /64; 128: each address)
    [store]       table = "myapp"; capacity = 100000; overrides = "overrides.json";
                  quotas = "state/quotas.tbl"; quota_capacity = 262144 ((account,
                  quota) pairs one period can hold: accounts x quotas);
                  anonymous_capacity = 100000 (per-IP keys count in a table of their
                  own, <table>.anonymous, this big; default: capacity);
                  anonymous_on_full = "deny" | "evict" (when it is full: refuse a
                  new address, or forget the per-IP key due soonest) (all but
                  overrides unused when the Policy is given a RedisBackend)
    [headers]     reset = "epoch" | "iso" | "delta"; legacy = true; ietf = false
    [response]    status = 429; content_type = "application/json"; body = {...}
    [identities.api_key]    rate = "tier" | "<rate>" | "unlimited"; name = "api"; shadow;
                            fail = "local" | "open" | "closed" (on Redis: what the limit
                            answers while Redis cannot; default: the backend's; also on
                            every identity, route, [quotas.NAME] and [concurrency.NAME])
    [identities.session]    rate = "300/1m"; name; shadow
    [identities.token]      rate = "100/1h"; name; shadow
    [identities.anonymous]  rate = "5/1m"; name; shadow; ipv6_prefix  (per source IP; also
                            invalid credentials; must be stricter than every tier)
    [tier_defaults]         any tier field, inherited by every tier
    [tiers.NAME]  api_access = true; requests_per_minute = 30 (or rate = "30/1m");
                  quotas = {ai_descriptions = "500/month"}; concurrency = {uploads = 20};
                  caps = {batch_files = 50, batch_payload_bytes = "2GB"}
    [customers.ACCOUNT]     tier = "CUSTOM"; then any tier field, overriding the tier's
    [routes]      "POST /auth/session/login" = "5/1m"
    [routes.NAME] match = [patterns]; rate (or several, all enforced: "10/1s;1000/1d");
                  anonymous_rate; per = "ip" | "identity";
                  dedicated = false; shadow = false; ipv6_prefix = 64
    [quotas.NAME]       match = [patterns]; tz = "UTC"   (requests there spend the
                        tier's quotas.NAME; cost as for the rate limits)
    [concurrency.NAME]  match = [patterns]; retry_after = 1  (requests there hold one
                        of the tier's concurrency.NAME leases while in flight)
    [caps]              NAME = [patterns]   (requests there are checked against the
                        tier's caps.NAME: byte caps against the body size, others
                        against the number of files; over it: 413)
    [response.quota], [response.concurrency], [response.too_large], [response.full]:
                        status, body, content_type of those denials (defaults: 429
                        QUOTA_EXCEEDED, 429 CONCURRENCY_LIMITED, 413 PAYLOAD_TOO_LARGE,
                        503 LIMITER_FULL: a quota's state had no room for the caller)

A rate is written as :meth:`fastlimit.Rate.parse` reads it (``"5/1m"``,
``"100/1h"``, ``"30s"`` windows...).  Byte sizes are ``"100MB"`` (10^6) or
``"100MiB"`` (2^20).  Relative paths are relative to the config file.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Collection, Mapping
from typing import Any, NoReturn, TypeVar

from fastlimit.errors import ConfigurationError
from fastlimit.http.headers import (
    RESET_FORMATS,
    DenialResponse,
    HeaderStyle,
    ResetFormat,
    default_responses,
    sf_string,
)
from fastlimit.limiters.concurrency import MAX_LIMIT as MAX_CONCURRENCY
from fastlimit.limiters.quota import Calendar, QuotaSpec
from fastlimit.limiters.rate import Rate
from fastlimit.policy.routes import parse_pattern
from fastlimit.policy.spec import (
    DEFAULT_IPV6_PREFIX,
    FAILS,
    IDENTITY_KINDS,
    FailPolicy,
    IdentitySpec,
    PolicySpec,
    RouteSpec,
    StoreSpec,
    TierSpec,
    UsageSpec,
)
from fastlimit.stores.table import MAX_CAPACITY, table_path

if sys.version_info >= (3, 11):
    import tomllib as tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["load_dict", "load_file"]

T = TypeVar("T")
_MISSING: Any = object()
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
# At most 30 digits: a longer number is no byte size, and float() would make
# it infinity, which round() refuses with an OverflowError.
_SIZE_RE = re.compile(r"^\s*(\d{1,30}(?:\.\d{1,30})?)\s*([KMGT]?i?B)\s*$", re.ASCII)
_SIZE_UNITS = {
    "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}
_RATE_HELP = "a rate like '5/1m', '100/1h' or '1000/1d'"
_DEFAULT_NAMES = {"api_key": "api", "session": "session", "token": "token",
                  "anonymous": "anonymous"}
_MAX_RETRY_AFTER = 86_400  # a concurrency denial's Retry-After: a day at most
_TIER_KEYS = ("api_access", "requests_per_minute", "rate", "quotas", "concurrency", "caps")


class _At:
    """A key path in one config source, for error messages."""

    __slots__ = ("source", "path")

    def __init__(self, source: str, path: tuple[str | int, ...] = ()) -> None:
        self.source = source
        self.path = path

    def __truediv__(self, key: str | int) -> _At:
        return _At(self.source, (*self.path, key))

    def __str__(self) -> str:
        out = ""
        for key in self.path:
            if isinstance(key, int):
                out += f"[{key}]"
            else:
                part = key if _BARE_KEY.match(key) else '"' + key.replace('"', '\\"') + '"'
                out += ("." if out else "") + part
        return out or "(top level)"

    def fail(self, expected: str, value: Any = _MISSING) -> NoReturn:
        got = "the key is missing" if value is _MISSING else f"got {_shown(value)}"
        raise ConfigurationError(f"{self.source}: {self}: expected {expected}, {got}")


def _shown(value: Any) -> str:
    """``repr(value)``, cut short: an error quotes a value, not a megabyte."""
    text = repr(value)
    return text if len(text) <= 200 else f"{text[:100]}... ({len(text)} characters)"


def _why(error: Exception, value: Any) -> str:
    """A check's message for ``fail()``, less the value it got (said once)."""
    return str(error).removesuffix(f", got {value!r}")


def load_file(path: str | os.PathLike[str]) -> PolicySpec:
    """Read and check the TOML policy at ``path``.

    Raises:
        ConfigurationError: the file cannot be read, is not TOML, or breaks
            the schema (naming the file, the key path and what was expected).

    Example:
        >>> spec = load_file("examples/seed000.toml")      # doctest: +SKIP
        >>> spec.tiers["STARTER"].rate                     # doctest: +SKIP
        Rate(limit=30, period_ns=60000000000)
    """
    source = os.fspath(path)
    text = ""
    try:
        with open(source, "rb") as f:
            text = f.read().decode()
        data = tomllib.loads(text)
    except OSError as e:
        raise ConfigurationError(f"{source}: cannot read the policy: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigurationError(f"{source}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigurationError(
            f"{source}: not valid TOML: TOML files are UTF-8, but byte {e.start} is "
            f"{e.object[e.start:e.start + 1]!r}") from None
    except RecursionError:
        raise ConfigurationError(
            f"{source}: not valid TOML: arrays or tables nested too deeply") from None
    except ValueError:  # an integer of more digits than Python reads (4300)
        data = None
    base = os.path.dirname(os.path.abspath(source))
    default_name = os.path.splitext(os.path.basename(source))[0]
    if data is None:
        _number_too_long(text, _At(source), base, default_name)
    return _policy(data, _At(source), base, default_name)


# A TOML decimal integer (not part of a float, a date or a bare key's word)
_INTEGER_RE = re.compile(r"(?<![\w.+-])[+-]?[0-9](?:_?[0-9])*(?![\w.:])", re.ASCII)
_TOO_LONG_RE = re.compile(r"<a number of ([0-9]+) digits>")


def _number_too_long(text: str, at: _At, base: str, default_name: str) -> NoReturn:
    """Fail naming the key of an integer too long for Python to read.

    tomllib gives no position for it, so the file is read again with each
    such number as a string saying how long it was: the schema then names
    its key and what the key accepts."""
    most = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 4300

    def mark(m: re.Match[str]) -> str:
        digits = sum(c.isdigit() for c in m.group())
        return f'"<a number of {digits} digits>"' if most and digits > most else m.group()

    found: list[tuple[_At, str]] = []

    def walk(value: Any, here: _At) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, here / k)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, here / i)
        elif isinstance(value, str) and _TOO_LONG_RE.fullmatch(value):
            found.append((here, value))

    try:
        data = tomllib.loads(_INTEGER_RE.sub(mark, text))
        walk(data, at)
    except (ValueError, RecursionError):
        pass
    if not found:
        raise ConfigurationError(
            f"{at.source}: a number is too long to read; expected numbers of at most 19 "
            f"digits") from None
    where, marked = found[0]
    try:
        _policy(data, at, base, default_name)
    except ConfigurationError as e:
        if str(e).startswith(f"{at.source}: {where}: "):
            raise e from None  # what that key accepts, from the schema
    raise ConfigurationError(f"{at.source}: {where}: expected a number of at most 19 digits, "
                             f"got {marked[1:-1]}") from None


def load_dict(
    data: Mapping[str, Any], *, source: str = "<dict>", base_dir: str | None = None
) -> PolicySpec:
    """Check a policy given as a dict shaped like the TOML file.

    Example:
        >>> spec = load_dict({"identities": {"token": {"rate": "100/1h"}}})
        >>> spec.identities["token"].rate
        Rate(limit=100, period_ns=3600000000000)
    """
    return _policy(data, _At(source), base_dir or os.getcwd(), "policy")


# -- the schema --------------------------------------------------------------


def _policy(data: Any, at: _At, base: str, default_name: str) -> PolicySpec:
    top = _table(data, at, ("policy", "store", "headers", "response", "identities",
                            "tier_defaults", "tiers", "customers", "routes", "quotas",
                            "concurrency", "caps"))
    meta = _table(top.get("policy", {}), at / "policy", ("name", "shadow", "ipv6_prefix"))
    name = _name(meta.get("name", default_name), at / "policy" / "name")
    prefix = _ipv6_prefix(meta.get("ipv6_prefix", DEFAULT_IPV6_PREFIX),
                          at / "policy" / "ipv6_prefix")
    tiers = _tiers(top, at)
    identities = _identities(top.get("identities", _MISSING), at / "identities", tiers, prefix)
    routes = _routes(top.get("routes", {}), at / "routes", prefix)
    _unique_names(identities, routes, at)
    spec = PolicySpec(
        name=name,
        identities=identities,
        tiers=tiers,
        customers=_customers(top, at, tiers),
        routes=routes,
        usage=_usage(top, at, tiers),
        headers=_headers(top.get("headers", {}), at / "headers"),
        responses=_responses(top.get("response", {}), at / "response"),
        store=_store(top.get("store", {}), at / "store", base),
        shadow=_bool(meta.get("shadow", False), at / "policy" / "shadow"),
        source=at.source,
        ipv6_prefix=prefix,
    )
    return spec


def _identities(value: Any, at: _At, tiers: Mapping[str, TierSpec],
                prefix: int = DEFAULT_IPV6_PREFIX) -> dict[str, IdentitySpec]:
    if value is _MISSING:
        at.fail(f"a table with at least one of {', '.join(IDENTITY_KINDS)}")
    table = _table(value, at, IDENTITY_KINDS)
    if not table:
        at.fail(f"at least one of {', '.join(IDENTITY_KINDS)}", value)
    out: dict[str, IdentitySpec] = {}
    for kind in IDENTITY_KINDS:
        if kind not in table:
            continue
        here = at / kind
        fields = _table(table[kind], here, ("rate", "name", "shadow", "ipv6_prefix", "fail"))
        rate: Rate | str | None
        if kind == "api_key" and fields.get("rate", "tier") == "tier":
            if not tiers:
                (here / "rate").fail("a rate (there are no [tiers] for 'tier' to use)", "tier")
            rate = "tier"
        else:
            rate = _rate(fields.get("rate", _MISSING), here / "rate", unlimited=True)
        out[kind] = IdentitySpec(
            kind=kind,
            name=_name(fields.get("name", _DEFAULT_NAMES[kind]), here / "name"),
            rate=rate,  # type: ignore[arg-type]
            shadow=_bool(fields.get("shadow", False), here / "shadow"),
            ipv6_prefix=_ipv6_prefix(fields.get("ipv6_prefix", prefix), here / "ipv6_prefix"),
            fail=_fail(fields, here),
        )
    anonymous = out.get("anonymous")
    if anonymous is not None and isinstance(anonymous.rate, Rate):
        _check_stricter(anonymous.rate, at / "anonymous" / "rate", out, tiers)
    return out


def _check_stricter(anon: Rate, at: _At, identities: Mapping[str, IdentitySpec],
                    tiers: Mapping[str, TierSpec]) -> None:
    """The seeds' rule: unauthenticated callers get less than any tier."""
    others: list[tuple[str, Rate]] = [(f"tiers.{t.name}", t.rate) for t in tiers.values()
                                      if t.rate is not None]
    others += [(f"identities.{s.kind}.rate", s.rate) for s in identities.values()
               if s.kind != "anonymous" and isinstance(s.rate, Rate)]
    for where, rate in others:
        # per-second rates compared exactly: a/pa < b/pb  <=>  a*pb < b*pa
        if anon.limit * rate.period_ns >= rate.limit * anon.period_ns:
            at.fail(f"a rate stricter than every authenticated one, but {where} is {rate}",
                    str(anon))


def _tiers(top: Mapping[str, Any], at: _At) -> dict[str, TierSpec]:
    defaults = _tier_fields(top.get("tier_defaults", {}), at / "tier_defaults")
    table = _table(top.get("tiers", {}), at / "tiers", None)
    out: dict[str, TierSpec] = {}
    for name, value in table.items():
        here = at / "tiers" / name
        _name(name, here)
        fields = _merge(defaults, _tier_fields(value, here))
        if "rate" not in fields:
            (here / "requests_per_minute").fail(
                'a positive integer or "unlimited" (or rate = "<rate>")')
        out[name] = TierSpec(name=name, **fields)
    return out


def _customers(top: Mapping[str, Any], at: _At,
               tiers: Mapping[str, TierSpec]) -> dict[str, TierSpec]:
    table = _table(top.get("customers", {}), at / "customers", None)
    out: dict[str, TierSpec] = {}
    for account, value in table.items():
        here = at / "customers" / account
        fields = _table(value, here, ("tier", *_TIER_KEYS))
        tier_name = fields.pop("tier", _MISSING)
        if tier_name not in tiers:
            (here / "tier").fail(f"one of the tiers ({', '.join(tiers) or 'none defined'})",
                                 tier_name)
        base = tiers[tier_name]
        merged = _merge(
            {"rate": base.rate, "api_access": base.api_access, "quotas": dict(base.quotas),
             "concurrency": dict(base.concurrency), "caps": dict(base.caps)},
            _tier_fields(fields, here))
        out[account] = TierSpec(name=base.name, **merged)
    return out


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def _tier_fields(value: Any, at: _At) -> dict[str, Any]:
    """The tier fields present at ``at``, parsed; absent ones are left out."""
    table = _table(value, at, _TIER_KEYS)
    out: dict[str, Any] = {}
    if "api_access" in table:
        out["api_access"] = _bool(table["api_access"], at / "api_access")
    if "requests_per_minute" in table and "rate" in table:
        (at / "rate").fail("either requests_per_minute or rate, not both", table["rate"])
    if "requests_per_minute" in table:
        here = at / "requests_per_minute"
        n = _int_or_unlimited(table["requests_per_minute"], here)
        try:
            out["rate"] = None if n is None else Rate(n, 60 * 10**9)
        except ConfigurationError as e:
            here.fail(f'a positive integer or "unlimited" ({_why(e, n)})', n)
    if "rate" in table:
        out["rate"] = _rate(table["rate"], at / "rate", unlimited=True)
    if "quotas" in table:
        out["quotas"] = {k: _quota(v, at / "quotas" / k)
                         for k, v in _table(table["quotas"], at / "quotas", None).items()}
    if "concurrency" in table:
        out["concurrency"] = {
            k: _concurrency(v, at / "concurrency" / k)
            for k, v in _table(table["concurrency"], at / "concurrency", None).items()}
    if "caps" in table:
        out["caps"] = {
            k: (_size if k.endswith("_bytes") else _int_or_unlimited)(v, at / "caps" / k)
            for k, v in _table(table["caps"], at / "caps", None).items()}
    return out


def _routes(value: Any, at: _At, prefix: int = DEFAULT_IPV6_PREFIX) -> tuple[RouteSpec, ...]:
    out: list[RouteSpec] = []
    for name, entry in _table(value, at, None).items():
        here = at / name
        _name(name, here)
        short = isinstance(entry, str)  # "METHOD /path" = "<rate>"
        fields = _table({"rate": entry} if short else entry, here,
                        ("match", "rate", "anonymous_rate", "per", "dedicated", "shadow",
                         "ipv6_prefix", "fail"))
        patterns = _patterns(fields.get("match", name),
                             here / "match" if "match" in fields else here)
        anonymous_rate = fields.get("anonymous_rate")
        rates = _rates(fields.get("rate", _MISSING), here if short else here / "rate")
        for i, rate in enumerate(rates):
            # a limit of several rates is one route per rate, all of which
            # must pass; each later window's bucket is named by its window, so
            # changing one rate keeps the others' state
            out.append(RouteSpec(
                name=name if i == 0 else f"{name}~{str(rate).split('/', 1)[1]}",
                patterns=patterns,
                rate=rate,
                anonymous_rate=None if anonymous_rate is None or i > 0 else _limited_rate(
                    anonymous_rate, here / "anonymous_rate"),
                per=_choice(fields.get("per", "ip"), here / "per", ("ip", "identity")),
                dedicated=_bool(fields.get("dedicated", False), here / "dedicated"),
                shadow=_bool(fields.get("shadow", False), here / "shadow"),
                ipv6_prefix=_ipv6_prefix(fields.get("ipv6_prefix", prefix), here / "ipv6_prefix"),
                fail=_fail(fields, here),
            ))
    return tuple(out)


def _fail(fields: Mapping[str, Any], at: _At) -> FailPolicy | None:
    """A limit's ``fail`` (what it answers on Redis while Redis cannot), or None."""
    if "fail" not in fields:
        return None
    fail: FailPolicy = _choice(fields["fail"], at / "fail", FAILS)
    return fail


def _patterns(match: Any, at: _At) -> tuple[str, ...]:
    """One ``"METHOD /path"`` pattern or a non-empty list of them, checked."""
    patterns = [match] if isinstance(match, str) else match
    if not isinstance(patterns, list) or not patterns:
        at.fail("a pattern like 'POST /auth/session/login' or a list of them", match)
    for i, p in enumerate(patterns):
        try:
            parse_pattern(p)
        except ConfigurationError as e:
            why = _why(e, p)
            (at / i if isinstance(match, list) else at).fail(
                why.removeprefix("expected ") if why.startswith("expected ")
                else f"a valid pattern ({why})", p)
    return tuple(patterns)


def _unique_names(identities: Mapping[str, IdentitySpec], routes: tuple[RouteSpec, ...],
                  at: _At) -> None:
    seen: dict[str, _At] = {}
    places = [(s.name, at / "identities" / s.kind / "name") for s in identities.values()]
    places += [(r.name, at / "routes" / r.name) for r in routes]
    for name, where in places:
        if name in seen:
            where.fail(f"a limit name not already used by {seen[name]}", name)
        seen[name] = where


def _headers(value: Any, at: _At) -> HeaderStyle:
    table = _table(value, at, ("reset", "legacy", "ietf"))
    reset: ResetFormat = _choice(table.get("reset", "epoch"), at / "reset", RESET_FORMATS)
    return HeaderStyle(
        reset=reset,
        legacy=_bool(table.get("legacy", True), at / "legacy"),
        ietf=_bool(table.get("ietf", False), at / "ietf"),
    )


_DENIAL_KINDS = ("quota", "concurrency", "too_large", "full")


def _responses(value: Any, at: _At) -> dict[str, DenialResponse]:
    """``[response]`` answers rate limiting; its sub-tables the other denials."""
    table = _table(value, at, ("status", "body", "content_type", *_DENIAL_KINDS))
    defaults = default_responses()
    out = {"rate": _response({k: v for k, v in table.items() if k not in _DENIAL_KINDS},
                             at, defaults["rate"])}
    for kind in _DENIAL_KINDS:
        out[kind] = _response(table.get(kind, {}), at / kind, defaults[kind])
    return out


def _response(value: Any, at: _At, default: DenialResponse) -> DenialResponse:
    table = _table(value, at, ("status", "body", "content_type"))
    status = table.get("status", default.status)
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        (at / "status").fail("an HTTP status from 400 to 599", status)
    content_type = _str(table.get("content_type", default.content_type), at / "content_type")
    body = _table(table["body"], at / "body", None) if "body" in table else default.body
    try:
        return DenialResponse(status=status, body=body, content_type=content_type)
    except ConfigurationError as e:
        (at / "body").fail(str(e).removeprefix("body must be "), body)


def _usage(
    top: Mapping[str, Any], at: _At, tiers: Mapping[str, TierSpec]
) -> tuple[UsageSpec, ...]:
    out: list[UsageSpec] = []
    sections = (("quota", "quotas", ("match", "tz", "fail")),
                ("concurrency", "concurrency", ("match", "retry_after", "fail")),
                ("cap", "caps", ("match",)))
    for kind, section, keys in sections:
        for name, entry in _table(top.get(section, {}), at / section, None).items():
            here = at / section / name
            short = isinstance(entry, (str, list))  # NAME = [patterns]
            fields = _table({"match": entry} if short else entry, here, keys)
            defined = sorted({n for t in tiers.values() for n in getattr(t, section)})
            if name not in defined:
                here.fail(f"the name of an allowance some tier's {section} defines "
                          f"({', '.join(defined) or 'none defined'})", name)
            tz = _str(fields.get("tz", "UTC"), here / "tz")
            if kind == "quota":
                try:
                    Calendar("month", tz)
                except ConfigurationError:
                    (here / "tz").fail("an IANA time zone like 'Europe/Paris', or 'UTC'", tz)
            out.append(UsageSpec(
                kind=kind,  # type: ignore[arg-type]
                name=name,
                patterns=_patterns(fields.get("match", _MISSING),
                                   here if short else here / "match"),
                tz=tz,
                retry_after=_retry_after(fields.get("retry_after", 1), here / "retry_after"),
                fail=_fail(fields, here),
            ))
    return tuple(out)


def _store(value: Any, at: _At, base: str) -> StoreSpec:
    table = _table(value, at, ("table", "capacity", "overrides", "quotas", "quota_capacity",
                               "anonymous_capacity", "anonymous_on_full"))
    name = table.get("table")
    capacity = table.get("capacity")
    quota_capacity = table.get("quota_capacity")
    anonymous_capacity = table.get("anonymous_capacity")
    overrides = table.get("overrides")
    quotas = table.get("quotas")
    return StoreSpec(
        table=None if name is None else _table_name(name, at / "table"),
        capacity=None if capacity is None else _capacity(capacity, at / "capacity"),
        overrides=None if overrides is None else os.path.join(
            base, _str(overrides, at / "overrides")),
        quotas=None if quotas is None else os.path.join(base, _str(quotas, at / "quotas")),
        quota_capacity=None if quota_capacity is None else _capacity(
            quota_capacity, at / "quota_capacity"),
        anonymous_capacity=None if anonymous_capacity is None else _capacity(
            anonymous_capacity, at / "anonymous_capacity"),
        anonymous_on_full=_choice(table.get("anonymous_on_full", "deny"),
                                  at / "anonymous_on_full", ("deny", "evict")),
    )


# -- values --------------------------------------------------------------------


def _table(value: Any, at: _At, allowed: Collection[str] | None) -> dict[str, Any]:
    if value is _MISSING:
        at.fail("a table")
    if not isinstance(value, Mapping):
        at.fail("a table", value)
    if allowed is not None:
        for key in value:
            if key not in allowed:
                raise ConfigurationError(
                    f"{at.source}: {at / key}: unknown key; expected one of: "
                    f"{', '.join(allowed)}")
    return dict(value)


def _str(value: Any, at: _At) -> str:
    if not isinstance(value, str) or not value:
        at.fail("a non-empty string", value)
    return value


def _table_name(value: Any, at: _At) -> str:
    name = _str(value, at)
    try:
        table_path(name, None)  # the check SharedTable.open makes, at load time
    except ConfigurationError as e:
        raise ConfigurationError(f"{at.source}: {at}: {e}") from None
    return name


def _name(value: Any, at: _At) -> str:
    _str(value, at)
    try:
        sf_string(value)
    except ConfigurationError:
        at.fail("a name of printable ASCII characters", value)
    return str(value)


def _bool(value: Any, at: _At) -> bool:
    if not isinstance(value, bool):
        at.fail("true or false", value)
    return value


def _pos_int(value: Any, at: _At) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        at.fail("a positive integer", value)
    return value


def _ipv6_prefix(value: Any, at: _At) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 128:
        at.fail("an IPv6 prefix length from 1 to 128 (64: a host's /64; 128: each address)",
                value)
    return value


def _capacity(value: Any, at: _At) -> int:
    if _pos_int(value, at) > MAX_CAPACITY:
        at.fail(f"a capacity from 1 to {MAX_CAPACITY} keys", value)
    return int(value)


def _concurrency(value: Any, at: _At) -> int | None:
    n = _int_or_unlimited(value, at)
    if n is not None and n > MAX_CONCURRENCY:
        at.fail(f'a whole number from 1 to {MAX_CONCURRENCY} (leases in flight), or "unlimited"',
                n)
    return n


def _retry_after(value: Any, at: _At) -> int:
    if _pos_int(value, at) > _MAX_RETRY_AFTER:
        at.fail(f"a whole number of seconds from 1 to {_MAX_RETRY_AFTER}", value)
    return int(value)


def _int_or_unlimited(value: Any, at: _At) -> int | None:
    if value == "unlimited":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        at.fail('a positive integer or "unlimited"', value)
    return value


def _choice(value: Any, at: _At, choices: tuple[T, ...]) -> T:
    if value not in choices:
        at.fail("one of " + ", ".join(repr(c) for c in choices), value)
    return value  # type: ignore[no-any-return]


def _rate(value: Any, at: _At, *, unlimited: bool = False) -> Rate | None:
    expected = _RATE_HELP + (' or "unlimited"' if unlimited else "")
    if value is _MISSING:
        at.fail(expected)
    if unlimited and value == "unlimited":
        return None
    if not isinstance(value, str):
        at.fail(expected, value)
    if re.search(r"[;,|]", value):
        at.fail(f"{expected}: one rate here (several rates in one limit are for [routes] "
                f"and decorators)", value)
    try:
        return Rate.parse(value)
    except ConfigurationError as e:
        reason = re.split(r"[:;] expected", str(e))[0]
        at.fail(f"{expected} ({reason})", value)


def _rates(value: Any, at: _At) -> tuple[Rate, ...]:
    """One rate, or several that must all pass: ``"10/1s;1000/1d"`` or a list."""
    if value is _MISSING:
        at.fail(_RATE_HELP)
    if not isinstance(value, (str, list)):
        at.fail(f"{_RATE_HELP}, several separated by ';' or a list of them", value)
    try:
        rates = Rate.parse_many(value)
    except ConfigurationError as e:
        at.fail(f"{_RATE_HELP}, several separated by ';' ({_why(e, value)})", value)
    windows = [r.period_ns for r in rates]
    if len(set(windows)) != len(windows):
        at.fail("rates of different windows (two rates over one window: the smaller binds)",
                value)
    return rates


def _limited_rate(value: Any, at: _At) -> Rate:
    rate = _rate(value, at)
    assert rate is not None  # "unlimited" was not accepted
    return rate


def _quota(value: Any, at: _At) -> QuotaSpec | None:
    expected = ('an allowance per calendar period like "500/month" (or /day, /week), a '
                'positive integer (per month), or "unlimited"')
    if value == "unlimited":
        return None
    try:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return QuotaSpec(value, "month")
        return QuotaSpec.parse(value)
    except ConfigurationError as e:
        at.fail(f"{expected} ({_why(e, value)})" if isinstance(value, int) else expected, value)


def _size(value: Any, at: _At) -> int | None:
    expected = 'a byte size like "100MB" (10^6) or "100MiB" (2^20), bytes, or "unlimited"'
    if value == "unlimited":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    m = _SIZE_RE.match(value) if isinstance(value, str) else None
    if m is None or m.group(2) not in _SIZE_UNITS:
        at.fail(expected, value)
    size = round(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if size < 1:
        at.fail(expected, value)
    return size

