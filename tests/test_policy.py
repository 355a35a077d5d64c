"""The two example policies driven request by request through Policy, over a
fake monotonic clock and a fake wall clock, against hand-computed answers."""

import json
import logging
import multiprocessing as mp
import pathlib

import pytest
from sfv import parse_list

from fastlimit import (
    CapacityError,
    FakeClock,
    Identity,
    LimitCheck,
    Limiter,
    Policy,
    SharedTable,
    hit_all,
)
from fastlimit.policy.config import tomllib  # the stdlib module, or tomli before 3.11

S = 10**9
EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
WALL0 = 1_775_397_600  # 2026-04-05T14:00:00Z, in seconds
DENIED_BODY = {"success": False, "error": {"code": "RATE_LIMITED", "message": "Too many requests"}}


class Clocks:
    """A monotonic and a wall clock that move together."""

    def __init__(self, wall_s=WALL0):
        self.mono = FakeClock()
        self.wall = FakeClock(wall_s * S)

    def advance(self, seconds):
        self.mono.advance(seconds)
        self.wall.advance(seconds)


def example(name):
    with open(EXAMPLES / name, "rb") as f:
        return tomllib.load(f)


@pytest.fixture
def clocks():
    return Clocks()


@pytest.fixture
def make_policy(clocks, tmp_path):
    """Build a policy from an example (optionally tweaked) on a private table."""
    made = []

    def make(name="seed000.toml", tweak=None, **options):
        table = SharedTable.anonymous(4096)
        options.setdefault("overrides", tmp_path / f"overrides-{len(made)}.json")
        kw = dict(store=table, clock=clocks.mono, wall_clock=clocks.wall, **options)
        if tweak is None:
            policy = Policy.from_file(EXAMPLES / name, **kw)
        else:
            data = example(name)
            tweak(data)
            policy = Policy.from_dict(data, **kw)
        made.append((policy, table))
        return policy

    yield make
    for policy, table in made:
        policy.close()
        policy.overrides.close()
        table.close()


def legacy(decision):
    h = dict(decision.headers)
    assert len(h) == len(decision.headers), "a header sent twice"
    return h


def starter(key, account=None):
    return Identity.api_key(key, "STARTER", account=account)


# -- seed 000 -------------------------------------------------------------------


def test_tier_minute_limit_runs_out_and_refills(make_policy, clocks):
    policy = make_policy()
    me, ip = starter("key-a", account="acct-1"), "203.0.113.7"
    for i in range(30):  # STARTER: 30/min, one every 2 s, all 30 at once from fresh
        d = policy.hit("GET", "/files", me, ip)
        assert d.allowed
        assert legacy(d) == {"X-RateLimit-Limit": "30", "X-RateLimit-Remaining": str(29 - i),
                             "X-RateLimit-Reset": str(WALL0 + 2 * (i + 1))}
    d = policy.hit("GET", "/files", me, ip)
    assert not d.allowed and d.limit == "api"
    assert (d.status, d.retry_after, d.content_type) == (429, 2, "application/json")
    assert legacy(d) == {"X-RateLimit-Limit": "30", "X-RateLimit-Remaining": "0",
                         "X-RateLimit-Reset": str(WALL0 + 60), "Retry-After": "2"}
    assert json.loads(d.body) == DENIED_BODY
    clocks.advance(1.5)
    d = policy.hit("GET", "/files", me, ip)
    assert legacy(d) == {"X-RateLimit-Limit": "30", "X-RateLimit-Remaining": "0",
                         "X-RateLimit-Reset": str(WALL0 + 60), "Retry-After": "1"}
    clocks.advance(0.5)  # t = 2 s: one request's worth is back
    d = policy.hit("GET", "/files", me, ip)
    assert d.allowed
    assert legacy(d) == {"X-RateLimit-Limit": "30", "X-RateLimit-Remaining": "0",
                         "X-RateLimit-Reset": str(WALL0 + 62)}
    assert not policy.hit("GET", "/files", me, ip).allowed
    clocks.advance(62)  # t = 64 s: full again
    d = policy.hit("GET", "/files", me, ip)
    assert legacy(d) == {"X-RateLimit-Limit": "30", "X-RateLimit-Remaining": "29",
                         "X-RateLimit-Reset": str(WALL0 + 66)}
    # the limit is per account: another key of acct-1 shares it, another account does not
    same_account, other_account = starter("key-b", "acct-1"), starter("key-c", "acct-2")
    assert policy.hit("GET", "/files", same_account, ip).decision.remaining == 28
    assert policy.hit("GET", "/files", other_account, ip).decision.remaining == 29


