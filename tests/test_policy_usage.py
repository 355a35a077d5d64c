"""Issue 5 through the policy: the tier table's monthly quotas, concurrent
uploads and size caps (seed 000), over fake monotonic and wall clocks.

Tests on ``make_policy`` run with the policy on a shared table (quotas in a
quota file) and on Redis (rates, quotas and leases all in a real
redis-server on 127.0.0.1, see conftest.py), and must answer alike.
"""

import json
import logging
import os
import pathlib
import uuid
from datetime import datetime, timezone

import pytest
from sfv import parse_list

from fastlimit import (
    ConfigurationError,
    FakeClock,
    Identity,
    Policy,
    Quota,
    RedisBackend,
    SharedTable,
)
from fastlimit.policy.config import tomllib

S = 10**9
EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
MAY_20 = int(datetime(2026, 5, 20, tzinfo=timezone.utc).timestamp())
JUNE_1 = int(datetime(2026, 6, 1, tzinfo=timezone.utc).timestamp())
IP = "198.51.100.7"


class Clocks:
    def __init__(self, wall_s=MAY_20):
        self.mono = FakeClock()
        self.wall = FakeClock(wall_s * S)

    def advance(self, seconds):
        self.mono.advance(seconds)
        self.wall.advance(seconds)


@pytest.fixture
def clocks():
    return Clocks()


def seed000(tweak=None):
    with open(EXAMPLES / "seed000.toml", "rb") as f:
        data = tomllib.load(f)
    if tweak is not None:
        tweak(data)
    return data


def _policies(kind, request, clocks, tmp_path, monkeypatch):
    """seed000 (optionally tweaked) on a private table, quotas under
    tmp_path; or on Redis under a prefix of the test's own."""
    monkeypatch.setenv("FASTLIMIT_STATE_DIR", str(tmp_path / "state"))
    made, backends = [], []

    def make(tweak=None, table=None):
        if table is None and kind == "redis":
            server = request.getfixturevalue("redis_server")
            table = RedisBackend(server.url, prefix=f"p{uuid.uuid4().hex[:10]}", timeout=10,
                                 connect_timeout=10)
            backends.append(table)
        table = table or SharedTable.anonymous(4096)
        policy = Policy.from_dict(seed000(tweak), store=table, clock=clocks.mono,
                                  wall_clock=clocks.wall,
                                  overrides=tmp_path / f"ov-{len(made)}.json")
        made.append(policy)
        return policy

    yield make
    for policy in made:
        policy.close()
        policy.overrides.close()
    for backend in backends:
        assert backend.stats().errors == 0
        backend.close()


@pytest.fixture(params=["table", "redis"])
def make_policy(request, clocks, tmp_path, monkeypatch):
    """Makes policies on a table, or on Redis: tests using it run on both."""
    yield from _policies(request.param, request, clocks, tmp_path, monkeypatch)


@pytest.fixture
def make_table_policy(request, clocks, tmp_path, monkeypatch):
    """Makes policies on a table (quota files are the table's business)."""
    yield from _policies("table", request, clocks, tmp_path, monkeypatch)


def starter(account="acct_1"):
    return Identity.api_key(f"key-{account}", "STARTER", account=account)


def small_quota(data):
    data["tiers"]["STARTER"]["quotas"]["ai_descriptions"] = "3/month"


def test_seed000_tiers_carry_quotas_concurrency_and_caps(make_policy):
    policy = make_policy()
    r = policy.resolve("POST", "/images/analyze", starter(), IP)
    assert [(c.name, c.key) for c in r.checks] == [("api", "acct_1"), ("ai_descriptions", "acct_1")]
    assert r.checks[1].limiter.limit == 500
    assert r.caps == (("image_file_bytes", 100 * 10**6),)
    upload = policy.resolve("POST", "/files/uploads/u1/parts/2", starter(), IP)
    assert [(name, key, n) for name, _, key, n in upload.leases] == [("uploads", "acct_1", 20)]
    assert [c.name for c in upload.checks] == ["batch-upload"], "dedicated: no tier budget"
    pro = Identity.api_key("k2", "PROFESSIONAL", account="acct_2")
    batch = policy.resolve("POST", "/files/upload/batch", pro, IP)
    assert dict(batch.caps) == {"batch_files": 100, "batch_payload_bytes": 2 * 10**9}
    custom = policy.resolve("POST", "/images/analyze", Identity.api_key("k3", "CUSTOM"), IP)
    assert [c.name for c in custom.checks] == [] and custom.caps == (("image_file_bytes",
                                                                         100 * 10**6),)
    anon = policy.resolve("POST", "/images/analyze", None, IP)
    assert [c.name for c in anon.checks] == ["anonymous"], "no tier: no allowance"


