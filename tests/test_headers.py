"""Header values and 429 bodies from Decisions (fastlimit.headers)."""

import json

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
    Limiter,
    Rate,
    SharedTable,
)
from fastlimit.http._fields import legacy_fields
from fastlimit.http.headers import format_reset, most_restrictive, next_unit_ns, sf_string

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