def test_other_tiers_and_sessions(make_policy):
    policy = make_policy()
    ip = "203.0.113.8"
    for tier, limit in [("PROFESSIONAL", 100), ("ENTERPRISE", 500)]:
        d = policy.hit("GET", "/files", Identity.api_key(f"k-{tier}", tier), ip)
        assert legacy(d)["X-RateLimit-Limit"] == str(limit)
        assert legacy(d)["X-RateLimit-Remaining"] == str(limit - 1)
    session = Identity.session("user-9")
    results = [policy.hit("GET", "/dashboard/files", session, ip) for _ in range(301)]
    assert [r.allowed for r in results] == [True] * 300 + [False]
    assert legacy(results[0])["X-RateLimit-Limit"] == "300"
    assert results[-1].retry_after == 1  # T = 0.2 s, rounded up to a whole second
    with pytest.raises(ValueError, match="unknown tier 'GOLD'"):
        policy.hit("GET", "/files", Identity.api_key("k", "GOLD"), ip)


def test_login_is_5_per_minute_per_ip_across_api_keys(make_policy, clocks):
    policy = make_policy()
    ip = "198.51.100.9"
    for i in range(5):
        d = policy.hit("POST", "/auth/session/login", starter(f"key-{i}"), ip)
        assert d.allowed and d.limit == "POST /auth/session/login"  # 4 left beats 29 left
        assert legacy(d) == {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": str(4 - i),
                             "X-RateLimit-Reset": str(WALL0 + 12 * (i + 1))}
    d = policy.hit("POST", "/auth/session/login", starter("key-5"), ip)
    assert not d.allowed and d.limit == "POST /auth/session/login"
    assert legacy(d) == {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                         "X-RateLimit-Reset": str(WALL0 + 60), "Retry-After": "12"}
    # the denied request took nothing from key-5's own tier budget
    assert policy.peek("GET", "/files", starter("key-5"), ip).decision.remaining == 30
    # a session or an anonymous caller on that IP is refused as well
    assert not policy.hit("POST", "/auth/session/login", Identity.session("u1"), ip).allowed
    assert not policy.hit("POST", "/auth/session/login//", None, ip).allowed
    # another IP has its own 5; other endpoints are unaffected
    assert policy.hit("POST", "/auth/session/login", starter("key-5"), "198.51.100.10").allowed
    assert policy.hit("POST", "/auth/session/register", starter("key-5"), ip).allowed
    clocks.advance(12)
    assert policy.hit("POST", "/auth/session/login", starter("key-6"), ip).allowed
    assert not policy.hit("POST", "/auth/session/login", starter("key-7"), ip).allowed


def test_invalid_key_falls_back_to_the_anonymous_ip_limit(make_policy):
    policy = make_policy()
    ip = "192.0.2.1"
    for i in range(5):  # 5/min per IP
        d = policy.hit("GET", "/files", Identity.invalid(), ip)
        assert d.allowed and d.limit == "anonymous" and d.resolution.identity == "anonymous"
        assert legacy(d) == {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": str(4 - i),
                             "X-RateLimit-Reset": str(WALL0 + 12 * (i + 1))}
    for who in (Identity.invalid(), Identity.anonymous(), None):
        d = policy.hit("GET", "/files", who, ip)
        assert legacy(d) == {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                             "X-RateLimit-Reset": str(WALL0 + 60), "Retry-After": "12"}
    # a valid key on the same IP keeps its tier limit
    assert legacy(policy.hit("GET", "/files", starter("good"), ip))["X-RateLimit-Limit"] == "30"
    # another IP starts afresh
    assert policy.hit("GET", "/files", Identity.invalid(), "192.0.2.2").allowed
    with pytest.raises(ValueError, match="client_ip"):
        policy.hit("GET", "/files", Identity.invalid())


