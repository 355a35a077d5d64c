"""Concurrency limits: at most N in flight per key, across processes and crashes.

Tests on the ``store`` fixture run on a shared table and on Redis (a real
redis-server on 127.0.0.1, see conftest.py).  On the table a dead holder's
lease comes back when /proc shows it gone; on Redis when its TTL runs out.
"""

import asyncio
import multiprocessing as mp
import os
import signal
import time
import uuid

import pytest

from fastlimit import (
    ConcurrencyLimit,
    ConcurrencyLimitExceeded,
    ConfigurationError,
    FakeClock,
    HeaderStyle,
    Limiter,
    RedisBackend,
    SharedTable,
)

S = 10**9


def redis_backend(server, **kw):
    return RedisBackend(server.url, prefix=f"c{uuid.uuid4().hex[:10]}", timeout=10,
                        connect_timeout=10, **kw)


@pytest.fixture(params=["table", "redis"])
def store(request):
    """A named shared table (it pickles by name) or a RedisBackend (by URL)."""
    if request.param == "table":
        yield request.getfixturevalue("table")
        return
    backend = redis_backend(request.getfixturevalue("redis_server"))
    yield backend
    assert backend.stats().errors == 0
    backend.close()


@pytest.fixture
def uploads(store):
    return ConcurrencyLimit(3, store, name="uploads")


def test_at_most_n_then_release(uploads):
    leases = [uploads.try_acquire("acct") for _ in range(3)]
    assert all(leases) and len({lease.index for lease in leases}) == 3
    if isinstance(uploads.store, SharedTable):
        assert sorted(lease.index for lease in leases) == [0, 1, 2], "the key's slots"
    assert uploads.try_acquire("acct") is None
    assert uploads.try_acquire("other") is not None, "keys are independent"
    assert uploads.in_flight("acct") == 3
    leases[1].release()
    leases[1].release()  # twice is harmless
    assert not leases[1].held and uploads.in_flight("acct") == 2
    assert not leases[1].renew(), "a released lease is not renewed"
    again = uploads.try_acquire("acct")
    assert again is not None and again.held and again.renew()
    if isinstance(uploads.store, SharedTable):
        assert again.index == 1, "the slot given back"
    assert uploads.try_acquire("acct") is None
    assert uploads.in_flight("acct") == 3, "a renew takes no lease"


def test_context_managers_release(uploads):
    with uploads.acquire("acct") as lease:
        assert lease.held and uploads.in_flight("acct") == 1
        with uploads.try_acquire("acct"):
            assert uploads.in_flight("acct") == 2
        assert uploads.in_flight("acct") == 1
    assert uploads.in_flight("acct") == 0
    with pytest.raises(RuntimeError), uploads.acquire("acct"):
        raise RuntimeError("the lease goes back on errors too")
    assert uploads.in_flight("acct") == 0


def test_async_with(uploads):
    async def main():
        async with uploads.acquire("acct") as lease:
            inside = uploads.in_flight("acct")
        return lease.held, inside

    assert asyncio.run(main()) == (False, 1)
    assert uploads.in_flight("acct") == 0


def test_per_key_limit_and_unlimited(store):
    tiers = ConcurrencyLimit(1, store, name="tiered")
    assert tiers.try_acquire("pro", limit=2) and tiers.try_acquire("pro", limit=2)
    assert tiers.try_acquire("pro", limit=2) is None
    assert tiers.try_acquire("free") and tiers.try_acquire("free") is None
    unlimited = ConcurrencyLimit(None, store, name="custom")
    held = [unlimited.try_acquire("k") for _ in range(100)]
    assert all(held) and unlimited.in_flight("k") == 0
    assert held[0].renew(), "nothing records it: nothing can expire"


@pytest.mark.parametrize("limit", [0, -1, 10**6, 2.5, True, "3"])
def test_limit_is_validated(limit):
    with pytest.raises(ConfigurationError, match="concurrency limit must be"):
        ConcurrencyLimit(limit)


def test_blocking_acquire_times_out_on_the_clock(store):
    clock = FakeClock()
    lim = ConcurrencyLimit(1, store, name="b", clock=clock, retry_after=2.0)
    held = lim.try_acquire("k")
    start = clock()
    with pytest.raises(ConcurrencyLimitExceeded) as err, lim.acquire("k", timeout=0.5):
        pass
    assert (err.value.key, err.value.limit, err.value.retry_after) == ("k", 1, 2.0)
    assert 0.4e9 < clock() - start <= 0.5e9, "backed off until the deadline, no further"
    with pytest.raises(ConcurrencyLimitExceeded), lim.acquire("k", timeout=0):
        pass
    held.release()
    with lim.acquire("k", timeout=0) as lease:
        assert lease.held


def test_blocking_acquire_gets_a_released_lease(store):
    clock = FakeClock()
    waits = []

    def sleep(seconds):  # another holder finishes while we wait
        waits.append(seconds)
        clock.advance(seconds)
        if len(waits) == 3:
            holder.release()

    lim = ConcurrencyLimit(1, store, name="b", clock=clock, sleep=sleep)
    holder = lim.try_acquire("k")
    with lim.acquire("k", timeout=10) as lease:
        assert lease.held
    assert waits == [0.001, 0.002, 0.004]


