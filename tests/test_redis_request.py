"""A policy on Redis counts each request in one script call (issue 17,
item 4), with the decisions of the same policy on a shared table.

The same random requests go to two policies, one on a SharedTable and one
on a RedisBackend, on one fake clock: every decision (verdict, kind, the
limit that binds, headers, Retry-After, each limit's answer) must be the
same, and the Redis backend must have made one call per request plus one
per release of a request that held a lease.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

import fastlimit
from fastlimit import FakeClock, Identity, Policy, RedisBackend, SharedTable

POLICY = {
    "policy": {"name": "req"},
    "identities": {
        "api_key": {"name": "api", "rate": "tier"},
        "session": {"rate": "6/1m"},
        "anonymous": {"rate": "3/1m"},
    },
    "tiers": {
        "STARTER": {"requests_per_minute": 8, "concurrency": {"uploads": 2},
                    "quotas": {"ai": "5/month"}},
        "PRO": {"requests_per_minute": 20, "concurrency": {"uploads": 3},
                "quotas": {"ai": "9/month"}},
    },
    "quotas": {"ai": {"match": "POST /ai/**"}},
    "concurrency": {"uploads": {"match": "POST /upload"}},
    "routes": {
        "login": {"match": "POST /login", "rate": "2/1m", "per": "ip"},
        "search": {"match": "GET /search", "rate": "4/1m"},
        "dry": {"match": "GET /search", "rate": "1/1m", "shadow": True},
    },
}

REQUESTS = [("GET", "/"), ("GET", "/search"), ("POST", "/login"), ("POST", "/upload"),
            ("POST", "/ai/describe"), ("POST", "/ai/chat")]
CALLERS = [None, Identity("session", "s1"), Identity("session", "s2"),
           Identity("api_key", "k1", "STARTER"), Identity("api_key", "k2", "PRO")]


def _policy(store, clock):
    return Policy.from_dict(POLICY, store=store, clock=clock, wall_clock=clock)


def _seen(d):
    """What a client and the application see of a decision."""
    return (d.allowed, d.kind, d.limit, d.headers, d.retry_after, d.status,
            [None if r is None else (r.allowed, r.limit, r.remaining, r.reset_after_ns,
                                     r.retry_after_ns) for r in d.result.decisions])


@pytest.fixture
def backend(redis_server):
    made = RedisBackend(redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}", timeout=10,
                        connect_timeout=10)
    yield made
    made.close()


def _run_both(backend, seed, n, clock, on_table, on_redis):
    rng = random.Random(seed)
    held = []
    for _ in range(n):
        method, path = rng.choice(REQUESTS)
        who = rng.choice(CALLERS)
        ip = rng.choice(["203.0.113.1", "203.0.113.2", "2001:db8::1"])
        cost = rng.choice([1, 1, 1, 2, 0])
        calls = backend.stats().calls
        a = on_table.hit(method, path, who, ip, cost=cost)
        b = on_redis.hit(method, path, who, ip, cost=cost)
        assert _seen(a) == _seen(b), (method, path, who, ip, cost)
        assert backend.stats().calls - calls <= 1  # the whole request: one call at most
        if a.holding:
            held.append((a, b))
        if held and rng.random() < 0.4:
            a, b = held.pop(rng.randrange(len(held)))
            calls = backend.stats().calls
            a.release()
            b.release()
            assert backend.stats().calls - calls == 1  # the release: one call
        clock.advance(rng.choice([0, 0, 0.5, 3, 20]))
    for a, b in held:
        a.release()
        b.release()


@pytest.mark.parametrize("seed", range(4))
def test_a_policy_on_redis_decides_as_on_a_table_in_one_call_per_request(backend, seed):
    clock = FakeClock(1_760_000_000 * 10**9)
    table = SharedTable.anonymous(capacity=4096)
    try:
        on_table, on_redis = _policy(table, clock), _policy(backend, clock)
        _run_both(backend, seed, 400, clock, on_table, on_redis)
        on_table.close()
        on_redis.close()
    finally:
        table.close()
    stats = backend.stats()
    assert stats.errors == 0 and stats.failed_open == 0 and stats.failed_local == 0


def test_a_denied_request_leaves_nothing_counted(backend):
    """All or nothing: a request the quota denies takes no lease and no rate."""
    clock = FakeClock(1_760_000_000 * 10**9)
    policy = _policy(backend, clock)
    k1 = Identity("api_key", "k1", "STARTER")
    for _ in range(5):
        assert policy.hit("POST", "/ai/chat", k1, "203.0.113.1").allowed
    d = policy.hit("POST", "/ai/chat", k1, "203.0.113.1")
    assert (d.allowed, d.kind, d.limit) == (False, "quota", "ai")
    # the tier's 8/min counted the 5 that passed, not the denied one
    assert policy.peek("GET", "/", k1, "203.0.113.1").decision.remaining == 3
    held = [policy.hit("POST", "/upload", k1, "203.0.113.1") for _ in range(3)]
    assert [d.allowed for d in held] == [True, True, False]
    assert held[2].kind == "concurrency"
    # two leases in Redis, and the denial counted no rate
    assert policy.peek("GET", "/", k1, "203.0.113.1").decision.remaining == 1
    for d in held:
        d.release()
    assert policy.hit("POST", "/upload", k1, "203.0.113.1").allowed
    policy.close()


def test_on_failure_each_limit_answers_by_its_policy_without_more_calls(own_redis_server):
    clock = FakeClock(1_760_000_000 * 10**9)
    backend = RedisBackend(own_redis_server.url, prefix="fail", timeout=1, connect_timeout=1)
    policy = _policy(backend, clock)
    s1 = Identity("session", "s1")
    assert policy.hit("GET", "/search", s1, "203.0.113.1").allowed
    own_redis_server.stop()
    # fail="local" (the default): the local table answers, exactly, all or none
    answers = [policy.hit("GET", "/search", s1, "203.0.113.1").allowed for _ in range(6)]
    assert answers == [True] * 4 + [False] * 2  # search's 4/min, counted locally from zero
    stats = backend.stats()
    # one attempt failed; the node was then skipped, never asked once per limit
    assert stats.errors == 1
    assert stats.failed_local >= 6
    policy.close()
    backend.close()


def test_an_async_policy_decides_as_a_sync_one(redis_server):
    """A Policy on an AsyncRedisBackend, awaited: the decisions of the same
    policy on a shared table, one call per request, leases given back with
    ``await decision.release()``."""
    clock = FakeClock(1_760_000_000 * 10**9)
    table = SharedTable.anonymous(capacity=4096)

    async def main():
        backend = fastlimit.AsyncRedisBackend(redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}")
        policy, local = _policy(backend, clock), _policy(table, clock)
        assert policy.asynchronous and not local.asynchronous
        with pytest.raises(fastlimit.ConfigurationError, match=r"await policy\.ahit"):
            policy.hit("GET", "/", None, "203.0.113.9")
        rng = random.Random(7)
        held = []
        for _ in range(300):
            method, path = rng.choice(REQUESTS)
            who = rng.choice(CALLERS)
            calls = backend.stats().calls
            d = await policy.ahit(method, path, who, "203.0.113.9")
            assert backend.stats().calls - calls <= 1
            here = local.hit(method, path, who, "203.0.113.9")
            assert _seen(d) == _seen(here)
            if d.holding:
                held.append((d, here))
            if held and rng.random() < 0.4:
                d, here = held.pop(rng.randrange(len(held)))
                await d.release()
                here.release()
            clock.advance(rng.choice([0, 1, 10]))
        for d, here in held:
            await d.release()
            here.release()
        policy.close()
        local.close()
        await backend.aclose()
        assert backend.stats().errors == 0

    try:
        asyncio.run(main())
    finally:
        table.close()


def test_on_a_cluster_a_callers_request_is_one_call_and_a_mixed_one_decides_alike(
        redis_cluster3):
    """On a 3-primary cluster all state of one key shares its hash slot, so
    a request whose limits all count the caller is one script call.  One
    that counts the caller's key and per-IP keys (two slots: the route
    limits here are per IP) is counted limit by limit, with the same
    decisions; a hash_tag that co-locates the policy's keys makes it one
    call again (all of them then live on one primary)."""
    clock = FakeClock(1_760_000_000 * 10**9)
    table = SharedTable.anonymous(capacity=4096)
    s1 = Identity("session", "s1")
    for hash_tag, calls_of in ((None, {"/": 1, "/search": 3}),
                               (lambda name, key: "req", {"/": 1, "/search": 1})):
        backend = RedisBackend(redis_cluster3.url, prefix=f"t{uuid.uuid4().hex[:10]}",
                               timeout=10, connect_timeout=10, hash_tag=hash_tag)
        on_redis, on_table = _policy(backend, clock), _policy(table, clock)
        backend.ping()
        for path, calls_each in calls_of.items():
            for _ in range(6):
                a = on_table.hit("GET", path, s1, "203.0.113.1")
                calls = backend.stats().calls
                b = on_redis.hit("GET", path, s1, "203.0.113.1")
                assert _seen(a) == _seen(b)
                assert backend.stats().calls - calls == calls_each, (hash_tag, path)
        assert backend.stats().errors == 0
        on_redis.close()
        on_table.close()
        table.clear()
        backend.close()
    table.close()


def test_a_denial_the_deny_cache_holds_asks_redis_nothing(redis_server):
    clock = FakeClock(1_760_000_000 * 10**9)
    deny = SharedTable.anonymous(capacity=1024)
    backend = RedisBackend(redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}",
                           deny_cache=deny)
    policy = _policy(backend, clock)
    s1 = Identity("session", "s1")
    answers = [policy.hit("GET", "/search", s1, "203.0.113.1") for _ in range(6)]
    assert [d.allowed for d in answers] == [True] * 4 + [False] * 2
    stats = backend.stats()
    # the 4th used the last of the burst: its state says the next would be
    # denied, and the cache answers the 5th and 6th with no call
    assert (stats.calls, stats.cache_hits) == (4, 2)
    assert (answers[5].kind, answers[5].limit) == ("rate", "search")
    assert answers[5].retry_after == answers[4].retry_after
    policy.close()
    backend.close()
    deny.close()


def test_a_request_sent_again_after_a_timeout_keeps_its_own_lease(backend, monkeypatch):
    """A call that timed out may have run; sent again (the same token), it
    finds its own lease: held once, not refused as a full key."""
    from fastlimit.stores.redis import request as request_mod

    clock = FakeClock(1_760_000_000 * 10**9)
    policy = _policy(backend, clock)
    k1 = Identity("api_key", "k1", "STARTER")  # 2 uploads at once
    monkeypatch.setattr(request_mod.secrets, "randbits", lambda bits: 12345)
    first = policy.hit("POST", "/upload", k1, "203.0.113.1")
    again = policy.hit("POST", "/upload", k1, "203.0.113.1")  # the same call once more
    assert first.allowed and again.allowed
    uploads = policy._concurrency["uploads"]
    assert uploads.in_flight("k1", limit=2) == 1
    monkeypatch.undo()
    assert policy.hit("POST", "/upload", k1, "203.0.113.1").allowed  # the second lease
    assert not policy.hit("POST", "/upload", k1, "203.0.113.1").allowed
    policy.close()


def test_the_deny_cache_works_on_the_real_clock(redis_server):
    """The deny cache with no injected clock: its table runs on
    CLOCK_MONOTONIC, and a denial Redis implied is answered from it."""
    deny = SharedTable.anonymous(capacity=1024)
    backend = RedisBackend(redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}",
                           deny_cache=deny)
    limiter = fastlimit.Limiter("3/1h", store=backend, name="x")
    assert [limiter.allow("k") for _ in range(6)] == [True] * 3 + [False] * 3
    assert (backend.stats().calls, backend.stats().cache_hits) == (3, 3)
    assert deny.clock == "monotonic"
    backend.close()
    deny.close()
