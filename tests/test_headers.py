"""Header values and 429 bodies from Decisions (fastlimit.headers)."""

import json
import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sfv import Token, parse_list

from fastlimit import (
    ConfigurationError,
    Decision,
    DenialResponse,
    FakeClock,
    HeaderStyle,
    Identity,
    Limiter,
    Policy,
    Rate,
    SharedTable,
    wsgi,
)
from fastlimit.http._fields import legacy_fields
from fastlimit.http.headers import (
    UNLIMITED,
    format_reset,
    most_restrictive,
    next_unit_ns,
    sf_string,
)
from fastlimit.policy.config import tomllib
from fastlimit.web import api_key_header

S = 10**9
WALL0 = 1_775_397_600 * S
WALL_14H = 1_775_397_600 * S  # 2026-04-05T14:00:00Z


def test_sfv_parser_rejects_what_the_grammar_rejects():
    assert parse_list('"a";q=1, b;w') == [("a", {"q": 1}), (Token("b"), {"w": True})]
    for bad in ['"a";q=1,', '"a" "b"', '"a;q=1', '"a";Q=1', "a;q=1.", '"\\x"']:
        with pytest.raises(ValueError):
            parse_list(bad)


@pytest.mark.parametrize("reset_after_s, fmt, expected", [
    (3600, "iso", "2026-04-05T15:00:00.000Z"),    # seed 002's example value
    (0, "iso", "2026-04-05T14:00:00.000Z"),
    (0.0004, "iso", "2026-04-05T14:00:00.001Z"),  # rounded up to the millisecond
    (59.9991, "iso", "2026-04-05T14:01:00.000Z"),
    (60, "epoch", "1775397660"),                  # seed 000: a Unix timestamp
    (0.2, "epoch", "1775397601"),                 # rounded up: never before the reset
    (0, "epoch", "1775397600"),
    (12.5, "delta", "13"),
    (0, "delta", "0"),
])
def test_reset_formats(reset_after_s, fmt, expected):
    assert format_reset(round(reset_after_s * S), fmt, WALL_14H) == expected


def test_iso_reset_rounds_up_across_a_second_boundary():
    assert format_reset(999_999_999, "iso", WALL_14H + 1) == "2026-04-05T14:00:01.000Z"


@pytest.fixture
def lim():
    clock = FakeClock()
    table = SharedTable.anonymous(256)
    yield Limiter("5/1m", store=table, name="login", clock=clock), clock
    table.close()


def headers_of(style, decision, rate="5/1m", name="login", wall=WALL_14H):
    return dict(style.render(decision, name=name, rate=Rate.parse(rate), wall_now_ns=wall))


def test_legacy_headers_follow_the_limiter(lim):
    limiter, clock = lim
    style = HeaderStyle(reset="epoch")
    h = headers_of(style, limiter.hit("ip"))  # T = 12 s
    assert h == {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "4",
                 "X-RateLimit-Reset": "1775397612"}
    for _ in range(4):
        limiter.hit("ip")
    h = headers_of(style, limiter.hit("ip"))
    assert h == {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                 "X-RateLimit-Reset": "1775397660", "Retry-After": "12"}


def test_ietf_fields_parse_back_and_match_the_draft(lim):
    limiter, clock = lim
    style = HeaderStyle(legacy=False, ietf=True)
    for _ in range(2):
        limiter.hit("ip")
    clock.advance(5)  # 24 s used, 5 s gone: 19 s ahead, x = 41 s -> 3 left, a 4th in 7 s
    h = headers_of(style, limiter.hit("ip"))  # 31 s ahead: x = 29 -> 2 left, a 3rd in 7 s
    assert set(h) == {"RateLimit-Policy", "RateLimit"}
    [(name, params)] = parse_list(h["RateLimit-Policy"])
    assert type(name) is str and name == "login"  # a String, not a Token
    assert params == {"q": 5, "w": 60}
    [(name, params)] = parse_list(h["RateLimit"])
    assert type(name) is str and name == "login"
    assert params == {"r": 2, "t": 7}


def test_ietf_t_is_zero_when_replenished_and_policy_quotes_names():
    style = HeaderStyle(legacy=False, ietf=True)
    h = headers_of(style, Decision(True, 100, 100, 0), rate="100/1h", name='POST /a "b"')
    assert parse_list(h["RateLimit-Policy"]) == [('POST /a "b"', {"q": 100, "w": 3600})]
    assert parse_list(h["RateLimit"]) == [('POST /a "b"', {"r": 100, "t": 0})]