def test_a_free_accounts_key_is_answered_as_an_invalid_key(make_policy):
    policy = make_policy()
    ip = "192.0.2.50"
    free = Identity.api_key("free-key", "FREE", account="acct-free")
    results = [policy.hit("GET", "/files", free, ip) for _ in range(6)]
    assert [r.allowed for r in results] == [True] * 5 + [False]
    assert all(r.rejected == "tier FREE has no API access" for r in results)
    assert {r.limit for r in results} == {"anonymous"}
    assert legacy(results[0])["X-RateLimit-Limit"] == "5"
    # the same IP's anonymous budget is the one that was spent
    assert not policy.hit("GET", "/files", Identity.anonymous(), ip).allowed
    assert policy.tier_of(free).api_access is False  # its tier is still known (quotas...)


def test_custom_tier_is_unlimited_unless_capped(make_policy):
    def add_customer(data):
        data["customers"] = {"acct-acme": {"tier": "CUSTOM", "requests_per_minute": 2}}

    policy = make_policy(tweak=add_customer)
    ip = "192.0.2.9"
    free_rein = Identity.api_key("k1", "CUSTOM", account="acct-other")
    for _ in range(1000):
        d = policy.hit("GET", "/files", free_rein, ip)
        assert d.allowed and d.limit is None
        # no limit applies: the fields say so with a number a client can read
        assert legacy(d)["X-RateLimit-Remaining"] == "2147483647"
    acme = Identity.api_key("k2", "CUSTOM", account="acct-acme")
    assert [policy.hit("GET", "/files", acme, ip).allowed for _ in range(3)] == [True, True, False]
    assert policy.tier_of(acme).rate.limit == 2
    # a cap set at run time, from any process: the "api" limit of that account
    policy.overrides.set("api", "acct-other", "1/1m")
    assert [policy.hit("GET", "/files", free_rein, ip).allowed for _ in range(2)] == [True, False]
    policy.overrides.clear("api", "acct-other")
    assert legacy(policy.hit("GET", "/files", free_rein, ip))["X-RateLimit-Limit"] == "2147483647"
    # route limits still apply to unlimited tiers
    d = policy.hit("POST", "/auth/session/login", free_rein, ip)
    assert d.limit == "POST /auth/session/login" and legacy(d)["X-RateLimit-Remaining"] == "4"


def test_batch_uploads_use_a_dedicated_ip_bucket_not_the_tier(make_policy):
    policy = make_policy()
    me, ip = starter("uploader"), "203.0.113.20"
    routes = [("POST", "/files/upload"), ("POST", "/files/upload/batch"),
              ("POST", "/files/uploads"), ("PUT", "/files/uploads/u-1"),
              ("PUT", "/files/uploads/u-1/parts/3"), ("POST", "/files/uploads/u-1/complete"),
              ("GET", "/files/uploads/u-1/status")]
    for i in range(40):  # more than the tier's 30/min
        method, path = routes[i % len(routes)]
        d = policy.hit(method, path, me, ip)
        d.release()  # each upload finishes before the next (they hold a lease while running)
        assert d.allowed and d.limit == "batch-upload"
        assert legacy(d)["X-RateLimit-Limit"] == "500"
        assert legacy(d)["X-RateLimit-Remaining"] == str(499 - i)
        assert [c.name for c in d.checks] == ["batch-upload"]
    assert policy.peek("GET", "/files", me, ip).decision.remaining == 30  # tier untouched
    # a batch of 50 files costs 50
    d = policy.hit("POST", "/files/upload/batch", me, ip, cost=50)
    d.release()
    assert legacy(d)["X-RateLimit-Remaining"] == str(499 - 40 - 50 + 1)
    with pytest.raises(CapacityError, match="batch-upload"):
        policy.hit("POST", "/files/upload/batch", me, ip, cost=501)
    assert legacy(policy.peek("POST", "/files/upload", me, ip))["X-RateLimit-Remaining"] == "410"
    # unauthenticated callers: 200/min, in a bucket of their own
    d = policy.hit("POST", "/files/upload", Identity.invalid(), ip)
    assert d.limit == "batch-upload" and legacy(d)["X-RateLimit-Limit"] == "200"
    assert legacy(d)["X-RateLimit-Remaining"] == "199"
    assert [c.name for c in d.checks] == ["batch-upload"]  # not the anonymous 5/min either