def test_quota_runs_out_with_its_own_code_and_headers(make_policy, clocks):
    policy = make_policy(small_quota)
    for _ in range(3):
        d = policy.hit("POST", "/images/analyze", starter(), IP)
        assert d.allowed
    assert dict(d.headers)["X-RateLimit-Remaining"] == "0"  # the quota binds: 0 left of 3
    assert dict(d.headers)["X-RateLimit-Limit"] == "3"
    denied = policy.hit("POST", "/images/analyze", starter(), IP)
    assert (denied.allowed, denied.kind, denied.status) == (False, "quota", 429)
    assert json.loads(denied.body) == {"success": False, "error": {
        "code": "QUOTA_EXCEEDED", "message": "Quota exceeded: ai_descriptions"}}
    h = dict(denied.headers)
    assert h["Retry-After"] == str(JUNE_1 - MAY_20) == str(denied.retry_after)
    assert h["X-RateLimit-Reset"] == str(JUNE_1)
    assert policy.hit("GET", "/files", starter(), IP).allowed, "other routes are unaffected"
    clocks.wall.set(JUNE_1 * S)
    assert policy.hit("POST", "/images/analyze", starter(), IP).allowed, "a new month"


def test_quota_ietf_fields_use_the_month_as_window(make_policy):
    def tweak(data):
        small_quota(data)
        data["headers"]["ietf"] = True
    policy = make_policy(tweak)
    for _ in range(3):
        policy.hit("POST", "/images/analyze", starter(), IP)
    h = dict(policy.hit("POST", "/images/analyze", starter(), IP).headers)
    # every policy that applies is listed, whichever binds; the quota's window is May
    (_, item) = parse_list(h["RateLimit-Policy"])
    assert item == ("ai_descriptions", {"q": 3, "w": 31 * 86400})  # May has 31 days
    (state,) = parse_list(h["RateLimit"])
    assert state == ("ai_descriptions", {"r": 0, "t": JUNE_1 - MAY_20})


def test_denials_consume_nothing_across_rates_and_quotas(make_policy, clocks):
    policy = make_policy(small_quota)
    api = Identity.api_key("k", "STARTER", account="acct_1")
    quota = policy.resolve("POST", "/images/analyze", api, IP).checks[1].limiter
    for _ in range(3):
        assert policy.hit("POST", "/images/analyze", api, IP).allowed
    rate = policy.resolve("GET", "/x", api, IP).checks[0].limiter
    before = rate.peek("acct_1").remaining
    assert policy.hit("POST", "/images/analyze", api, IP).kind == "quota"
    assert rate.peek("acct_1").remaining == before, "the quota's denial left the rate whole"
    clocks.wall.set(JUNE_1 * S)
    for _ in range(before):
        policy.hit("GET", "/x", api, IP)
    assert policy.hit("POST", "/images/analyze", api, IP).kind == "rate"
    assert quota.usage("acct_1").used == 0, "the rate's denial spent none of the quota"


def test_concurrent_uploads_are_capped_and_released(make_policy):
    def tweak(data):
        data["tiers"]["STARTER"]["concurrency"]["uploads"] = 2
    policy = make_policy(tweak)
    a = policy.hit("POST", "/files/upload", starter(), IP)
    b = policy.hit("POST", "/files/uploads/u9/complete", starter(), IP)
    assert a.allowed and b.allowed
    assert policy.hit("POST", "/files/upload", starter("acct_2"), IP).allowed, "per account"
    full = policy.hit("POST", "/files/upload", starter(), IP)
    assert (full.allowed, full.kind, full.status, full.retry_after) == (False, "concurrency",
                                                                        429, 5)
    assert dict(full.headers)["Retry-After"] == "5"
    assert json.loads(full.body)["error"]["code"] == "CONCURRENCY_LIMITED"
    a.release()
    a.release()
    c = policy.hit("POST", "/files/upload", starter(), IP)
    assert c.allowed
    for d in (b, c):
        d.release()
    limit = policy.resolve("POST", "/files/upload", starter(), IP).leases[0][1]
    assert limit.in_flight("acct_1", limit=2) == 0


def test_a_rate_denial_gives_the_lease_back(make_policy):
    def tweak(data):
        data["routes"]["batch-upload"]["rate"] = "1/1h"
    policy = make_policy(tweak)
    assert policy.hit("POST", "/files/upload", starter(), IP).allowed  # still held
    denied = policy.hit("POST", "/files/upload", starter(), IP)
    assert denied.kind == "rate"
    limit = policy.resolve("POST", "/files/upload", starter(), IP).leases[0][1]
    assert limit.in_flight("acct_1", limit=20) == 1, "only the first request holds one"


