"""Fleet mode (fastlimit/stores/fleet.py) against a real redis-server on
127.0.0.1 (conftest.py): the lease script's arithmetic against the GCRA
model, one host's answers, and hosts as real processes (tests/fleet_hosts.py
is not needed: each host here is a process with a table of its own and
worker processes of its own, on one shared fake clock)."""

import random
import uuid

import pytest
from model import Model

from fastlimit import FakeClock, Rate, RedisBackend, SharedTable
from fastlimit.core import gcra
from fastlimit.stores.fleet import FleetBackend

S = 10**9
FAST = dict(timeout=10, connect_timeout=10)


def backend_for(server, **kw):
    return RedisBackend(server.url, **{**FAST, "prefix": f"f{uuid.uuid4().hex[:10]}", **kw})


def fleet_for(server, table=None, **kw):
    redis_kw = {k: kw.pop(k) for k in list(kw) if k in ("fail", "retry_interval", "timeout",
                                                            "connect_timeout", "prefix")}
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
