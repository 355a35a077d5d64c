"""The Redis backend against a real redis-server on 127.0.0.1 (conftest.py).

Tests on the ``store`` fixture run on the shared table, on Redis and on Redis
with a local deny cache, and must get the same Decisions from all three.
The rest covers what only Redis has: key names and expiry, exactness across
processes, the failure policy with the server stopped, the deny cache, the
composite check and the asyncio front end.
"""

import asyncio
import logging
import multiprocessing as mp
import pickle
import signal
import subprocess
import sys
import threading
import uuid

import pytest
from traces import numbers

from fastlimit import (
    BackendError,
    CapacityError,
    ConcurrencyLimit,
    ConfigurationError,
    Decision,
    FakeClock,
    Limiter,
    Quota,
    Rate,
    RedisBackend,
    SharedTable,
)
from fastlimit.stores.redis import AsyncRedisBackend

S = 10**9
FAST = dict(timeout=10, connect_timeout=10)  # no spurious timeouts on a loaded machine
MAY_20_2024 = 1716163200 * S
JUNE_1_2024 = 1717200000 * S


def backend_for(server, **kw):
    kw = {**FAST, "prefix": f"t{uuid.uuid4().hex[:10]}", **kw}
    return RedisBackend(server.url, **kw)


# -- Redis keys: names, values, expiry -------------------------------------------


