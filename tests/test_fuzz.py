"""Hostile input, fuzzed: costs, keys, rate and quota strings, policy files
and HTTP header values.  Each gets a defined result or a clear error (a
ValueError or TypeError, FastLimitError included, naming the bad value);
never a crash, another exception type, or a table that fails verify().

Every test runs a bounded, derandomized number of examples (a fixed seed:
CI sees the same inputs each run), a few seconds in all.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import operator
import os
import sys
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from servers import call_wsgi

from fastlimit import (
    CapacityError,
    ConfigurationError,
    FakeClock,
    Identity,
    Limiter,
    Overrides,
    Policy,
    Quota,
    QuotaSpec,
    Rate,
    SharedTable,
    wsgi,
)
from fastlimit.policy.config import load_dict, load_file
from fastlimit.policy.spec import StoreSpec
from fastlimit.web import (
    RateLimited,
    RouteLimit,
    api_key_header,
    bearer_token,
    first_of,
    session_cookie,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
FEW = settings(FUZZ, max_examples=40)


def clean(table):
    """The table is sound and no claim was left locked."""
    assert table.verify() == []
    assert table.stats().locked_slots == 0


# -- costs ---------------------------------------------------------------------

hostile_costs = st.one_of(
    st.integers(-3, 13),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1.0, 2.5, -0.0]),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
    st.decimals(allow_nan=True),
    st.fractions(),
    st.complex_numbers(),
    st.builds(np.int64, st.integers(-(2**63), 2**63 - 1)),
    st.builds(np.float64, st.floats()),
)


def expected_cost(cost, burst):
    """What a cost must give: an int in [0, burst], or (error type, what the
    message must name).  operator.index is the rule: ints and int-likes
    (numpy integers, bool) are costs, nothing else is, never truncated."""
    try:
        n = operator.index(cost)
    except TypeError:
        return TypeError, repr(cost)
    if n < 0:
        return ValueError, str(n)
    if n > burst:
        return CapacityError, str(n)
    return n


@FUZZ
@given(cost=hostile_costs,
       method=st.sampled_from(["allow", "hit", "peek", "refund", "hit_many"]))
def test_hostile_costs_get_a_defined_answer_on_every_store(store_factory, cost, method):
    clock = FakeClock()
    store = store_factory()
    lim = Limiter("10/1m", store=store, name="costs", clock=clock)
    lim.hit("k", 3)
    before = lim.peek("k")
    want = expected_cost(cost, lim.burst)
    call = getattr(lim, method)
    if isinstance(want, tuple):
        error, named = want
        with pytest.raises(error) as caught:
            call(["k"] if method == "hit_many" else "k", cost)
        assert named in str(caught.value) and "cost" in str(caught.value)
        assert lim.peek("k") == before, "a refused cost counts nothing"
    else:
        call(["k"] if method == "hit_many" else "k", cost)
        if method == "refund":  # never past a full burst
            expected = min(lim.burst, before.remaining + want)
        elif method == "peek" or want > before.remaining:  # a denial counts nothing
            expected = before.remaining
        else:
            expected = before.remaining - want
        assert lim.peek("k").remaining == expected
    if isinstance(store, SharedTable):
        clean(store)


def test_quota_costs_follow_the_same_rule(tmp_path):
    q = Quota("5/month", path=tmp_path / "q.tbl", clock=FakeClock(10**18))
    for cost in (1.5, math.nan, None, "2", Decimal("1"), Fraction(1, 1)):
        with pytest.raises(TypeError, match="cost must be an int, got"):
            q.hit("k", cost)
        with pytest.raises(TypeError, match="cost must be an int, got"):
            q.refund("k", cost)
    with pytest.raises(CapacityError, match=f"cost {10**30} exceeds the quota"):
        q.hit("k", 10**30)
    with pytest.raises(ValueError, match="cost must be >= 0"):
        q.peek("k", -(10**30))
    assert q.hit("k", np.int64(2)).remaining == 3 and q.usage("k").used == 2
    assert q.store.verify() == []


# -- keys ------------------------------------------------------------------------

surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
hostile_keys = st.one_of(
    st.text(max_size=40),
    st.text(st.one_of(st.characters(), surrogates), min_size=1, max_size=10),
    st.binary(max_size=64),
    st.integers(-(2**63), 2**64 - 1),
    st.integers(-(2**80), 2**80),
    st.booleans(),
    st.floats(),
    st.none(),
    st.builds(bytearray, st.binary(max_size=8)),
    st.tuples(st.text(max_size=3)),
    st.builds(np.int64, st.integers(-(2**63), 2**63 - 1)),
)


def expected_key(key):
    """The key's canonical form (str keys are their UTF-8 bytes; ints their
    64-bit two's complement), or (error type, what the message names)."""
    if isinstance(key, str):
        try:
            return key.encode("utf-8")
        except UnicodeEncodeError:
            return UnicodeEncodeError, "surrogates not allowed"
    if isinstance(key, bytes):
        return key
    if isinstance(key, int) and not isinstance(key, np.integer):
        if not -(2**63) <= key < 2**64:
            return ValueError, str(int(key))
        return int(key) % 2**64
    return TypeError, type(key).__name__