def test_window_of_a_custom_burst_is_burst_times_interval():
    style = HeaderStyle(legacy=False, ietf=True)
    # 10/1m with burst 20: 20 requests refill over 120 s
    h = headers_of(style, Decision(True, 20, 20, 0), rate="10/1m")
    assert parse_list(h["RateLimit-Policy"])[0][1] == {"q": 20, "w": 120}


@pytest.mark.parametrize("rate, burst, cost, waits", [
    ("5/1m", 5, 1, [0, 0.001, 0.3, 5.5, 11.999]),
    ("100/1h", 100, 1, [0, 1, 35.5]),
    ("7/1m", 7, 3, [0, 2, 8.57]),
    ("10/1s", 10, 1, [0, 0.05]),   # sub-second waits still say at least 1
    ("3/1m", 6, 2, [0, 7, 19.5]),
])
def test_retry_after_whole_seconds_at_least_one_and_never_before_t(rate, burst, cost, waits):
    clock = FakeClock()
    lim = Limiter(rate, store=SharedTable.anonymous(64), clock=clock, burst=burst)
    style = HeaderStyle(legacy=False, ietf=True)
    for i, wait in enumerate(waits):
        key = f"k{i}"
        while lim.allow(key, cost):  # drain a fresh key, then ask a little later
            pass
        clock.advance(wait)
        d = lim.hit(key, cost)
        assert not d.allowed
        h = headers_of(style, d, rate=rate)
        retry = int(h["Retry-After"])
        t = parse_list(h["RateLimit"])[0][1]["t"]
        assert retry >= 1
        assert retry >= t
        assert retry * S >= d.retry_after_ns > (retry - 1) * S  # ceil, exactly
        clock.advance(retry)
        assert lim.peek(key, cost).allowed  # waiting Retry-After is always enough


def test_next_unit_after_an_override_lowered_the_tolerance():
    # state made under 100/1h (1 h of tolerance), read under 2/1h: 1908 s ahead
    d = Decision(True, 2, 0, 1908 * S)
    assert next_unit_ns(d, Rate.parse("2/1h")) == 108 * S
    d = Decision(False, 2, 0, 5000 * S, 1400 * S + 1800 * S)
    assert next_unit_ns(d, Rate.parse("2/1h")) == (5000 - 3600 + 1800) * S


def test_most_restrictive():
    allow = [Decision(True, 30, 12, 5 * S), Decision(True, 5, 2, 3 * S),
             Decision(True, 5, 2, 4 * S)]
    assert most_restrictive(allow) == 2
    deny = [Decision(True, 30, 0, 60 * S), Decision(False, 5, 0, 60 * S, 12 * S),
            Decision(False, 30, 0, 60 * S, 2 * S)]
    assert most_restrictive(deny) == 1
    with pytest.raises(ValueError):
        most_restrictive([])


def test_sf_string_rejects_non_ascii():
    assert sf_string("a\\b") == '"a\\\\b"'
    with pytest.raises(ConfigurationError):
        sf_string("café")


def test_default_body_is_the_seeds_shape():
    body = json.loads(DenialResponse().render(retry_after=3, limit="api"))
    assert body == {"success": False,
                    "error": {"code": "RATE_LIMITED", "message": "Too many requests"}}


def test_body_placeholders_and_literal_braces():
    r = DenialResponse(status=503, body={"error": {"message": "wait {retry_after}s on {limit}",
                                                   "detail": ["{{literal}}"], "n": 1}})
    assert json.loads(r.render(retry_after=12, limit="login")) == {
        "error": {"message": "wait 12s on login", "detail": ["{literal}"], "n": 1}}
    assert r.status == 503


@pytest.mark.parametrize("kwargs", [
    {"body": {"message": "{unknown}"}},
    {"body": {"message": "{"}},
    {"body": ["not", "an", "object"]},
    {"status": 200},
    {"status": True},
])
def test_bad_denial_responses(kwargs):
    with pytest.raises(ConfigurationError):
        DenialResponse(**kwargs)


def test_bad_reset_format():
    with pytest.raises(ConfigurationError, match="reset format"):
        HeaderStyle(reset="unix")  # type: ignore[arg-type]


@given(after=st.integers(-2**63, 2**63 - 1), remaining=st.integers(0, 2**63 - 1),
       wall=st.one_of(st.integers(-2**63, 2**63 - 1), st.just(WALL0)),
       epoch=st.booleans())