def test_stripe_webhook_has_its_own_200_per_minute(make_policy):
    policy = make_policy()
    stripe_ip = "54.187.174.169"
    results = [policy.hit("POST", "/payment/webhooks/stripe", None, stripe_ip)
               for _ in range(201)]
    assert [r.allowed for r in results] == [True] * 200 + [False]
    assert legacy(results[0])["X-RateLimit-Limit"] == "200"
    assert results[-1].retry_after == 1  # T = 0.3 s
    # it did not spend the anonymous 5/min of that IP
    assert policy.hit("GET", "/files", None, stripe_ip).decision.remaining == 4


def test_denied_request_consumes_nothing_from_the_others(make_policy):
    policy = make_policy()
    me, ip = starter("k-main"), "203.0.113.30"
    for _ in range(10):
        policy.hit("GET", "/files", me, ip)
    before = policy.peek("GET", "/files", me, ip).decision
    assert before.remaining == 20
    for i in range(5):  # spend the IP's login budget with other keys
        assert policy.hit("POST", "/auth/session/login", starter(f"other-{i}"), ip).allowed
    # the tier allows (and is hit first), then login denies: the tier hit is refunded
    d = policy.hit("POST", "/auth/session/login", me, ip)
    assert [c.name for c in d.checks] == ["api", "POST /auth/session/login"]
    assert d.result.denied_by == 1 and d.result.decisions[0].allowed
    assert policy.peek("GET", "/files", me, ip).decision == before
    # the other way round: the tier denies first, login at a fresh IP is not touched
    for _ in range(20):
        policy.hit("GET", "/files", me, ip)
    fresh_ip = "203.0.113.31"
    d = policy.hit("POST", "/auth/session/login", me, fresh_ip)
    assert not d.allowed and d.limit == "api" and d.result.denied_by == 0
    login = policy.peek("POST", "/auth/session/login", starter("someone"), fresh_ip)
    assert login.result.decisions[1].remaining == 5


def test_retry_after_is_the_longest_wait_of_all_denying_limits(make_policy, clocks):
    policy = make_policy()
    me, ip = starter("k-wait"), "203.0.113.40"
    for i in range(3):  # password reset: 3/min per IP (T = 20 s)
        assert policy.hit("POST", "/auth/session/password-reset/request", starter(f"o{i}"), ip)
    for _ in range(30):
        policy.hit("GET", "/files", me, ip)
    clocks.advance(1)
    # tier denies (next in 1 s) and so would the reset limit (next in 19 s)
    d = policy.hit("POST", "/auth/session/password-reset/request", me, ip)
    assert d.result.denied_by == 0
    assert d.limit == "POST /auth/session/password-reset/request"
    assert legacy(d)["Retry-After"] == "19" and d.retry_after == 19
    assert list(dict(d.headers)).count("Retry-After") == 1


def test_composite_with_limiters_directly():
    clock = FakeClock()
    table = SharedTable.anonymous(256)
    a, b, c = (Limiter(r, store=table, name=n, clock=clock)
               for r, n in [("10/1m", "a"), ("2/1m", "b"), ("10/1m", "c")])
    checks = [LimitCheck("a", a, "k"), LimitCheck("b", b, "k"), LimitCheck("c", c, "k")]
    assert [hit_all(checks, cost=1).allowed for _ in range(3)] == [True, True, False]
    assert (a.peek("k").remaining, b.peek("k").remaining, c.peek("k").remaining) == (8, 0, 8)
    with pytest.raises(CapacityError, match="'b'"):
        hit_all(checks, cost=3)
    assert a.peek("k").remaining == 8


