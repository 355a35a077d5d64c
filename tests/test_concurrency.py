"""Concurrency limits: at most N in flight per key, across processes and crashes."""

import asyncio
import multiprocessing as mp
import os
import signal

import pytest

from fastlimit import (
    ConcurrencyLimit,
    ConcurrencyLimitExceeded,
    ConfigurationError,
    FakeClock,
    Limiter,
    SharedTable,
)


@pytest.fixture
def uploads(table):
    return ConcurrencyLimit(3, table, name="uploads")


def test_at_most_n_then_release(uploads):
    leases = [uploads.try_acquire("acct") for _ in range(3)]
    assert all(leases) and sorted(lease.index for lease in leases) == [0, 1, 2]
    assert uploads.try_acquire("acct") is None
    assert uploads.try_acquire("other") is not None, "keys are independent"
    assert uploads.in_flight("acct") == 3
    leases[1].release()
    leases[1].release()  # twice is harmless
    assert not leases[1].held and uploads.in_flight("acct") == 2
    again = uploads.try_acquire("acct")
    assert again is not None and again.index == 1
    assert uploads.try_acquire("acct") is None


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


def test_per_key_limit_and_unlimited(table):
    tiers = ConcurrencyLimit(1, table, name="tiered")
    assert tiers.try_acquire("pro", limit=2) and tiers.try_acquire("pro", limit=2)
    assert tiers.try_acquire("pro", limit=2) is None
    assert tiers.try_acquire("free") and tiers.try_acquire("free") is None
    unlimited = ConcurrencyLimit(None, table, name="custom")
    held = [unlimited.try_acquire("k") for _ in range(100)]
    assert all(held) and unlimited.in_flight("k") == 0


@pytest.mark.parametrize("limit", [0, -1, 10**6, 2.5, True, "3"])
def test_limit_is_validated(limit):
    with pytest.raises(ConfigurationError, match="concurrency limit must be"):
        ConcurrencyLimit(limit)


def test_blocking_acquire_times_out_on_the_clock(table):
    clock = FakeClock()
    lim = ConcurrencyLimit(1, table, name="b", clock=clock, retry_after=2.0)
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


def test_blocking_acquire_gets_a_released_lease(table):
    clock = FakeClock()
    waits = []

    def sleep(seconds):  # another holder finishes while we wait
        waits.append(seconds)
        clock.advance(seconds)
        if len(waits) == 3:
            holder.release()

    lim = ConcurrencyLimit(1, table, name="b", clock=clock, sleep=sleep)
    holder = lim.try_acquire("k")
    with lim.acquire("k", timeout=10) as lease:
        assert lease.held
    assert waits == [0.001, 0.002, 0.004]


def _hold(name, n, ready, done):
    lim = ConcurrencyLimit(n, SharedTable.attach(name), name="uploads")
    leases = [lim.try_acquire("acct") for _ in range(n)]
    assert all(leases)
    ready.set()
    done.wait()
    for lease in leases:
        lease.release()


def test_leases_are_shared_across_processes(table, table_name):
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(table_name, 2, ready, done))
    p.start()
    assert ready.wait(60)
    lim = ConcurrencyLimit(2, table, name="uploads")
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


def _churn(name, n, rounds, inside, peak, counts):
    lim = ConcurrencyLimit(n, SharedTable.attach(name), name="uploads")
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


def test_never_more_than_n_in_flight_under_contention(table, table_name):
    ctx = mp.get_context("fork")
    inside, peak, counts = ctx.Value("i", 0), ctx.Value("i", 0), ctx.Queue()
    procs = [ctx.Process(target=_churn, args=(table_name, 2, 3000, inside, peak, counts))
             for _ in range(4)]
    for p in procs:
        p.start()
    got = [counts.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    assert 1 <= peak.value <= 2
    assert sum(got) > 0
    assert ConcurrencyLimit(2, table, name="uploads").in_flight("acct") == 0


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