def test_keys_hold_the_tat_and_expire_when_replenished(redis_server, clock):
    b = backend_for(redis_server, prefix="fl")
    lim = Limiter(Rate(3, 10 * S + 1), store=b, name="exp", clock=clock)  # T = 3333333334 ns
    r = redis_server.client()
    d = lim.hit("user:42", cost=2)
    key = b.redis_key("exp", "user:42")
    assert key == b"fl:exp:{user:42}"
    assert int(r.get(key)) == clock() + d.reset_after_ns == clock() + 2 * 3333333334
    ms = -(-d.reset_after_ns // 10**6)  # 6667 ms
    assert ms - 500 < r.pttl(key) <= ms
    clock.advance(1)
    assert lim.refund("user:42")
    d = lim.peek("user:42")
    ms = -(-d.reset_after_ns // 10**6)
    assert ms - 500 < r.pttl(key) <= ms, "refund keeps the expiry at the new tat"
    assert lim.refund("user:42")
    assert r.exists(key) == 0, "a refund down to fresh drops the key"
    lim.allow(-1)
    assert r.exists(b.redis_key("exp", 2**64 - 1))
    assert b.redis_key("exp", -1) == b"fl:exp:#{18446744073709551615}"
    lim.reset(-1)
    assert not r.exists(b.redis_key("exp", -1))
    assert not lim.peek("user:42").reset_after_ns and not r.exists(key), "peek writes nothing"


def test_server_time_is_used_without_a_clock(redis_server):
    b = backend_for(redis_server)
    lim = Limiter("10/1h", store=b, name="time")  # T = 360 s
    d = lim.hit("k")
    assert d.allowed and d.remaining == 9 and d.reset_after_ns == 360 * S
    r = redis_server.client()
    sec, usec = r.time()
    tat = int(r.get(b.redis_key("time", "k")))
    assert 0 < tat - (sec * S + usec * 1000) <= 360 * S, "tat counts from the server's epoch time"
    for _ in range(9):
        lim.hit("k")
    d = lim.hit("k")
    assert not d.allowed and 359 * S < d.retry_after_ns <= 360 * S


def test_hash_tags_put_one_keys_limits_in_one_slot(redis_server):
    from redis.crc import key_slot

    b = backend_for(redis_server)
    assert key_slot(b.redis_key("api", "u42")) == key_slot(b.redis_key("login", "u42"))
    tagged = backend_for(redis_server, prefix="p", hash_tag=lambda name, key: "tenant-7")
    assert tagged.redis_key("api", "u1") == b"p:api:{tenant-7}:u1"
    assert tagged.redis_key("api", 5) == b"p:api:{tenant-7}#5"
    assert key_slot(tagged.redis_key("api", "u1")) == key_slot(tagged.redis_key("ip", "1.2.3.4"))
    lim = Limiter("1/1h", store=tagged, name="api")
    assert lim.allow("u1") and not lim.allow("u1") and lim.allow(b"u2")
    bad = backend_for(redis_server, hash_tag=lambda name, key: "a}b")
    with pytest.raises(ConfigurationError, match="hash_tag returned"):
        Limiter("1/1h", store=bad).allow("k")


def test_configuration_errors(redis_server):
    with pytest.raises(ConfigurationError, match="fail must be one of"):
        RedisBackend(redis_server.url, fail="maybe")
    with pytest.raises(ConfigurationError, match="must not contain"):
        RedisBackend(redis_server.url, prefix="a{b")
    with pytest.raises(ConfigurationError, match="must not contain"):
        Limiter("1/1s", store=backend_for(redis_server), name="x}")
    with pytest.raises(ConfigurationError, match="deny_cache must be a SharedTable"):
        RedisBackend(redis_server.url, deny_cache="yes")
    with pytest.raises(ConfigurationError, match="timeout must be"):
        RedisBackend(redis_server.url, timeout=0)
    with pytest.raises(ConfigurationError, match="redis options go with a URL"):
        RedisBackend(redis_server.client(), db=1)
    with pytest.raises(ConfigurationError, match="takes a URL or a redis.Redis client"):
        RedisBackend(42)
    with pytest.raises(ConfigurationError, match="on_full must be one of"):
        Limiter("1/1s", store=backend_for(redis_server), on_full="maybe")
    with pytest.raises(ConfigurationError, match="use backend.limiter"):
        Limiter("1/1s", store=AsyncRedisBackend(redis_server.url))


def test_a_client_can_be_passed_and_backends_pickle(redis_server, clock):
    client = redis_server.client(decode_responses=True)
    b = RedisBackend(client, prefix=f"c{uuid.uuid4().hex[:8]}")
    assert b.client is client
    lim = Limiter("2/1h", store=b, clock=clock)
    assert lim.hit("k") == Decision(True, 2, 1, 1800 * S, 0)
    assert lim.refund("k") and lim.allow("k", 2) and not lim.allow("k")
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(b)
    by_url = backend_for(redis_server)
    lim = Limiter("2/1h", store=by_url, name="p", clock=clock)
    copy = pickle.loads(pickle.dumps(lim))
    assert lim.allow("k") and copy.allow("k") and not lim.allow("k")
    assert copy.store is not by_url and copy.store.prefix == by_url.prefix


def test_importing_fastlimit_does_not_import_redis():
    code = ("import sys, fastlimit; assert 'redis' not in sys.modules; "
            "fastlimit.RedisBackend; assert 'redis' in sys.modules; "
            "assert 'RedisBackend' in dir(fastlimit)")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- exactness across processes and threads ----------------------------------------


def _hammer(url, prefix, barrier, tries, q):
    lim = Limiter("200/1d", store=RedisBackend(url, prefix=prefix, **FAST), name="mp")
    barrier.wait()
    admitted = sum(lim.allow("hot") for _ in range(tries))
    q.put((admitted, lim.store.stats().errors))


@pytest.mark.slow
def test_four_processes_admit_exactly_the_limit(redis_server):
    ctx = mp.get_context("fork")
    barrier, q = ctx.Barrier(4), ctx.Queue()
    prefix = f"mp{uuid.uuid4().hex[:8]}"
    procs = [ctx.Process(target=_hammer, args=(redis_server.url, prefix, barrier, 150, q))
             for _ in range(4)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sum(n for n, _ in results) == 200, results
    assert all(errors == 0 for _, errors in results)
    assert all(p.exitcode == 0 for p in procs)


def test_threads_sharing_one_backend_admit_exactly_the_limit(redis_server):
    lim = Limiter("100/1d", store=backend_for(redis_server), name="threads")
    counts = []

    def work():
        counts.append(sum(lim.allow("hot") for _ in range(50)))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 100
    assert lim.store.stats().errors == 0


# -- failure policy ------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
@pytest.mark.parametrize("fail", ["open", "closed", "raise"])
def test_failure_policy_with_the_server_stopped(own_redis_server, clock, caplog, fail, sig):
    b = RedisBackend(own_redis_server.url, fail=fail, retry_interval=0, timeout=2,
                     connect_timeout=2)
    lim = Limiter("5/10s", store=b, name="f", clock=clock)
    assert lim.hit("k") == Decision(True, 5, 4, 2 * S, 0)
    own_redis_server.stop(sig)
    with caplog.at_level(logging.WARNING, logger="fastlimit"):
        if fail == "raise":
            for call in (lim.hit, lim.allow, lim.peek, lim.refund, lim.reset):
                with pytest.raises(BackendError, match="Redis at redis://127.0.0.1"):
                    call("k")
            with pytest.raises(BackendError):
                lim.hit_many(["k"])
            assert b.stats().raised == b.stats().errors == 6
        else:
            # as the shared table answers when it cannot hold a key: open is a
            # first hit's Decision, closed a denial for one hit
            want = (Decision(True, 5, 4, 2 * S, 0) if fail == "open"
                    else Decision(False, 5, 0, 0, 2 * S))
            for _ in range(20):
                assert lim.hit("k") == want
            assert lim.allow("k") is (fail == "open")
            assert lim.hit_many(["a", "b"]).tolist() == [fail == "open"] * 2
            assert not lim.refund("k")
            lim.reset("k")  # nothing to answer: only counted as errors
            stats = b.stats()
            assert (stats.failed_open, stats.failed_closed) == (
                (23, 0) if fail == "open" else (0, 23))
            assert stats.errors == 24
    stats = b.stats()
    assert stats.down and "ConnectionError" in stats.last_error
    warnings = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(warnings) == 1, "one warning per log_interval, not one per request"
    own_redis_server.start()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastlimit"):
        assert lim.hit("k") == Decision(True, 5, 4, 2 * S, 0), "a new, empty server"
    assert "answers again" in caplog.text
    assert not b.stats().down and b.stats().calls == 2


@pytest.mark.parametrize("fail", ["open", "closed", "raise"])
def test_quota_and_lease_failure_policy_with_the_server_stopped(own_redis_server, caplog, fail):
    b = RedisBackend(own_redis_server.url, fail=fail, retry_interval=0, timeout=2,
                     connect_timeout=2)
    q = Quota("5/month", store=b, name="q", clock=FakeClock(MAY_20_2024))
    uploads = ConcurrencyLimit(2, b, name="up", clock=FakeClock())
    assert q.hit("k") == Decision(True, 5, 4, JUNE_1_2024 - MAY_20_2024, 0)
    held = uploads.try_acquire("k")
    assert held and uploads.in_flight("k") == 1
    own_redis_server.stop(signal.SIGKILL)
    left = JUNE_1_2024 - MAY_20_2024
    with caplog.at_level(logging.WARNING, logger="fastlimit"):
        if fail == "raise":
            calls = [lambda: q.hit("k"), lambda: q.peek("k"), lambda: q.refund("k"),
                     lambda: q.usage("k"), lambda: q.reset("k"),
                     lambda: uploads.try_acquire("k"), lambda: uploads.in_flight("k"),
                     held.renew, held.release]
            for call in calls:
                with pytest.raises(BackendError, match="Redis at redis://127.0.0.1"):
                    call()
            assert b.stats().raised == b.stats().errors == len(calls)
        else:
            if fail == "open":  # as a first hit would get; a lease nothing records
                assert q.hit("k", cost=2) == Decision(True, 5, 3, left, 0)
                lease = uploads.try_acquire("k")
                assert lease and not lease.held and lease.index == -1
            else:  # denied until Redis is tried again (>= 1 s), not until June
                assert q.hit("k", cost=2) == Decision(False, 5, 0, left, S)
                assert uploads.try_acquire("k") is None
            assert q.allow("k") is (fail == "open")
            assert not q.refund("k") and q.usage("k").used == 0
            q.reset("k")
            assert uploads.in_flight("k") == 0
            assert held.renew() and held.held, "an outage does not take a holder's lease"
            held.release()
            stats = b.stats()
            assert (stats.failed_open, stats.failed_closed) == (
                (4, 0) if fail == "open" else (0, 4))  # hit, allow, usage, try_acquire
            assert stats.errors == 9 and stats.raised == 0
    assert b.stats().down and "ConnectionError" in b.stats().last_error
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1
    own_redis_server.start()
    assert q.hit("k") == Decision(True, 5, 4, left, 0), "a new, empty server"
    assert uploads.try_acquire("k") and uploads.try_acquire("k")
    assert uploads.try_acquire("k") is None
    assert not b.stats().down


def test_quota_and_leases_answer_by_their_own_on_full(own_redis_server):
    b = RedisBackend(own_redis_server.url, fail="open", retry_interval=0)
    strict = Quota("5/month", store=b, name="q", on_full="deny", clock=FakeClock(MAY_20_2024))
    loud = ConcurrencyLimit(2, b, name="up", on_full="raise")
    own_redis_server.stop(signal.SIGKILL)
    assert not strict.allow("k") and Quota("5/month", store=b, name="q2").allow("k")
    with pytest.raises(BackendError):
        loud.try_acquire("k")
    assert ConcurrencyLimit(2, b, name="up").try_acquire("k"), "the backend's: open"


def test_a_hung_server_times_out_and_fails_closed(own_redis_server, clock):
    b = RedisBackend(own_redis_server.url, fail="closed", timeout=0.2, retry_interval=0)
    lim = Limiter("5/10s", store=b, name="hang", clock=clock)
    assert lim.allow("k")
    own_redis_server.pause()
    try:
        assert lim.hit("k") == Decision(False, 5, 0, 0, 2 * S)
        assert "Timeout" in b.stats().last_error
    finally:
        own_redis_server.resume()
    # (the timed-out call may still run when the server wakes: use a new key)
    assert lim.hit("k2") == Decision(True, 5, 4, 2 * S, 0)
    assert not b.stats().down


def test_marked_down_backend_skips_redis_until_ping(own_redis_server, clock):
    b = RedisBackend(own_redis_server.url, fail="closed", retry_interval=3600)
    lim = Limiter("5/10s", store=b, name="down", clock=clock)
    own_redis_server.stop(signal.SIGKILL)
    assert not lim.allow("k")
    own_redis_server.start()
    for _ in range(10):
        assert not lim.allow("k")
    stats = b.stats()
    assert (stats.errors, stats.skipped, stats.failed_closed) == (1, 10, 11)
    assert own_redis_server.commands("evalsha") == 0, "nothing reached the new server"
    assert b.ping()
    assert lim.allow("k") and own_redis_server.commands("evalsha") == 1


def test_failure_policy_per_limiter(own_redis_server, clock):
    b = RedisBackend(own_redis_server.url, fail="open", retry_interval=0)
    default = Limiter("5/10s", store=b, name="a", clock=clock)
    strict = Limiter("5/10s", store=b, name="b", clock=clock, on_full="deny")
    strict2 = b.limiter("5/10s", name="c", clock=clock, fail="closed")
    loud = b.limiter("5/10s", name="d", clock=clock, fail="raise")
    own_redis_server.stop(signal.SIGKILL)
    assert default.allow("k") and not strict.allow("k") and not strict2.allow("k")
    with pytest.raises(BackendError):
        loud.allow("k")


# -- two tiers: the local deny cache ----------------------------------------------------


def _hit_in_child(lim, q):
    q.put(numbers(lim.hit("k")))


def test_deny_cache_answers_denials_without_redis(own_redis_server, clock):
    deny = SharedTable.anonymous(capacity=1024)
    b = RedisBackend(own_redis_server.url, deny_cache=deny, retry_interval=0, **FAST)
    table = Limiter("3/30s", store=SharedTable.anonymous(), name="api", clock=clock)
    lim = Limiter("3/30s", store=b, name="api", clock=clock)  # T = 10 s
    for _ in range(3):
        assert lim.hit("k") == table.hit("k")
    calls = own_redis_server.commands("evalsha")
    # the third hit left the key empty: denials are known until a hit passes
    for step in range(5):
        clock.advance(1.5)
        d = lim.hit("k", cost=1 + step % 2)
        assert d == table.hit("k", cost=1 + step % 2)
        assert not d.allowed and d.remaining == 0 and d.retry_after_ns > 0
        assert lim.peek("k") == table.peek("k") and not lim.allow("k")
    assert own_redis_server.commands("evalsha") == calls, "no round trip while denied"
    assert b.stats().cache_hits == 15
    # every process on the host shares the cache: a forked child too
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_hit_in_child, args=(lim, q))
    p.start()
    assert q.get(timeout=60) == numbers(table.hit("k"))
    p.join(timeout=60)
    assert own_redis_server.commands("evalsha") == calls
    # with Redis gone, cached denials still hold (and cost no errors)
    own_redis_server.stop(signal.SIGKILL)
    assert lim.hit("k") == table.hit("k") and b.stats().errors == 0
    own_redis_server.start()
    b.ping()
    assert lim.hit("x") == Decision(True, 3, 2, 10 * S, 0)
    lim.hit("k")  # Redis lost the key but the cache still holds its denial
    assert own_redis_server.commands("evalsha") == 1
    # at the end of the denial, Redis is asked again
    clock.set(clock() + table.peek("k").retry_after_ns - 1)
    assert not lim.allow("k") and own_redis_server.commands("evalsha") == 1
    clock.advance(ns=1)
    assert lim.allow("k") and own_redis_server.commands("evalsha") == 2


def test_deny_cache_forgets_on_reset_and_refund(redis_server, clock):
    b = backend_for(redis_server, deny_cache=SharedTable.anonymous(capacity=64))
    lim = Limiter("2/20s", store=b, name="api", clock=clock)
    assert lim.allow("k", 2) and not lim.allow("k")
    lim.reset("k")
    assert lim.allow("k", 2)
    assert not lim.allow("k")
    assert lim.refund("k")
    assert lim.hit("k") == Decision(True, 2, 0, 20 * S, 0)


def test_deny_cache_never_stretches_a_denial(redis_server, clock):
    # two workers get the same denial from Redis at once: the second entry
    # must not add to the first
    deny = SharedTable.anonymous(capacity=64)
    b = backend_for(redis_server, deny_cache=deny)
    lim = Limiter("1/10s", store=b, name="race", clock=clock)
    assert lim.allow("k")
    spec = lim._impl._spec
    spec.remember("k", 10 * S, clock())
    spec.remember("k", 10 * S, clock())
    assert lim.peek("k").retry_after_ns == 10 * S


# -- composite checks --------------------------------------------------------------------


@pytest.mark.parametrize("cached", [False, True])
def test_hit_all_counts_all_or_nothing(redis_server, clock, cached):
    b = backend_for(redis_server, deny_cache=SharedTable.anonymous(capacity=64) if cached else None)
    hourly = Limiter("100/1h", store=b, name="hourly", clock=clock)
    burst = Limiter("2/10s", store=b, name="burst", clock=clock)
    ds = b.hit_all([(hourly, "u"), (burst, "u")])
    assert ds == [Decision(True, 100, 99, 36 * S, 0), Decision(True, 2, 1, 5 * S, 0)]
    ds = b.hit_all([(hourly, "u", 3), (burst, "u")])
    assert [d.remaining for d in ds] == [96, 0] and all(ds)
    ds = b.hit_all([(hourly, "u"), (burst, "u")])
    denied = Decision(False, 2, 0, 10 * S, 5 * S)
    if cached:
        assert ds == [None, denied], "answered locally: hourly not evaluated"
    else:
        assert ds == [Decision(True, 100, 96, 4 * 36 * S, 0), denied], "would pass, uncounted"
    assert hourly.peek("u").remaining == 96 and burst.peek("u").remaining == 0
    clock.advance(5)
    ds = b.hit_all([(hourly, "u"), (burst, "u"), (burst, "u")])
    assert [d.allowed for d in ds] == [True, True, False], "a key twice: in order"
    assert hourly.peek("u").remaining == 96, "and nothing counted"
    assert burst.hit("u") == Decision(True, 2, 0, 10 * S, 0), "nothing cached wrongly either"
    assert b.hit_all([]) == []


@pytest.mark.slow
def test_hit_all_is_atomic_across_processes(redis_server):
    b = backend_for(redis_server)
    user = Limiter("1000/1d", store=b, name="user")
    q = mp.get_context("fork").Queue()

    def work():
        b2 = RedisBackend(redis_server.url, prefix=b.prefix, **FAST)
        u, i = Limiter("1000/1d", store=b2, name="user"), Limiter("60/1d", store=b2, name="ip")
        q.put(sum(all(d.allowed for d in b2.hit_all([(u, "u1"), (i, "10.0.0.1")]))
                  for _ in range(40)))

    procs = [mp.get_context("fork").Process(target=work) for _ in range(3)]
    for p in procs:
        p.start()
    passed = sum(q.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert passed == 60
    assert user.peek("u1").remaining == 1000 - 60, "denied composites counted nothing"


def test_hit_all_refuses_mixed_limiters(redis_server, clock):
    b = backend_for(redis_server)
    a = Limiter("1/1s", store=b, name="a", clock=clock)
    with pytest.raises(ConfigurationError, match="limiters on this backend"):
        b.hit_all([(a, "k"), (Limiter("1/1s", store=backend_for(redis_server)), "k")])
    with pytest.raises(ConfigurationError, match="limiters on this backend"):
        b.hit_all([(Limiter("1/1s"), "k")])
    with pytest.raises(ConfigurationError, match="same clock"):
        b.hit_all([(a, "k"), (Limiter("1/1s", store=b, name="b"), "k")])
    with pytest.raises(CapacityError):
        b.hit_all([(a, "k", 2)])
    with pytest.raises(TypeError, match="a check is"):
        b.hit_all([a])


def test_hit_all_under_failure(own_redis_server, clock):
    b = RedisBackend(own_redis_server.url, fail="closed", retry_interval=0)
    a = Limiter("5/10s", store=b, name="a", clock=clock)
    o = b.limiter("5/10s", name="o", clock=clock, fail="open")
    own_redis_server.stop(signal.SIGKILL)
    assert b.hit_all([(a, "k"), (o, "k")]) == [Decision(False, 5, 0, 0, 2 * S),
                                                 Decision(True, 5, 4, 2 * S, 0)]


# -- asyncio -------------------------------------------------------------------------------


def test_async_backend_gives_the_same_decisions(redis_server, clock):
    table = Limiter("3/30s", store=SharedTable.anonymous(), name="api", clock=clock)

    async def main():
        b = AsyncRedisBackend(redis_server.url, prefix=f"a{uuid.uuid4().hex[:8]}", **FAST,
                              deny_cache=SharedTable.anonymous(capacity=64))
        async with b:
            lim = b.limiter("3/30s", name="api", clock=clock)
            for step in range(8):
                clock.advance(step * 0.7)
                assert numbers(await lim.hit("k")) == numbers(table.hit("k"))
                assert numbers(await lim.peek("k", 2)) == numbers(table.peek("k", 2))
            assert await lim.refund("k") == table.refund("k")
            assert (await lim.hit_many(["k", "j", "j", "j", "j"])).tolist() == table.hit_many(
                ["k", "j", "j", "j", "j"]).tolist()
            await lim.reset("j")
            table.reset("j")
            assert await lim.allow("j") and table.allow("j")
            burst = b.limiter("1/10s", name="burst", clock=clock)
            ds = await b.hit_all([(lim, "z"), (burst, "z")])
            assert [d.allowed for d in ds] == [True, True]
            ds = await b.hit_all([(lim, "z"), (burst, "z")])
            assert ds[0] is None and not ds[1].allowed  # from the deny cache
            start = clock()
            assert await burst.acquire("z") and clock() - start == 10 * S
            assert not await burst.acquire("z", timeout=5)
            assert await b.ping() and b.stats().errors == 0

    asyncio.run(main())


def test_async_failure_policy(own_redis_server, clock):
    async def main():
        b = AsyncRedisBackend(own_redis_server.url, fail="closed", retry_interval=0)
        lim = b.limiter("5/10s", name="f", clock=clock)
        loud = b.limiter("5/10s", name="g", clock=clock, fail="raise")
        assert await lim.allow("k")
        own_redis_server.stop(signal.SIGKILL)
        assert await lim.hit("k") == Decision(False, 5, 0, 0, 2 * S)
        with pytest.raises(BackendError):
            await loud.hit("k")
        assert not await b.ping()
        assert b.stats().errors == 3
        await b.aclose()

    asyncio.run(main())


def test_async_quota_gives_the_same_decisions(redis_server, tmp_path):
    wall = FakeClock(MAY_20_2024)
    table = Quota("4/month", path=tmp_path / "q.tbl", name="ai", clock=wall)

    async def main():
        b = AsyncRedisBackend(redis_server.url, prefix=f"a{uuid.uuid4().hex[:8]}", **FAST)
        async with b:
            q = b.quota("4/month", name="ai", clock=wall)
            for cost in (1, 2, 0, 2, 1):
                assert await q.hit("k", cost) == table.hit("k", cost)
                assert await q.peek("k", 2) == table.peek("k", 2)
            assert await q.usage("k") == table.usage("k")
            assert await q.refund("k", 2) == table.refund("k", 2)
            assert await q.allow("k") == table.allow("k")
            await q.reset("k")
            table.reset("k")
            assert await q.usage("k") == table.usage("k")
            wall.set(JUNE_1_2024)
            assert (await q.hit("k", 4)).allowed and not await q.allow("k")
            assert q.window() == table.window() and q.burst == 4
            sync = Quota("4/month", store=RedisBackend(redis_server.url, prefix=b.prefix),
                         name="ai", clock=wall)
            assert sync.usage("k").used == 4, "the same keys as a sync Quota"
            # one clock reading for the answer, the window and the headers' now
            july = JUNE_1_2024 + 30 * 86_400 * 10**9
            wall.set(july - 1)
            reading = await q.decide("k2")
            assert reading == table.decide("k2") and reading.wall_ns == july - 1
            assert reading.decision.reset_after_ns == 1, "the period ends 1 ns later"
            with pytest.raises(CapacityError):
                await q.hit("k", 5)
            assert b.stats().errors == 0

    asyncio.run(main())


def test_async_quota_failure_policy(own_redis_server):
    async def main():
        b = AsyncRedisBackend(own_redis_server.url, fail="open", retry_interval=0)
        q = b.quota("3/day", name="q", clock=FakeClock(MAY_20_2024), fail="closed")
        assert await q.allow("k")
        own_redis_server.stop(signal.SIGKILL)
        assert await q.hit("k") == Decision(False, 3, 0, 86400 * S, S)
        assert await b.quota("3/day", name="q").allow("k"), "the backend's policy: open"
        assert b.stats().failed_closed == b.stats().failed_open == 1
        await b.aclose()

    asyncio.run(main())


def test_async_backend_refuses_sync_quotas_and_leases(redis_server):
    b = AsyncRedisBackend(redis_server.url)
    with pytest.raises(ConfigurationError, match=r"use backend.quota\(\.\.\.\)"):
        Quota("1/day", store=b)
    with pytest.raises(ConfigurationError, match="ConcurrencyLimit needs a RedisBackend"):
        ConcurrencyLimit(1, b)


def test_lua_script_is_package_data():
    import importlib.resources

    from fastlimit.stores.redis import SCRIPTS

    lua = importlib.resources.files("fastlimit.stores.redis").joinpath("lua")
    shared = lua.joinpath("lib.lua").read_text()
    assert "redis.call('TIME')" in shared
    for name in ("gcra", "quota", "leases", "request"):
        # each script goes with the arithmetic they share, once
        assert SCRIPTS[name] == shared + lua.joinpath(f"{name}.lua").read_text()
    # the former path still names the backend
    import fastlimit.backends.redis

    assert fastlimit.backends.redis.RedisBackend is fastlimit.RedisBackend


# -- Redis Cluster -------------------------------------------------------------------------


def test_cluster_one_slot_per_script(redis_cluster, clock):
    import redis
    import redis.cluster

    client = redis.cluster.RedisCluster(host="127.0.0.1", port=redis_cluster.port)
    b = RedisBackend(client, prefix=f"c{uuid.uuid4().hex[:8]}")
    table = SharedTable.anonymous(capacity=64)
    keys = ["a", "b", "a", "c", "a", 5, "b", 5, "a"]
    for store in (b, table):
        lim = Limiter("3/1m", store=store, name="api", clock=clock)
        assert lim.hit_many(keys).tolist() == [True] * 8 + [False]
    api = Limiter("3/1m", store=b, name="api", clock=clock)
    login = Limiter("1/1m", store=b, name="login", clock=clock)
    assert [d.allowed for d in b.hit_all([(api, "u"), (login, "u")])] == [True, True]
    assert [d.allowed for d in b.hit_all([(api, "u"), (login, "u")])] == [True, False]
    with pytest.raises(ConfigurationError, match="every key in one hash slot"):
        b.hit_all([(api, "u"), (login, "v")])
    with redis_cluster.client() as plain, pytest.raises(redis.ResponseError, match="same slot"):
        # what the server does to a script whose keys span slots
        plain.eval("return 1", 2, b.redis_key("api", "u"), b.redis_key("login", "v"))
    tagged = RedisBackend(client, prefix=b.prefix, hash_tag=lambda name, key: "req-1")
    api2 = Limiter("3/1m", store=tagged, name="api", clock=clock)
    login2 = Limiter("1/1m", store=tagged, name="login", clock=clock)
    assert all(d.allowed for d in tagged.hit_all([(api2, "u"), (login2, "10.0.0.1")]))
    assert b.stats().errors == tagged.stats().errors == 0
    client.close()