def test_ietf_headers_alongside_or_instead(make_policy):
    def both(data):
        data["headers"]["ietf"] = True

    def only_ietf(data):
        data["headers"].update(ietf=True, legacy=False)

    for tweak, legacy_too in [(both, True), (only_ietf, False)]:
        policy = make_policy(tweak=tweak)
        me, ip = starter("k-ietf"), "203.0.113.50"
        for _ in range(5):
            policy.hit("GET", "/files", me, ip)
        h = dict(policy.hit("GET", "/files", me, ip).headers)  # 6 used: 12 s ahead
        assert ("X-RateLimit-Limit" in h) is legacy_too
        assert parse_list(h["RateLimit-Policy"]) == [("api", {"q": 30, "w": 60})]
        assert parse_list(h["RateLimit"]) == [("api", {"r": 24, "t": 2})]
        for _ in range(24):
            policy.hit("GET", "/files", me, ip)
        denied = dict(policy.hit("GET", "/files", me, ip).headers)
        assert parse_list(denied["RateLimit"]) == [("api", {"r": 0, "t": 2})]
        assert denied["Retry-After"] == "2"


# -- shadow mode ------------------------------------------------------------------


def test_shadow_policy_never_blocks_but_logs_and_counts(make_policy, caplog):
    def shadow(data):
        data["policy"]["shadow"] = True

    policy = make_policy(tweak=shadow)
    ip = "192.0.2.77"
    with caplog.at_level(logging.INFO, logger="fastlimit"):
        results = [policy.hit("GET", "/files", Identity.invalid(), ip) for _ in range(7)]
    assert all(r.allowed for r in results)
    assert [r.would_allow for r in results] == [True] * 5 + [False] * 2
    assert all(r.headers == [] for r in results)  # nothing shown to the client
    assert policy.shadow_denials == {"anonymous": 2}
    shadow_lines = [r.getMessage() for r in caplog.records if "shadow" in r.getMessage()]
    assert len(shadow_lines) == 2
    assert "GET /files would be denied by 'anonymous'" in shadow_lines[0]
    assert "('Retry-After', '12')" in shadow_lines[0]


def test_one_shadow_limit_among_enforced_ones(make_policy):
    def shadow_login(data):
        data["routes"]["POST /auth/session/login"] = {"rate": "5/1m", "shadow": True}

    policy = make_policy(tweak=shadow_login)
    ip = "192.0.2.78"
    results = [policy.hit("POST", "/auth/session/login", starter(f"k{i}"), ip) for i in range(7)]
    assert all(r.allowed for r in results)
    assert [r.would_allow for r in results] == [True] * 5 + [False] * 2
    assert policy.shadow_denials["POST /auth/session/login"] == 2
    # the headers describe the enforced limit (each key's tier), not the shadow one
    assert {r.limit for r in results} == {"api"}
    assert legacy(results[-1])["X-RateLimit-Limit"] == "30"


# -- seed 002 ---------------------------------------------------------------------


def test_seed002_headers_match_the_documents_200_example(make_policy, clocks):
    policy = make_policy("seed002.toml")
    clocks.advance(52 * 60 + 12)  # 14:52:12 UTC; 13 requests use 13 x 36 s = 7 min 48 s
    me = Identity.token("tok_live_1")
    for _ in range(13):
        d = policy.hit("POST", "/v1/ocr", me)
    assert legacy(d) == {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "87",
                         "X-RateLimit-Reset": "2026-04-05T15:00:00.000Z"}