@FUZZ
@given(key=hostile_keys, batch=st.booleans())
def test_hostile_keys_get_a_defined_answer_on_every_store(store_factory, key, batch):
    store = store_factory()
    lim = Limiter("3/1h", store=store, name="keys", clock=FakeClock())
    want = expected_key(key)
    if isinstance(want, tuple):
        error, named = want
        with pytest.raises(error) as caught:
            lim.hit_many(["ok", key]) if batch else lim.hit(key)
        assert named in str(caught.value)
        assert isinstance(caught.value, (ValueError, TypeError))
        assert lim.peek("ok").remaining == 3, "a batch with a bad key counts none of it"
    else:
        assert (lim.hit_many([key]).tolist() == [True]) if batch else lim.allow(key)
        twin = want if isinstance(want, (bytes, int)) else key
        if isinstance(key, str):
            twin = want  # a str key and its UTF-8 bytes are one key
        elif isinstance(key, int) and not isinstance(key, bool) and key >= 2**63:
            twin = key - 2**64  # the same 64 bits
        assert lim.peek(twin).remaining == 2
        lim.reset(key)
        assert lim.peek(twin).remaining == 3
    if isinstance(store, SharedTable):
        clean(store)


@pytest.mark.parametrize("key", ["", b"", "k" * (8 << 20), b"\xff" * (8 << 20), "\0", b"\0"])
def test_empty_and_huge_keys_are_ordinary_keys(key):
    table = SharedTable.anonymous(capacity=64)
    lim = Limiter("2/1h", store=table, clock=FakeClock())
    assert [lim.allow(key) for _ in range(3)] == [True, True, False]
    other = key + (b"x" if isinstance(key, bytes) else "x")
    assert lim.allow(other), "a key one byte longer is another key"
    clean(table)


def test_key_arrays_must_be_flat_integer_arrays():
    lim = Limiter("2/1h", store=SharedTable.anonymous(capacity=64), clock=FakeClock())
    with pytest.raises(ValueError, match=r"one-dimensional, got shape \(2, 2\)"):
        lim.hit_many(np.arange(4).reshape(2, 2))
    for array in (np.array([1.5]), np.array(["a"]), np.array([True]), np.array([1], object)):
        with pytest.raises(TypeError, match=f"must hold integers, got dtype {array.dtype}"):
            lim.hit_many(array)
    assert lim.hit_many(np.arange(10)[::2]).tolist() == [True] * 5, "strided views are fine"
    assert lim.peek(4).remaining == 1 and lim.peek(1).remaining == 2


# -- rate and quota strings ------------------------------------------------------

rate_like = st.builds(
    lambda limit, sep, count, unit, pad: f"{pad}{limit}{sep}{count}{unit}{pad}",
    st.one_of(st.integers(0, 10**10).map(str), st.text("0123456789١٠²", max_size=40)),
    st.sampled_from(["/", " per ", "/ ", "per", "//", " / "]),
    st.one_of(st.just(""), st.integers(0, 10**6).map(str), st.text("0123456789", max_size=50)),
    st.sampled_from(["s", "m", "h", "d", "w", "hour", "Minutes", "month", "y", "ms", "", "1e3s"]),
    st.sampled_from(["", " ", "\t", "\n", "\u2003"]),
)