def test_caps_answer_413_and_count_nothing(make_policy):
    policy = make_policy()
    too_many = policy.hit("POST", "/files/upload/batch", starter(), IP, files=51)
    assert (too_many.allowed, too_many.kind, too_many.status) == (False, "too_large", 413)
    assert json.loads(too_many.body) == {"success": False, "error": {
        "code": "PAYLOAD_TOO_LARGE", "message": "Request exceeds the cap: batch_files"}}
    assert too_many.headers == [] and too_many.retry_after is None
    too_big = policy.hit("POST", "/files/upload/batch", starter(), IP, files=50,
                         content_length=2 * 10**9 + 1)
    assert too_big.kind == "too_large" and b"batch_payload_bytes" in too_big.body
    ok = policy.hit("POST", "/files/upload/batch", starter(), IP, files=50,
                    content_length=2 * 10**9)
    assert ok.allowed
    assert dict(ok.headers)["X-RateLimit-Remaining"] == "499", "the 413s counted nothing"
    ok.release()
    custom = Identity.api_key("k", "CUSTOM", account="big")
    assert policy.hit("POST", "/files/upload/batch", custom, IP, files=10_000).allowed


def test_quotas_persist_in_the_quota_file(make_table_policy, tmp_path):
    path = tmp_path / "q" / "quotas.tbl"

    def tweak(data):
        small_quota(data)
        data["store"]["quotas"] = str(path)
    first = make_table_policy(tweak)
    assert first.hit("POST", "/images/analyze", starter(), IP).allowed
    first.close()
    again = make_table_policy(tweak)
    quota = again.resolve("POST", "/images/analyze", starter(), IP).checks[1].limiter
    assert quota.store.path == str(path) and quota.usage("acct_1").used == 1


def test_default_quota_file_is_named_after_the_table_and_the_policy(make_table_policy,
                                                                   table_name, tmp_path):
    table = SharedTable.open(table_name, capacity=4096)
    policy = make_table_policy(table=table)
    quota = policy.resolve("POST", "/images/analyze", starter(), IP).checks[1].limiter
    # one file per (table, policy): another table's policy of the same name
    # counts apart
    assert quota.store.path == str(tmp_path / "state" / f"fastlimit.{table_name}.scopix.quotas.tbl")
    other = make_table_policy(table=SharedTable.anonymous(4096))
    assert other.resolve("POST", "/images/analyze", starter(), IP).checks[1].limiter.store.path \
        is None  # a table of the process's own: its quotas count in memory beside it
    table.close()


def test_a_quota_file_of_before_0_2_is_kept_with_a_warning(make_table_policy, table_name,
                                                           tmp_path, caplog):
    legacy = tmp_path / "state" / "scopix-quotas.tbl"
    legacy.parent.mkdir(exist_ok=True)
    SharedTable.open(path=str(legacy), capacity=1024, kind="quotas").close()
    table = SharedTable.open(table_name, capacity=4096)
    with caplog.at_level(logging.WARNING, logger="fastlimit"):
        policy = make_table_policy(table=table)
    quota = policy.resolve("POST", "/images/analyze", starter(), IP).checks[1].limiter
    assert quota.store.path == str(legacy), "this month's counts are not lost on upgrade"
    assert any("written before 0.2" in r.getMessage() for r in caplog.records)
    table.close()


def test_an_unwritable_quota_directory_fails_at_start_up(make_table_policy, table_name,
                                                         tmp_path, monkeypatch):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the state directory should be")
    monkeypatch.setenv("FASTLIMIT_STATE_DIR", str(blocked / "state"))
    table = SharedTable.open(table_name, capacity=4096)
    with pytest.raises(ConfigurationError, match=r"the quota file .*cannot open .*blocked/state"):
        make_table_policy(table=table)
    table.close()


def test_custom_denial_responses(make_policy):
    def tweak(data):
        small_quota(data)
        data["response"]["quota"] = {"status": 402, "body": {"error": "pay for {limit}"}}
    policy = make_policy(tweak)
    for _ in range(3):
        policy.hit("POST", "/images/analyze", starter(), IP)
    denied = policy.hit("POST", "/images/analyze", starter(), IP)
    assert (denied.status, denied.body) == (402, b'{"error":"pay for ai_descriptions"}')


