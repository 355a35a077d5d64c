"""Fleet mode (fastlimit/stores/fleet.py) against a real redis-server on
127.0.0.1 (conftest.py): the lease script's arithmetic against the GCRA
model, one host's answers, and hosts as real processes (tests/fleet_hosts.py
is not needed: each host here is a process with a table of its own and
worker processes of its own, on one shared fake clock)."""

import random
import uuid

import numpy as np
import pytest
from model import Model

from fastlimit import (
    CapacityError,
    Decision,
    FakeClock,
    Identity,
    Limiter,
    Policy,
    Quota,
    Rate,
    RedisBackend,
    SharedTable,
)
from fastlimit.core import gcra
from fastlimit.stores.contract import RateState
from fastlimit.stores.fleet import FleetBackend

S = 10**9
FAST = dict(timeout=10, connect_timeout=10)


def backend_for(server, **kw):
    return RedisBackend(server.url, **{**FAST, "prefix": f"f{uuid.uuid4().hex[:10]}", **kw})


def fleet_for(server, table=None, **kw):
    redis_kw = {k: kw.pop(k) for k in list(kw) if k in ("fail", "retry_interval", "timeout",
                                                            "connect_timeout", "prefix", "batch")}
    return FleetBackend(backend_for(server, **redis_kw),
                        table if table is not None else SharedTable.anonymous(4096), **kw)


# -- fleet.lua: a take is n hits of cost 1, a give-back is a refund -------------------


def model_take(m, key, now, give, want):
    """The model of one take: the refund of ``give``, then hits of cost 1
    while they pass (at most ``want``)."""
    tat = m.tat.get(key, now)
    if give:
        tat = max(now, tat - give * m.t)
    granted = 0
    while granted < want:
        ok, after = gcra.step(tat, now, m.t, m.tau)
        if not ok:
            break
        tat, granted = after, granted + 1
    m.tat[key] = tat
    return granted, max(0, tat - now)


@pytest.mark.parametrize("rate, burst", [("20000/1s", 20000), ("7/3s", 3), ("1/1d", 1),
                                         (Rate(3, 10 * S + 1), 5)])