def test_the_compiled_fields_are_the_rounded_up_arithmetic(after, remaining, wall, epoch):
    d = Decision(True, 7, remaining, after)
    at = max(0, after) + (wall if epoch else 0)
    assert legacy_fields(d, int(epoch), wall) == [
        ("X-RateLimit-Limit", "7"), ("X-RateLimit-Remaining", str(remaining)),
        ("X-RateLimit-Reset", str(-(-at // S)))]


def test_sfv_reads_every_bare_item_and_dictionaries():
    from decimal import Decimal

    from sfv import parse_dictionary
    assert parse_list('a;q=1.5, :aGk=:, ?0, "s\\\\\\"x";n=-7') == [
        (Token("a"), {"q": Decimal("1.5")}), (b"hi", {}), (False, {}), ('s\\"x', {"n": -7})]
    assert parse_dictionary("limit=9, remaining=0;x, reset") == {
        "limit": (9, {}), "remaining": (0, {"x": True}), "reset": (True, {})}
    for bad in ['"a";r=', "a,", "1.2345", "1.", ":not base64!:", '"é"', "a;R=1",
                "1234567890123456"]:
        with pytest.raises(ValueError):
            parse_list(bad)


# -- issue 16 item 8: unlimited callers, one wall reading, concurrency, policy lists ------

SEED = pathlib.Path(__file__).resolve().parent.parent / "examples" / "seed000.toml"
MAY_1 = 1_777_593_600       # 2026-05-01T00:00:00Z: the end of WALL0's month (April)
JUNE_1 = 1_780_272_000      # 2026-06-01T00:00:00Z
JULY_1 = 1_782_864_000      # 2026-07-01T00:00:00Z
IP = "198.51.100.7"


class WallClock:
    """An injected wall clock that counts its reads."""

    def __init__(self, ns):
        self.ns = ns
        self.reads = 0

    def __call__(self):
        self.reads += 1
        return self.ns


@pytest.fixture
def seed(tmp_path, monkeypatch):
    """seed000(tweak, wall_ns) -> (policy, wall): examples/seed000.toml
    tweaked, on a private table, monotonic time a FakeClock."""
    monkeypatch.setenv("FASTLIMIT_STATE_DIR", str(tmp_path / "state"))
    made = []

    def make(tweak=None, wall_ns=WALL0):
        with open(SEED, "rb") as f:
            data = tomllib.load(f)
        if tweak is not None:
            tweak(data)
        wall = WallClock(wall_ns)
        table = SharedTable.anonymous(4096)
        policy = Policy.from_dict(data, store=table, clock=FakeClock(), wall_clock=wall,
                                  overrides=tmp_path / f"ov-{len(made)}.json")
        made.append((policy, table))
        return policy, wall

    yield make
    for policy, table in made:
        policy.close()
        policy.overrides.close()
        table.close()


def headers_style(reset="epoch", ietf=False):
    def tweak(data):
        data["headers"] = {"reset": reset, "legacy": True, "ietf": ietf}
    return tweak


def seed_client_check(headers):
    """Seed 000's "Monitor Headers Proactively" sample, as it is written."""
    remaining = int(headers.get("X-RateLimit-Remaining", 0))
    reset_time = int(headers.get("X-RateLimit-Reset", 0))
    warned = remaining < 10
    return remaining > 0, warned, reset_time


CUSTOM = Identity.api_key("k-custom", "CUSTOM", account="acct_custom")
STARTER = Identity.api_key("k-starter", "STARTER", account="acct_starter")


@pytest.mark.parametrize("reset, value", [
    ("epoch", "1775397600"), ("delta", "0"), ("iso", "2026-04-05T14:00:00.000Z")])
@pytest.mark.parametrize("ietf", [False, True])
def test_unlimited_callers_get_numbers_the_seed_client_reads(seed, reset, value, ietf):
    policy, wall = seed(headers_style(reset, ietf))
    assert UNLIMITED == 2**31 - 1
    for _ in range(3):
        d = policy.hit("GET", "/files", CUSTOM, IP)
        # no IETF field: there is no policy to describe
        assert d.headers == [("X-RateLimit-Limit", "2147483647"),
                             ("X-RateLimit-Remaining", "2147483647"),
                             ("X-RateLimit-Reset", value)]
        assert d.raw_headers() == [(k.lower().encode(), v.encode()) for k, v in d.headers]
    assert policy.peek("GET", "/files", CUSTOM, IP).headers == d.headers
    if reset == "epoch":
        assert seed_client_check(dict(d.headers)) == (True, False, 1775397600)
    # a route's limit still applies to an unlimited tier, and its fields are sent
    login = dict(policy.hit("POST", "/auth/session/login", CUSTOM, IP).headers)
    assert (login["X-RateLimit-Limit"], login["X-RateLimit-Remaining"]) == ("5", "4")


def test_shadow_only_requests_still_show_nothing(seed):
    def shadow(data):
        data["policy"]["shadow"] = True
    policy, _ = seed(shadow)
    assert policy.hit("GET", "/files", STARTER, IP).headers == []


def test_render_unlimited_directly():
    style = HeaderStyle(reset="iso", ietf=True)
    assert style.render_unlimited(wall_now_ns=WALL_14H + 1) == [
        ("X-RateLimit-Limit", "2147483647"), ("X-RateLimit-Remaining", "2147483647"),
        ("X-RateLimit-Reset", "2026-04-05T14:00:00.001Z")]
    assert HeaderStyle(legacy=False, ietf=True).render_unlimited(wall_now_ns=0) == []


def small_quota(n, reset="epoch"):
    def tweak(data):
        headers_style(reset, ietf=True)(data)
        data["tiers"]["STARTER"]["quotas"]["ai_descriptions"] = f"{n}/month"
    return tweak


@pytest.mark.parametrize("reset, at_end", [
    ("epoch", str(JUNE_1)), ("iso", "2026-06-01T00:00:00.000Z"), ("delta", "1")])
def test_quota_reset_is_the_boundary_from_one_wall_reading(seed, reset, at_end):
    policy, wall = seed(small_quota(3, reset), wall_ns=JUNE_1 * S - 1)  # May's last ns
    seen = []
    for _ in range(4):
        wall.reads = 0
        d = policy.hit("POST", "/images/analyze", STARTER, IP)
        assert wall.reads == 1, "one wall-clock reading per decision"
        seen.append(d)
    for d, left in zip(seen, [2, 1, 0, 0], strict=True):
        h = dict(d.headers)
        assert h["X-RateLimit-Reset"] == at_end
        assert (h["X-RateLimit-Limit"], h["X-RateLimit-Remaining"]) == ("3", str(left))
        assert h["RateLimit"] == f'"ai_descriptions";r={left};t=1'
        assert h["RateLimit-Policy"] == '"api";q=30;w=60, "ai_descriptions";q=3;w=2678400'
    assert (seen[3].kind, dict(seen[3].headers)["Retry-After"]) == ("quota", "1")
    # on the boundary and after it: June, a fresh count, reset at July's start
    for ns in (JUNE_1 * S, JUNE_1 * S + 1):
        wall.ns = ns
        h = dict(policy.hit("POST", "/images/analyze", STARTER, IP).headers)
        assert h["RateLimit-Policy"] == '"api";q=30;w=60, "ai_descriptions";q=3;w=2592000'
    assert h["X-RateLimit-Remaining"] == "1"
    assert h["X-RateLimit-Reset"] == {"epoch": str(JULY_1), "iso": "2026-07-01T00:00:00.000Z",
                                      "delta": str(JULY_1 - JUNE_1)}[reset]


def test_ratelimit_policy_lists_every_policy_whichever_binds(seed):
    policy, _ = seed(small_quota(10))
    both = '"api";q=30;w=60, "ai_descriptions";q=10;w=2592000'  # April: 30 days
    d = policy.hit("POST", "/images/analyze", STARTER, IP)  # api 29 left, quota 9: the quota
    assert d.limit == "ai_descriptions"
    first = dict(d.headers)
    assert first["RateLimit-Policy"] == both
    assert first["RateLimit"] == f'"ai_descriptions";r=9;t={MAY_1 - 1775397600}'
    for _ in range(25):
        assert policy.hit("GET", "/files", STARTER, IP).allowed
    d = policy.hit("POST", "/images/analyze", STARTER, IP)  # api 3 left, quota 8: the rate
    assert d.limit == "api"
    assert dict(d.headers)["RateLimit-Policy"] == both
    assert dict(d.headers)["RateLimit"] == '"api";r=3;t=2'
    for _ in range(3):
        policy.hit("POST", "/images/analyze", STARTER, IP)
    denied = policy.hit("POST", "/images/analyze", STARTER, IP)
    assert (denied.kind, dict(denied.headers)["RateLimit-Policy"]) == ("rate", both)
    assert parse_list(both) == [("api", {"q": 30, "w": 60}),
                                ("ai_descriptions", {"q": 10, "w": 2592000})]
    # a route with only the tier's rate lists only that one
    assert dict(policy.hit("GET", "/files", STARTER, IP).headers)[
        "RateLimit-Policy"] == '"api";q=30;w=60'
    # render(i): what one limit alone would say
    assert dict(denied.render(1))["RateLimit-Policy"] == '"ai_descriptions";q=10;w=2592000'


def two_uploads(data):
    headers_style("epoch", ietf=True)(data)
    data["tiers"]["STARTER"]["concurrency"]["uploads"] = 2


UPLOAD_POLICIES = '"batch-upload";q=500;w=60, "uploads";q=2;qu="concurrent-requests"'


def test_concurrency_denial_reports_the_concurrency_limit(seed):
    policy, _ = seed(two_uploads)
    held = [policy.hit("POST", "/files/upload", STARTER, IP) for _ in range(2)]
    assert all(d.allowed for d in held)
    assert dict(held[1].headers)["RateLimit-Policy"] == UPLOAD_POLICIES
    assert dict(held[1].headers)["RateLimit"] == '"batch-upload";r=498;t=1'
    denied = policy.hit("POST", "/files/upload", STARTER, IP)
    assert (denied.kind, denied.status, denied.retry_after) == ("concurrency", 429, 5)
    assert denied.headers == [
        ("X-RateLimit-Limit", "2"), ("X-RateLimit-Remaining", "0"),
        ("X-RateLimit-Reset", "1775397605"),
        ("RateLimit-Policy", UPLOAD_POLICIES),
        ("RateLimit", '"uploads";r=0;t=5'),
        ("Retry-After", "5")]
    assert denied.raw_headers() == [(k.lower().encode(), v.encode()) for k, v in denied.headers]
    assert parse_list(UPLOAD_POLICIES)[1] == ("uploads", {"q": 2, "qu": "concurrent-requests"})
    for d in held:
        d.release()
    assert policy.hit("POST", "/files/upload", STARTER, IP).allowed


def test_render_concurrency_directly_and_its_errors():
    style = HeaderStyle(reset="epoch", ietf=True)
    assert style.render_concurrency(name="uploads", limit=3, retry_after=0.2,
                                    wall_now_ns=WALL_14H) == [
        ("X-RateLimit-Limit", "3"), ("X-RateLimit-Remaining", "0"),
        ("X-RateLimit-Reset", "1775397601"),
        ("RateLimit-Policy", '"uploads";q=3;qu="concurrent-requests"'),
        ("RateLimit", '"uploads";r=0;t=1'), ("Retry-After", "1")]
    for bad in (0, True, 2.0):
        with pytest.raises(ConfigurationError, match=rf"limit must be an int >= 1.*{bad!r}"):
            style.render_concurrency(name="u", limit=bad, retry_after=1, wall_now_ns=0)
    for bad in (-1, float("nan"), float("inf"), "5"):
        with pytest.raises(ConfigurationError, match="retry_after must be a finite number"):
            style.render_concurrency(name="u", limit=1, retry_after=bad, wall_now_ns=0)


def test_wsgi_middleware_sends_unlimited_and_concurrency_fields(seed):
    policy, _ = seed(two_uploads)
    keys = {"k-custom": ("CUSTOM", "acct_custom"), "k-starter": ("STARTER", "acct_starter")}

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    middleware = wsgi.RateLimitMiddleware(app, policy, identify=api_key_header(keys.get))

    def call(key, method="GET", path="/files"):
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "",
                   "QUERY_STRING": "", "wsgi.input": None, "REMOTE_ADDR": IP,
                   "HTTP_X_API_KEY": key}
        started = []
        result = middleware(environ, lambda status, headers, exc_info=None: started.append(
            (status, headers)))
        b"".join(result)
        if hasattr(result, "close"):
            result.close()
        status, headers = started[0]
        return int(status.split()[0]), [(k, v) for k, v in headers
                                        if "ratelimit" in k.lower() or k == "Retry-After"]

    assert call("k-custom") == (200, [("X-RateLimit-Limit", "2147483647"),
                                      ("X-RateLimit-Remaining", "2147483647"),
                                      ("X-RateLimit-Reset", "1775397600")])
    held = [policy.hit("POST", "/files/upload", STARTER, IP) for _ in range(2)]
    status, headers = call("k-starter", "POST", "/files/upload")
    assert status == 429
    assert headers == [("X-RateLimit-Limit", "2"), ("X-RateLimit-Remaining", "0"),
                       ("X-RateLimit-Reset", "1775397605"),
                       ("RateLimit-Policy", UPLOAD_POLICIES),
                       ("RateLimit", '"uploads";r=0;t=5'), ("Retry-After", "5")]
    for d in held:
        d.release()