def _hold(store, n, ready, done):
    lim = ConcurrencyLimit(n, store, name="uploads")
    leases = [lim.try_acquire("acct") for _ in range(n)]
    assert all(leases)
    ready.set()
    done.wait()
    for lease in leases:
        lease.release()


@pytest.mark.slow
def test_leases_are_shared_across_processes(store):
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(store, 2, ready, done))
    p.start()
    assert ready.wait(60)
    lim = ConcurrencyLimit(2, store, name="uploads")
    assert lim.in_flight("acct") == 2 and lim.try_acquire("acct") is None
    done.set()
    p.join(60)
    assert p.exitcode == 0
    assert lim.in_flight("acct") == 0 and lim.try_acquire("acct")


def _hold_forever(name, ready):
    lim = ConcurrencyLimit(2, SharedTable.attach(name), name="uploads")
    assert lim.try_acquire("acct") and lim.try_acquire("acct")
    ready.set()
    while True:
        os.sched_yield()


def test_leases_of_a_killed_holder_come_back(table, table_name):
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    p = ctx.Process(target=_hold_forever, args=(table_name, ready))
    p.start()
    assert ready.wait(60)
    lim = ConcurrencyLimit(2, table, name="uploads")
    assert lim.try_acquire("acct") is None, "a live holder keeps its leases"
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    assert lim.in_flight("acct") == 2, "a dead holder's leases stay until someone needs them"
    first, second = lim.try_acquire("acct"), lim.try_acquire("acct")
    assert first and second and lim.reclaimed == 2
    assert lim.try_acquire("acct") is None, "taken over, never over-admitted"
    assert table.verify() == []


def _churn(store, n, rounds, inside, peak, counts):
    lim = ConcurrencyLimit(n, store, name="uploads")
    got = 0
    for _ in range(rounds):
        lease = lim.try_acquire("acct")
        if lease is None:
            continue
        got += 1
        with inside.get_lock():
            inside.value += 1
            peak.value = max(peak.value, inside.value)
        with inside.get_lock():
            inside.value -= 1
        lease.release()
    counts.put(got)