def test_a_take_is_hits_of_cost_one_and_a_give_back_a_refund(redis_server, rate, burst):
    rate = Rate.parse(rate) if isinstance(rate, str) else rate
    T = rate.emission_interval_ns
    fleet = fleet_for(redis_server)
    spec = fleet.rate_state("lua", T, burst)._spec
    m = Model(T, burst)
    rng = random.Random(7)
    now = 1_700_000_000 * S + 123_456_789  # epoch-sized: beyond a double's exact integers
    r = redis_server.client()
    for _ in range(300):
        now += rng.choice([0, 1, T // 3, T, 5 * T, rng.randrange(burst * T + 1)])
        key = rng.choice(["a", "b"])
        give = rng.choice([0, 0, rng.randrange(burst + 1)])
        want = rng.randrange(burst + 2)
        got = fleet.take(spec.rkey(key), now, T, burst * T, give, want)
        assert got == model_take(m, key, now, give, want)
        stored = r.get(spec.rkey(key))
        # a tat at or before now is fresh, as a missing key is
        assert max(now, int(stored or 0)) == max(now, m.tat[key])
    assert fleet.redis.stats().errors == 0


# -- a take is a call of the Redis backend: its stats, batcher, retries, NOSCRIPT -------

@pytest.mark.parametrize("batch", [False, True])
def test_a_take_is_counted_by_the_redis_backend(redis_server, batch):
    fleet = fleet_for(redis_server, batch=batch)
    rkey = fleet.redis.redis_key("st", "k")
    assert fleet.take(rkey, 1_000 * S, S // 10, S, 0, 4) == (4, 4 * S // 10)
    assert fleet.take(rkey, 1_000 * S, S // 10, S, 1, 0) == (0, 3 * S // 10)
    st = fleet.redis.stats()
    assert (st.calls, st.errors, st.batches, st.batched) == (
        (2, 0, 2, 2) if batch else (2, 0, 0, 0))
    assert (fleet.stats().leases, fleet.stats().taken, fleet.stats().returned) == (2, 4, 1)


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("give, retries", [(0, 1), (3, 0)])
def test_a_give_back_that_timed_out_is_not_sent_again(own_redis_server, batch, give, retries):
    """A take alone goes again on a fresh connection (paying twice is the
    safe side); one that gives back may have run, and would give twice."""
    fleet = fleet_for(own_redis_server, batch=batch, timeout=0.2, retry_interval=3600)
    rkey = fleet.redis.redis_key("to", "k")
    assert fleet.take(rkey, 1_000 * S, S // 10, S, 0, 3) == (3, 3 * S // 10)
    own_redis_server.pause()
    try:
        assert fleet.take(rkey, 1_000 * S, S // 10, S, give, 3) is None
        assert fleet.take(rkey, 1_000 * S, S // 10, S, 0, 3) is None  # skipped: marked down
    finally:
        own_redis_server.resume()
    st = fleet.redis.stats()
    assert (st.errors, st.timeouts, st.retries, st.skipped) == (1, 1, retries, 1)
    assert fleet.stats().failures == 2
    assert fleet.redis.ping()
    assert fleet.take(rkey, 1_000 * S, S // 10, S, 0, 0) is not None


@pytest.mark.parametrize("batch", [False, True])
def test_a_take_after_script_flush_loads_the_script_again(own_redis_server, batch):
    fleet = fleet_for(own_redis_server, batch=batch)
    rkey = fleet.redis.redis_key("ns", "k")
    assert fleet.take(rkey, 1_000 * S, S // 10, S, 0, 2) == (2, 2 * S // 10)
    own_redis_server.client().script_flush()
    assert fleet.take(rkey, 1_000 * S, S // 10, S, 0, 2) == (2, 4 * S // 10)
    st = fleet.redis.stats()
    # the new server had no scripts either: the first take loaded it too
    assert (st.calls, st.errors, st.noscript) == (2, 0, 2)


def test_a_take_shares_the_bucket_of_ordinary_checks(redis_server):
    # cold keys and direct checks go through RedisBackend's own script: one bucket
    fleet = fleet_for(redis_server)
    clock = FakeClock(1_000 * S)
    lim = fleet.redis.limiter("10/1s", name="shared", clock=clock)
    spec = fleet.rate_state("shared", S // 10, 10)._spec
    assert fleet.take(spec.rkey("k"), clock(), S // 10, S, 0, 6) == (6, 6 * S // 10)
    assert [lim.allow("k") for _ in range(5)] == [True] * 4 + [False]
    assert fleet.take(spec.rkey("k"), clock(), S // 10, S, 3, 5) == (3, S)
    assert not lim.allow("k")
    clock.advance(0.1)
    assert lim.allow("k")


# -- one host ------------------------------------------------------------------------


def test_a_cold_key_is_checked_on_redis_and_answers_as_redis_does(redis_server, clock):
    fleet = fleet_for(redis_server, hot=1000)
    lim = Limiter("5/10s", store=fleet, name="cold", clock=clock)
    plain = Limiter("5/10s", store=fleet.redis, name="cold", clock=clock)
    m = Model(2 * S, 5)
    for i in range(8):
        want = Decision(*m.hit("k", clock()))
        assert (lim if i % 2 else plain).hit("k") == want
        clock.advance(0.5)
    st = fleet.stats()
    assert st.cold == 4 and st.leases == 0


def test_a_hot_key_is_served_from_a_lease_and_never_over_the_bound(redis_server, clock):
    fleet = fleet_for(redis_server, lease=20)
    lim = Limiter("100/1s", store=fleet, name="hot", clock=clock)
    t0 = clock()
    admitted = 0
    for _ in range(300):  # 3 s at 300/s: three times the limit
        for _ in range(3):
            admitted += lim.allow("k")
        clock.advance(0.01)
    elapsed = clock() - 10**7 - t0
    assert admitted <= 100 + elapsed // (S // 100)  # one GCRA's bound: B + t / T
    assert admitted >= 0.95 * (100 + elapsed // (S // 100))
    st = fleet.stats()
    calls = fleet.redis.stats().calls
    assert st.leases > 0 and calls / admitted <= 0.5, (st, calls)


def test_decisions_come_from_the_hosts_view_and_retry_after_is_never_zero(redis_server, clock):
    fleet = fleet_for(redis_server, lease=10)
    lim = Limiter("100/1s", store=fleet, name="view", clock=clock)
    ds = [lim.hit("k") for _ in range(150)]
    allowed = [d for d in ds if d.allowed]
    denied = [d for d in ds if not d.allowed]
    assert len(allowed) == 100 and len(denied) == 50  # the burst, at one instant
    assert all(d.limit == 100 and 0 <= d.remaining <= 100 for d in ds)
    # remaining falls as the burst is spent: the lease's balance plus the bucket's free units
    assert allowed[-1].remaining == 0 and allowed[0].remaining >= 90
    assert all(d.retry_after_ns > 0 for d in denied)
    assert all(0 < d.reset_after_ns <= S for d in ds)
    clock.advance(denied[-1].retry_after)
    assert lim.hit("k").allowed


def test_a_cost_above_the_lease_goes_to_redis_and_above_the_burst_raises(redis_server, clock):
    fleet = fleet_for(redis_server, lease=5)
    lim = Limiter("100/1s", store=fleet, name="cost", clock=clock)
    assert lim.hit("k", cost=50).allowed and fleet.stats().direct == 1
    with pytest.raises(CapacityError):
        lim.hit("k", cost=101)
    assert lim.peek("k", cost=0).allowed


def test_leases_follow_the_hosts_pace(redis_server, clock):
    # one host at 1% of a 10,000/s key does not hold a large share of it
    fleet = fleet_for(redis_server, lease=1000)
    lim = Limiter("10000/1s", store=fleet, name="pace", clock=clock)
    for _ in range(200):  # 100/s for 2 s
        lim.allow("k")
        clock.advance(0.01)
    st = fleet.stats()
    per_lease = st.taken / st.leases
    assert per_lease <= 30, st  # ~10 served per 0.1 s lease, x1.5 + 1
    busy = fleet_for(redis_server, lease=1000)
    lim = Limiter("10000/1s", store=busy, name="pace", clock=clock)
    for _ in range(200):  # 5,000/s
        for _ in range(50):
            lim.allow("k2")
        clock.advance(0.01)
    st = busy.stats()
    assert st.taken / st.leases >= 200, st


def test_reset_forgets_the_lease_and_the_global_state(redis_server, clock):
    fleet = fleet_for(redis_server, lease=10)
    lim = Limiter("20/1s", store=fleet, name="reset", clock=clock)
    assert sum(lim.allow("k") for _ in range(30)) == 20
    lim.reset("k")
    assert sum(lim.allow("k") for _ in range(30)) == 20


def test_quota_and_policy_take_a_fleet_store(redis_server, clock):
    fleet = fleet_for(redis_server)
    q = Quota("3/day", store=fleet, name="q", clock=FakeClock(1716163200 * S))
    assert [q.hit("acct").allowed for _ in range(4)] == [True] * 3 + [False]
    policy = Policy.from_dict({"identities": {"session": {"rate": "2/1m"}}}, store=fleet,
                              clock=clock)
    ident = Identity.session("s1")
    assert [policy.hit("GET", "/", ident).allowed for _ in range(3)] == [True, True, False]
    assert isinstance(fleet.rate_state("c", S, 3, clock=clock), RateState)


def test_a_leased_keys_checks_of_any_cost_up_to_the_lease_are_served_exactly(redis_server, clock):
    # hit and allow, cost 1 to the lease, from the host's lease: every unit
    # paid on Redis is served, none more, and a spent lease denies
    fleet = fleet_for(redis_server, lease=10)
    lim = Limiter("50/1s", store=fleet, name="costs", clock=clock)
    served = 0
    costs = [1, 3, 10, 2, 1, 7, 4, 1, 1, 5] * 8
    for i, cost in enumerate(costs):
        if i % 2:
            ok = lim.allow("k", cost)
        else:
            d = lim.hit("k", cost)
            ok = d.allowed
            assert d.retry_after_ns == 0 if ok else d.retry_after_ns > 0
        served += cost if ok else 0
    st = fleet.stats()
    assert served == 50  # the burst, at one instant
    # the first checks (until the key is hot) went to Redis, the rest was leased
    assert (st.cold, st.taken, st.returned, st.stranded) == (4, 50 - sum(costs[:4]), 0, 0), st
    clock.advance(0.2)  # 10 units accrue: the next lease serves them
    assert sum(c for c in (2, 3, 5, 1) if lim.allow("k", c)) == 10


def test_hit_many_answers_as_allow_does_key_by_key(redis_server, clock):
    # leased and cold keys, denials, a numpy array: the same answers as
    # allow on a twin limiter of the same store kind, on the same clock
    many = Limiter("30/1s", store=fleet_for(redis_server, lease=5), name="many", clock=clock)
    one = Limiter("30/1s", store=fleet_for(redis_server, lease=5), name="many", clock=clock)
    keys = [7, 7, 8, 7, 9, 7, 7, 8] * 6
    for _ in range(3):
        got = many.hit_many(np.array(keys, dtype=np.int64))
        assert got.dtype == np.bool_ and got.tolist() == [one.allow(k) for k in keys]
        clock.advance(0.05)
    assert 0 < sum(got) < len(keys)