@FUZZ
@given(text=st.one_of(rate_like, st.text(max_size=30), st.binary(max_size=8),
                      st.integers(), st.none(), st.floats()))
def test_rate_strings_parse_or_name_themselves(text):
    try:
        rate = Rate.parse(text)
    except ConfigurationError as e:
        assert repr(text) in str(e)
        return
    assert isinstance(text, str) and text.isascii(), "only ASCII digits and spaces"
    assert 1 <= rate.limit <= 10**9 and rate.period_ns >= 10**9
    assert Rate.parse(str(rate)) == rate


@FUZZ
@given(text=st.one_of(
    st.builds(lambda n, sep, unit: f"{n}{sep}{unit}",
              st.one_of(st.integers(-5, 2**45).map(str), st.text("0123456789", max_size=60)),
              st.sampled_from(["/", " per ", "/1 ", "/2", "per"]),
              st.sampled_from(["month", "months", "mo", "day", "d", "week", "w", "year", "x"])),
    st.text(max_size=20), st.integers(), st.none()))
def test_quota_strings_parse_or_name_themselves(text):
    try:
        spec = QuotaSpec.parse(text)
    except ConfigurationError as e:
        assert repr(text) in str(e) or str(text) in str(e)
        return
    assert QuotaSpec.parse(str(spec)) == spec


# -- policy files -----------------------------------------------------------------

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")
BASES = []
for _name in ("seed000.toml", "seed002.toml"):
    with open(os.path.join(EXAMPLES, _name), "rb") as _f:
        BASES.append(tomllib.load(_f))
BASES.append({"identities": {"anonymous": {"rate": "5/1m"}}})

hostile_values = st.one_of(
    st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=12),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=4), st.integers(),
                                                         max_size=2),
    st.sampled_from(["unlimited", "tier", "5/1m", "100/1h", "500/month", "2GB", "1e400GB",
                     "9" * 400 + "MB", "9" * 5000, "GET /x", "* /a/**", "ip", "identity",
                     "epoch", "iso", "delta", "UTC", "Mars/Olympus", "{retry_after}",
                     "{limit.x}", "{9}", "{retry_after:>99}", "GET /" + "a/" * 3000,
                     "x" * 5000 + "/1m", "", "\ud800", "STARTER", "CUSTOM", 0, -1, 599, 600]),
)