def test_never_more_than_n_in_flight_under_contention(store):
    ctx = mp.get_context("fork")
    inside, peak, counts = ctx.Value("i", 0), ctx.Value("i", 0), ctx.Queue()
    rounds = 3000 if isinstance(store, SharedTable) else 300  # Redis: 2 round trips a round
    procs = [ctx.Process(target=_churn, args=(store, 2, rounds, inside, peak, counts))
             for _ in range(4)]
    for p in procs:
        p.start()
    got = [counts.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    assert 1 <= peak.value <= 2
    assert sum(got) > 0
    assert ConcurrencyLimit(2, store, name="uploads").in_flight("acct") == 0


def test_rate_keys_never_evict_leases():
    clock = FakeClock()
    table = SharedTable.anonymous(capacity=16)
    lim = ConcurrencyLimit(1, table, name="uploads")
    lease = lim.try_acquire("acct")
    rates = Limiter("1/1s", store=table, clock=clock)
    for round_ in range(20):
        clock.advance(10)  # every rate key so far is replenished: its slot is free
        for k in range(40):
            rates.allow(f"{round_}-{k}")
    assert lease.held and lim.in_flight("acct") == 1 and lim.try_acquire("acct") is None
    assert table.verify() == []


# -- Redis: leases expire, so a dead host's leases come back ------------------------


def test_redis_leases_expire_after_the_ttl_unless_renewed(redis_server):
    clock = FakeClock()  # leases expire on the injected clock: no waiting
    b = redis_backend(redis_server, lease_ttl=10)
    lim = ConcurrencyLimit(2, b, name="uploads", clock=clock)
    a, c = lim.try_acquire("acct"), lim.try_acquire("acct")
    assert lim.try_acquire("acct") is None
    clock.advance(6)
    assert a.renew(), "renewed at 6 s: now lives until 16 s"
    clock.advance(3.999)
    assert lim.in_flight("acct") == 2 and lim.try_acquire("acct") is None, "c lives until 10 s"
    clock.advance(0.001)
    assert lim.in_flight("acct") == 1, "c expired at 10 s"
    assert not c.renew() and not c.held, "an expired lease is lost, not revived"
    d = lim.try_acquire("acct")
    assert d and lim.try_acquire("acct") is None, "its place went to d, never to a third"
    clock.advance(5.999)
    assert lim.in_flight("acct") == 2
    clock.advance(0.001)
    assert lim.in_flight("acct") == 1, "a expired at 16 s"
    assert lim.try_acquire("acct") and lim.reclaimed == 1, "a's expired lease was dropped"
    c.release()  # an expired lease released later: harmless
    assert lim.in_flight("acct") == 2
    assert b.stats().errors == 0


def test_redis_lease_keys_and_the_server_clock(redis_server):
    b = redis_backend(redis_server, lease_ttl=30)
    lim = ConcurrencyLimit(3, b, name="uploads")  # no clock: the server's TIME
    lease = lim.try_acquire("acct")
    r = redis_server.client()
    key = b.redis_key("uploads", "acct", "lease")
    assert key == b.prefix.encode() + b":uploads:lease{acct}"
    ((member, expires_ms),) = r.zrange(key, 0, -1, withscores=True)
    assert int(member) == lease.index >= 0
    sec, usec = r.time()
    assert 29_000 < expires_ms - (sec * 1000 + usec // 1000) <= 30_000
    assert 29_000 < r.pttl(key) <= 30_000, "the set goes with its last lease"
    lease.release()
    assert not r.exists(key)


def test_redis_lease_of_a_holder_that_stops_comes_back_on_the_server_clock(redis_server):
    # a short TTL on real time: poll for the lease, never sleep a fixed time
    b = redis_backend(redis_server, lease_ttl=0.2)
    lim = ConcurrencyLimit(1, b, name="uploads")
    assert lim.try_acquire("acct")  # and never released, as by a dead holder
    start = time.monotonic()
    assert lim.try_acquire("acct") is None
    while lim.try_acquire("acct") is None:
        assert time.monotonic() - start < 30, "the lease never expired"
        time.sleep(0.01)
    # (reclaimed stays 0: the set expired with its only lease, so the
    # acquire found nothing to drop)
    assert lim.in_flight("acct") == 1 and lim.try_acquire("acct") is None


def _hold_on_redis(store, start_ns, ready):
    lim = ConcurrencyLimit(2, store, name="uploads", clock=FakeClock(start_ns))
    assert lim.try_acquire("acct") and lim.try_acquire("acct")
    ready.set()
    while True:
        os.sched_yield()


@pytest.mark.slow
def test_redis_leases_of_a_killed_holder_come_back_after_the_ttl(redis_server):
    b = redis_backend(redis_server, lease_ttl=60)
    clock = FakeClock()
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_hold_on_redis, args=(b, clock(), ready))
    p.start()
    assert ready.wait(60)
    lim = ConcurrencyLimit(2, b, name="uploads", clock=clock)
    assert lim.try_acquire("acct") is None
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    assert lim.try_acquire("acct") is None and lim.in_flight("acct") == 2, "held until the TTL"
    clock.advance(59.999)
    assert lim.try_acquire("acct") is None
    clock.advance(0.001)
    first, second = lim.try_acquire("acct"), lim.try_acquire("acct")
    assert first and second and lim.reclaimed == 2
    assert lim.try_acquire("acct") is None, "taken over, never over-admitted"
    assert b.stats().errors == 0


def test_lease_ttl_is_validated(redis_server):
    for bad in (0, -1, "60", True, 10**9):
        with pytest.raises(ConfigurationError, match="lease_ttl must be"):
            redis_backend(redis_server, lease_ttl=bad)


def _fill_with_leases(name, keys, ready):
    lim = ConcurrencyLimit(1, SharedTable.attach(name), name="uploads")
    for k in range(keys):
        assert lim.try_acquire(f"k{k}")
    ready.set()
    while True:
        os.sched_yield()


def test_slots_of_a_killed_holders_leases_are_reclaimed_for_other_keys(table_name):
    # a table of one bucket pair: 8 leases of a holder fill it
    table = SharedTable.open(table_name, capacity=4)
    slots = len(table.slots)
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    p = ctx.Process(target=_fill_with_leases, args=(table_name, slots, ready))
    p.start()
    try:
        assert ready.wait(60)
        lim = Limiter("5/1h", store=table, name="api")
        assert not lim.hit("new-user").allowed, "a live holder's leases are never taken"
        assert table.stats().full_events == 1
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.join()
    assert [lim.hit("new-user").allowed for _ in range(6)] == [True] * 5 + [False]
    assert table.stats().full_events == 1, "the dead holder's slots were freed, not full"
    assert table.stats().lock_breaks >= 1
    assert table.verify() == []


def test_a_denial_renders_the_limits_own_numbers(store):
    uploads = ConcurrencyLimit(2, store, name="uploads", retry_after=2.5)
    held = [uploads.try_acquire("acct") for _ in range(2)]
    assert all(held) and uploads.try_acquire("acct") is None
    style = HeaderStyle(reset="delta", ietf=True)
    assert style.render_concurrency(name=uploads.name, limit=uploads.limit,
                                    retry_after=uploads.retry_after, wall_now_ns=0) == [
        ("X-RateLimit-Limit", "2"), ("X-RateLimit-Remaining", "0"),
        ("X-RateLimit-Reset", "3"),
        ("RateLimit-Policy", '"uploads";q=2;qu="concurrent-requests"'),
        ("RateLimit", '"uploads";r=0;t=3'), ("Retry-After", "3")]
    for lease in held:
        lease.release()