def test_seed002_default_100_per_hour_and_the_429(make_policy, clocks):
    policy = make_policy("seed002.toml")
    me = Identity.token("tok_live_2")
    results = [policy.hit("POST", "/v1/ocr", me) for _ in range(101)]
    assert [r.allowed for r in results] == [True] * 100 + [False]
    assert legacy(results[0]) == {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "99",
                                  "X-RateLimit-Reset": "2026-04-05T14:00:36.000Z"}
    # the document's 429: Limit 100, Remaining 0, Reset 15:00:00.000Z.  GCRA refills
    # continuously, so the next request is possible after 36 s, not at 15:00.
    denied = results[-1]
    assert (denied.status, legacy(denied)) == (429, {
        "X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "2026-04-05T15:00:00.000Z", "Retry-After": "36"})
    assert json.loads(denied.body) == DENIED_BODY
    clocks.advance(35.999)
    assert not policy.hit("POST", "/v1/ocr", me).allowed
    clocks.advance(0.001)
    assert policy.hit("POST", "/v1/ocr", me).allowed
    # tokens are independent
    assert legacy(policy.hit("POST", "/v1/ocr", Identity.token("tok_live_3")))[
        "X-RateLimit-Remaining"] == "99"


def test_seed002_override_windows(make_policy):
    policy = make_policy("seed002.toml")
    me = Identity.token("tok_w")
    for window, limit in [("30s", 3), ("15m", 4), ("24h", 5), ("1d", 6)]:
        policy.overrides.set("token", f"tok-{window}", f"{limit}/{window}")
        who = Identity.token(f"tok-{window}")
        results = [policy.hit("GET", "/v1/ocr", who) for _ in range(limit + 1)]
        assert [r.allowed for r in results] == [True] * limit + [False]
        assert legacy(results[0])["X-RateLimit-Limit"] == str(limit)
    assert legacy(policy.hit("GET", "/v1/ocr", me))["X-RateLimit-Limit"] == "100"


def _worker(table_name, overrides_path, conn):
    """A server process: loads seed 002 and answers check requests."""
    policy = Policy.from_file(
        EXAMPLES / "seed002.toml", store=SharedTable.attach(table_name),
        overrides=overrides_path, clock=FakeClock(), wall_clock=FakeClock(WALL0 * S))
    while True:
        command = conn.recv()
        if command is None:
            break
        if command[0] == "set":
            policy.overrides.set("token", command[1], command[2])
            conn.send(None)
            continue
        d = policy.hit("POST", "/v1/ocr", Identity.token(command[1]))
        h = dict(d.headers)
        conn.send((d.allowed, h["X-RateLimit-Limit"], h["X-RateLimit-Remaining"],
                   h.get("Retry-After")))
    conn.close()


def test_token_override_changed_in_one_process_is_enforced_in_others(table_name, tmp_path):
    """Two worker processes share seed 002's limits; the test process plays the
    dashboard.  Every process has its own FakeClock at the same start, so the
    workers' state lines up without sleeping."""
    table = SharedTable.open(table_name, capacity=4096)
    overrides_path = str(tmp_path / "token-limits.json")
    ctx = mp.get_context("fork")
    workers = []
    for _ in range(2):
        parent_end, child_end = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(table_name, overrides_path, child_end))
        p.start()
        workers.append((p, parent_end))
    (_, a), (_, b) = workers

    def ask(conn, *command):
        conn.send(command)
        assert conn.poll(60), "worker did not answer"
        return conn.recv()

    try:
        assert [ask(a, "hit", "tok-1") for _ in range(3)] == [
            (True, "100", "99", None), (True, "100", "98", None), (True, "100", "97", None)]
        # on the workers' kind of clock: a table has one (it never counts here)
        dashboard = Policy.from_file(EXAMPLES / "seed002.toml", store=table,
                                     overrides=overrides_path, clock=FakeClock())
        dashboard.overrides.set("token", "tok-1", "2/1h")
        # 108 s of the hour used; at 2/1h (T = 1800 s) one more fits, then none
        assert ask(b, "hit", "tok-1") == (True, "2", "0", None)
        assert ask(a, "hit", "tok-1") == (False, "2", "0", "108")
        dashboard.overrides.clear("token", "tok-1")
        # back at 100/1h with 1908 s used: 46 left after this one
        assert ask(a, "hit", "tok-1") == (True, "100", "46", None)
        # a worker can set an override too; the other one sees it at once
        assert ask(b, "set", "tok-2", "1/1h") is None
        assert ask(a, "hit", "tok-2") == (True, "1", "0", None)
        assert ask(b, "hit", "tok-2") == (False, "1", "0", "3600")
        assert ask(b, "hit", "tok-3") == (True, "100", "99", None)
        dashboard.close()
    finally:
        for p, conn in workers:
            conn.send(None)
            p.join(timeout=30)
        table.close()
    assert [p.exitcode for p, _ in workers] == [0, 0]