def _paths(node, prefix=()):
    """The path of every value in a TOML-shaped tree."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        yield (*prefix, key)
        if isinstance(value, (dict, list)):
            yield from _paths(value, (*prefix, key))


def _mutate(base, edits):
    """``base`` with each edit applied: set a value, add a key, or drop one."""
    data = copy.deepcopy(base)
    for where, how, key, value in edits:
        paths = list(_paths(data))
        if not paths:
            break
        path = paths[where % len(paths)]
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        if how == "set":
            parent[path[-1]] = value
        elif how == "drop":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[key] = value
    return data


policies = st.builds(
    _mutate, st.sampled_from(BASES),
    st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(["set", "set", "add", "drop"]),
                       st.one_of(st.sampled_from(["rate", "match", "tier", "caps", "quotas",
                                                  "body", "x"]), st.text(max_size=6)),
                       hostile_values),
             max_size=3))


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTLIMIT_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


@FUZZ
@given(data=policies)
def test_policy_dicts_load_or_say_where_they_are_wrong(state_dir, data):
    try:
        spec = load_dict(data, source="fuzz.toml")
    except ConfigurationError as e:
        assert str(e).startswith("fuzz.toml: "), str(e)
        return
    # Files the spec names (overrides, a quota file) could be anywhere: keep
    # this run's in memory and in the test's state directory.
    spec = dataclasses.replace(spec, store=StoreSpec())
    table = SharedTable.anonymous(capacity=256)
    policy = Policy(spec, store=table, clock=FakeClock(), overrides=Overrides())
    with policy:
        for identity in (None, Identity.session("u"), Identity.token("t")):
            try:
                decision = policy.hit("GET", "/x", identity, "10.0.0.1")
            except ValueError as e:  # an identity this policy does not limit
                assert "client_ip" in str(e) or "tier" in str(e)
                continue
            decision.release()
    clean(table)


toml_text = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from([
        "[identities.anonymous]\n", 'rate = "5/1m"\n', "[tiers.A]\n", "requests_per_minute = 9\n",
        "rate = nan\n", "capacity = 1e400\n",
        'caps = {batch_payload_bytes = "' + "9" * 400 + 'GB"}\n',
        "[response]\n", 'body = {a = nan}\n', 'body = {a = "{limit.__class__}"}\n', "[[x]]\n",
        "a = " + "[" * 2000 + "]" * 2000 + "\n", "[routes]\n", '"GET /x" = "1/1m"\n',
        '"GET /' + "a/" * 3000 + '" = "1/1m"\n', "status = 600\n", "\x00", "\ud7ff\n",
    ]), max_size=8).map("".join),
)


@FEW
@given(text=toml_text, raw=st.one_of(st.none(), st.binary(max_size=64)))
def test_policy_files_load_or_say_where_they_are_wrong(tmp_path, state_dir, text, raw):
    path = tmp_path / "policy.toml"
    path.write_bytes(raw if raw is not None else text.encode("utf-8", "surrogatepass"))
    try:
        load_file(path)
    except ConfigurationError as e:
        assert str(e).startswith(f"{path}: "), str(e)


def test_policy_file_errors_are_named(tmp_path):
    cases = {
        b"\xff\xfe[identities]": "TOML files are UTF-8, but byte 0 is b'\\xff'",
        b"a = " + b"[" * 5000 + b"]" * 5000: "nested too deeply",
        b'[identities.anonymous]\nrate = "' + b"9" * 5000 + b'/1m"': "identities.anonymous.rate",
        b"[identities.anonymous]\nrate = '5/1m'\n[response]\nbody = {a = nan}":
            "Out of range float values are not JSON compliant",
        b'[identities.api_key]\nrate = "tier"\n[tiers.A]\nrequests_per_minute = 5\n'
        b'caps = {batch_payload_bytes = "' + b"9" * 400 + b'GB"}': "tiers.A.caps",
    }
    for raw, message in cases.items():
        path = tmp_path / "p.toml"
        path.write_bytes(raw)
        with pytest.raises(ConfigurationError, match=f"^{path}: ") as caught:
            load_file(path)
        assert message in str(caught.value)


def test_a_route_pattern_of_thousands_of_segments_is_no_recursion_error():
    deep = "GET /" + "/".join(f"s{i}" for i in range(5000))
    policy = Policy.from_dict({"identities": {"anonymous": {"rate": "5/1m"}},
                               "routes": {deep: "1/1m", "GET /x/{y}/**": "2/1m"}},
                              store=SharedTable.anonymous(capacity=64), clock=FakeClock())
    path = deep.split(" ", 1)[1]
    assert [c.name for c in policy.resolve("GET", path, None, "10.0.0.1").checks] == [
        "anonymous", deep]


# -- HTTP headers ----------------------------------------------------------------------

POLICY = {
    "policy": {"name": "fuzz"},
    "identities": {"api_key": {"rate": "tier"}, "session": {"rate": "6/1h"},
                   "token": {"rate": "4/1h"}, "anonymous": {"rate": "2/1h"}},
    "tiers": {"GOLD": {"rate": "8/1h", "caps": {"batch_payload_bytes": "1MB"}}},
    "routes": {"POST /login": "1/1h"},
    "caps": {"batch_payload_bytes": ["* /**"]},
}
IDENTIFY = first_of(api_key_header({"gold-1": ("GOLD", "acct")}.get),
                    bearer_token({"tok": "tok-1"}.get),
                    session_cookie({"s1": "user-1"}.get))
latin1 = st.text(st.characters(max_codepoint=255), max_size=60)
header_values = st.one_of(
    latin1,
    st.sampled_from(["gold-1", "Bearer tok", "session=s1", "1.2.3.4, 10.0.0.2", "9" * 5000,
                     "for=[::1]:80;proto=http, for=_hidden", "unknown", ",,,", "0" * 30 + "12",
                     "for=\"[2001:db8::1\"", "Bearer ", "=" * 10, "1" * 20]),
)
HEADERS = ["X-API-Key", "Authorization", "Cookie", "X-Forwarded-For", "Forwarded",
           "Content-Length", "Content-Type"]
environs = st.fixed_dictionaries(
    {"REQUEST_METHOD": st.one_of(st.sampled_from(["GET", "POST", "HEAD"]), latin1),
     "PATH_INFO": st.one_of(st.sampled_from(["/", "/login", "//login/./", "/x/../login"]),
                            latin1, st.text(max_size=20))},
    optional={"REMOTE_ADDR": st.one_of(st.sampled_from(["10.0.0.2", "203.0.113.9", "::1",
                                                        "::ffff:10.0.0.3"]), latin1),
              **{("CONTENT_LENGTH" if h == "Content-Length" else
                  "CONTENT_TYPE" if h == "Content-Type" else
                  "HTTP_" + h.upper().replace("-", "_")): header_values for h in HEADERS}},
)


@pytest.fixture
def gate_table():
    table = SharedTable.anonymous(capacity=4096)
    yield table
    table.close()


def _hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hi"]


@FUZZ
@given(environ=environs)
def test_wsgi_middleware_answers_any_headers(gate_table, environ):
    policy = Policy.from_dict(POLICY, store=gate_table, clock=FakeClock())
    app = wsgi.RateLimitMiddleware(_hello, policy, identify=IDENTIFY,
                                   trusted_proxies=["10.0.0.0/8", "::1", "unix"])
    started = []
    call_wsgi(app, dict(environ), lambda status, headers, exc_info=None: started.append(status))
    assert started[0].split()[0] in ("200", "413", "429")
    clean(gate_table)


scopes = st.fixed_dictionaries({
    "type": st.just("http"),
    "method": st.one_of(st.sampled_from(["GET", "POST"]), latin1),
    "path": st.one_of(st.sampled_from(["/", "/login"]), st.text(max_size=30)),
    "client": st.one_of(st.none(), st.tuples(st.one_of(st.sampled_from(["10.0.0.2", "::1"]),
                                                       latin1), st.integers(0, 65535))),
    "headers": st.lists(st.tuples(
        st.one_of(st.sampled_from([h.lower().encode() for h in HEADERS]), st.binary(max_size=8)),
        st.one_of(header_values.map(lambda v: v.encode("latin-1")), st.binary(max_size=40))),
        max_size=6),
})


@FUZZ
@given(scope=scopes)
def test_asgi_requests_with_any_headers_get_a_decision(gate_table, scope):
    policy = Policy.from_dict(POLICY, store=gate_table, clock=FakeClock())
    gate = RouteLimit(policy, identify=IDENTIFY, trusted_proxies=["10.0.0.0/8", "::1"])
    try:
        gate.check(scope).release()
    except RateLimited as denied:
        assert denied.status in (413, 429)
    except ValueError as e:  # no client address at all, and a per-IP limit applies
        assume(scope["client"] is None)
        assert "client_ip" in str(e)
    clean(gate_table)


def test_a_content_length_of_thousands_of_digits_meets_the_byte_caps(gate_table):
    policy = Policy.from_dict(POLICY, store=gate_table, clock=FakeClock())
    app = wsgi.RateLimitMiddleware(_hello, policy, identify=IDENTIFY)
    statuses = []
    for length in ("9" * 5000, "0" * 5000 + "5", "12"):
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/up", "REMOTE_ADDR": "10.9.9.9",
                   "HTTP_X_API_KEY": "gold-1", "CONTENT_LENGTH": length}
        call_wsgi(app, environ, lambda status, headers, exc_info=None: statuses.append(status))
    assert [s[:3] for s in statuses] == ["413", "200", "200"]


def test_a_path_that_is_not_latin1_text_is_routed_as_given(gate_table):
    # PEP 3333 servers give latin-1 characters; one that gives real text
    # must not make the middleware raise
    policy = Policy.from_dict(POLICY, store=gate_table, clock=FakeClock())
    app = wsgi.RateLimitMiddleware(_hello, policy)
    statuses = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/caf\u00e9/\u2603", "REMOTE_ADDR": "10.0.0.1"}
    call_wsgi(app, environ, lambda status, headers, exc_info=None: statuses.append(status))
    assert statuses == ["200 OK"]