@pytest.mark.parametrize(
    "section, key_path, expected",
    [
        ({"quotas": {"ai": {"match": "POST /x"}}}, "quotas.ai",
         "the name of an allowance some tier's quotas defines (ai_descriptions, chat_messages)"),
        ({"concurrency": {"uploads": {"match": "POST /x", "retry_after": 0}}},
         "concurrency.uploads.retry_after", "a positive integer"),
        ({"caps": {"batch_files": "upload files"}}, "caps.batch_files", "'METHOD /path'"),
        ({"quotas": {"chat_messages": {"match": "POST /x", "tz": "Nowhere"}}},
         "quotas.chat_messages.tz", "an IANA time zone"),
        ({"response": {"quota": {"status": 200}}}, "response.quota.status",
         "an HTTP status from 400 to 599"),
    ],
)
def test_bad_usage_sections(make_table_policy, section, key_path, expected):
    def tweak(data):
        for k, v in section.items():
            data.setdefault(k, {}).update(v)
    with pytest.raises(ConfigurationError) as e:
        make_table_policy(tweak)
    assert f": {key_path}: expected {expected}" in str(e.value)


# -- only on Redis: one policy, many hosts ------------------------------------------


def test_a_policy_on_redis_is_shared_by_every_host(redis_server, clocks, tmp_path, monkeypatch):
    # two hosts: two Policy objects, each with its own backend (connection),
    # the same Redis and prefix; nothing of the policy's state is local
    monkeypatch.setenv("FASTLIMIT_STATE_DIR", str(tmp_path / "state"))
    prefix = f"p{uuid.uuid4().hex[:10]}"

    def tweak(data):
        small_quota(data)
        data["tiers"]["STARTER"]["concurrency"]["uploads"] = 2
        data["routes"]["batch-upload"]["rate"] = "3/1h"
    hosts = [Policy.from_dict(seed000(tweak), clock=clocks.mono, wall_clock=clocks.wall,
                              store=RedisBackend(redis_server.url, prefix=prefix))
             for _ in range(2)]
    a, b = hosts
    # the quota: 3 a month, whichever host serves
    assert a.hit("POST", "/images/analyze", starter(), IP).allowed
    assert b.hit("POST", "/images/analyze", starter(), IP).allowed
    assert a.hit("POST", "/images/analyze", starter(), IP).allowed
    assert b.hit("POST", "/images/analyze", starter(), IP).kind == "quota"
    quota = b.resolve("POST", "/images/analyze", starter(), IP).checks[1].limiter
    assert isinstance(quota, Quota) and quota.store is b.store
    assert quota.usage("acct_1").used == 3
    assert not os.path.exists(tmp_path / "state"), "no quota file: the counts are in Redis"
    # concurrent uploads: 2 in flight, across hosts
    first = a.hit("POST", "/files/upload", starter(), IP)
    second = b.hit("POST", "/files/upload", starter(), IP)
    assert first.allowed and second.allowed
    assert a.hit("POST", "/files/upload", starter(), IP).kind == "concurrency"
    second.release()
    third = a.hit("POST", "/files/upload", starter(), IP)
    assert third.allowed, "a lease released on one host frees a place on the other"
    # the upload route's rate (3/1h per IP) counted all three, across hosts
    assert b.hit("POST", "/files/upload", starter("acct_2"), IP).kind == "rate"
    for d in (first, third):
        d.release()
    for p in hosts:
        assert p.store.stats().errors == 0
        p.close()
        p.store.close()


def test_a_full_quota_file_answers_503_limiter_full_never_quota_exceeded(
        make_table_policy, tmp_path, caplog):
    def tweak(data):
        data["store"]["quotas"] = str(tmp_path / "q.tbl")
        data["store"]["quota_capacity"] = 64
    policy = make_table_policy(tweak)
    quota = policy.resolve("POST", "/images/analyze", starter(), IP).checks[1].limiter
    assert quota.store.capacity == 64, "the quota file's own capacity, not the table's"
    statuses = []
    with caplog.at_level(logging.ERROR, logger="fastlimit"):
        for i in range(400):  # far more accounts than the file holds
            d = policy.hit("POST", "/images/analyze", starter(f"acct_{i}"), IP)
            statuses.append((d.status, json.loads(d.body)["error"]["code"]) if not d.allowed
                            else 200)
    full = [s for s in statuses if s != 200]
    assert full and set(full) == {(503, "LIMITER_FULL")}, "a new account used nothing"
    assert statuses[:64].count(200) == 64
    denied = policy.hit("POST", "/images/analyze", starter("acct_999"), IP)
    assert denied.retry_after == 60 and denied.headers == [("Retry-After", "60")]
    assert policy.hit("POST", "/images/analyze", starter("acct_0"), IP).allowed, \
        "an account already counted goes on"
    logged = [r for r in caplog.records if "LIMITER_FULL" in r.getMessage()]
    assert len(logged) == 1


def test_quota_capacity_defaults_to_its_own_size(make_table_policy, tmp_path):
    def tweak(data):
        data["store"]["quotas"] = str(tmp_path / "q.tbl")
    policy = make_table_policy(tweak)
    quota = policy.resolve("POST", "/images/analyze", starter(), IP).checks[1].limiter
    assert quota.store.capacity == 262_144
