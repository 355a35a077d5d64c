"""Waiting in turn: Limiter.wait / acquire / reserve, the @limit decorator,
Limiter.hold and the progress log, all on a FakeClock (no real sleeps)."""

import asyncio
import logging
import pickle

import pytest

import fastlimit
from fastlimit import FakeClock, Limiter, RateLimitExceeded, SharedTable, WaitLog

S = 1_000_000_000


@pytest.fixture
def mem():
    t = SharedTable.anonymous(capacity=1024)
    yield t
    t.close()


def test_wait_sleeps_exactly_until_each_slot(mem, clock):
    lim = Limiter("3/1s", store=mem, clock=clock)  # T = 333_333_334 ns
    t0, woke = clock(), []
    for _ in range(6):
        assert lim.wait("k")
        woke.append(clock() - t0)
    t = lim.rate.emission_interval_ns
    assert woke == [0, 0, 0, t, 2 * t, 3 * t]
    assert not lim.allow("k"), "each wait counted its hit"


def test_a_cost_waits_for_its_whole_increment(mem, clock):
    lim = Limiter("4/1s", store=mem, clock=clock)  # T = 0.25 s
    t0 = clock()
    assert lim.wait("k", cost=3) and clock() == t0
    assert lim.wait("k", cost=3) and clock() - t0 == S // 2  # 1 left: 2 more intervals
    assert lim.wait("k", cost=0) and clock() - t0 == S * 3 // 4, "cost 0 waits for one"
    assert lim.peek("k").remaining == 1, "cost 0 counts nothing"
    with pytest.raises(fastlimit.CapacityError):
        lim.wait("k", cost=5)


def test_a_hopeless_wait_returns_at_once_counting_nothing(mem, clock):
    lim = Limiter("1/1s", store=mem, clock=clock)
    assert lim.wait("k")
    before = lim.peek("k")
    t0 = clock()
    assert not lim.wait("k", timeout=0.999_999_999)
    assert clock() == t0 and lim.peek("k") == before
    assert lim.wait("k", timeout=1.0) and clock() - t0 == S, "a slot at the deadline fits"


@pytest.mark.parametrize("timeout", [-1, "5", float("nan"), True])
def test_bad_timeouts_are_refused(mem, timeout):
    lim = Limiter("1/1s", store=mem)
    with pytest.raises(ValueError, match="timeout must be None or a number of seconds >= 0"):
        lim.wait("k", timeout=timeout)
    with pytest.raises(ValueError, match="timeout must be None"):
        lim.limit(key="k", timeout=timeout)


def test_reservations_are_served_in_booking_order(mem, clock):
    lim = Limiter("1/1s", store=mem, clock=clock)
    t0 = clock()
    booked = [lim.reserve("k") for _ in range(4)]
    assert [r.at_ns - t0 for r in booked] == [0, S, 2 * S, 3 * S]
    assert [r.wait for r in booked] == [0.0, 1.0, 2.0, 3.0]
    refused = lim.reserve("k", timeout=3.5)
    assert not refused and refused.decision.retry_after_ns == 4 * S
    assert lim.reserve("k", timeout=4).at_ns - t0 == 4 * S, "the refusal counted nothing"


def test_asyncio_waiters_on_one_key_take_turns(mem, clock):
    # Four tasks hammer one key at 1/s.  Booked waits serve them round-robin,
    # each exactly at its second; a retry loop would let whoever wakes first win.
    lim = Limiter("1/1s", store=mem, clock=clock)
    t0, served = clock(), []

    async def worker(i):
        for _ in range(3):
            assert await lim.acquire("k")
            served.append((i, clock() - t0))

    async def main():
        await asyncio.gather(*(worker(i) for i in range(4)))

    asyncio.run(main())
    assert served == [(i % 4, i * S) for i in range(12)]


def test_a_cancelled_acquire_gives_its_booking_back(mem, clock):
    lim = Limiter("1/1s", store=mem, clock=clock)

    async def main():
        assert await lim.acquire("k")
        before = lim.peek("k")
        waiter = asyncio.create_task(lim.acquire("k"))
        await asyncio.sleep(0)  # it books the next slot and sleeps
        assert lim.peek("k").retry_after == 2.0, "booked"
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert lim.peek("k") == before, "given back"

    asyncio.run(main())


def test_bookings_count_in_the_limiters_metrics(mem, clock):
    lim = Limiter("2/1s", store=mem, clock=clock, name="jobs")
    assert lim.wait("k") and lim.wait("k") and lim.wait("k")  # 2 at once, 1 booked ahead
    assert not lim.wait("k", timeout=0.1)  # refused: counted as denied
    (s,) = mem.stats().limiters
    assert (s.name, s.allowed, s.denied, s.full) == ("jobs", 3, 1, 0)


def test_only_the_last_booking_can_be_given_back(mem, clock):
    lim = Limiter("1/1s", store=mem, clock=clock)
    t0 = clock()
    first, second = lim.reserve("k"), lim.reserve("k")
    third = lim.reserve("k")
    assert not second.cancel(), "the third's slot was built on it: it stays counted"
    assert third.cancel() and not third.cancel(), "the last one goes back, once"
    assert lim.reserve("k").at_ns - t0 == 2 * S, "the third slot is free again"
    assert first.at_ns == t0


class InterruptedClock(FakeClock):
    """A FakeClock whose next sleep is interrupted (a ^C while blocked)."""

    __slots__ = ()

    def sleep_until(self, ns):
        raise KeyboardInterrupt


def test_an_interrupted_wait_gives_its_booking_back(mem):
    clock = InterruptedClock()
    lim = Limiter("1/1s", store=mem, clock=clock)
    assert lim.allow("k")
    before = lim.peek("k")
    with pytest.raises(KeyboardInterrupt):
        lim.wait("k")
    assert lim.peek("k") == before


def test_the_decorator_blocks_sync_and_async_calls(mem, clock):
    lim = Limiter("2/1s", store=mem, clock=clock)
    t0, calls = clock(), []

    @lim.limit(key="api")
    def fetch(item):
        calls.append((item, clock() - t0))
        return item * 10

    @lim.limit(key="api", cost=2)
    async def fetch_two(item):
        calls.append((item, clock() - t0))
        return item

    assert [fetch(i) for i in range(3)] == [0, 10, 20]
    assert asyncio.run(fetch_two(3)) == 3
    assert calls == [(0, 0), (1, 0), (2, S // 2), (3, S * 3 // 2)]
    assert fetch.__name__ == "fetch" and fetch_two.__name__ == "fetch_two"


def test_the_decorator_raises_with_the_decision(mem, clock):
    lim = Limiter("1/1s", store=mem, clock=clock, name="api")

    @lim.limit(key=lambda user, **kw: f"user:{user}", cost=lambda user, n=1: n, block=False)
    def now_or_never(user, n=1):
        return user

    @lim.limit(key="slow", timeout=0.5)
    async def within(item):
        return item

    assert now_or_never("ann") == "ann" and now_or_never("bob") == "bob"
    with pytest.raises(RateLimitExceeded) as e:
        now_or_never("ann")
    assert (e.value.key, e.value.limiter, e.value.retry_after) == ("user:ann", "api", 1.0)
    assert not e.value.decision.allowed and e.value.decision == lim.peek("user:ann")
    assert "rate limit 'api' exceeded for key 'user:ann'" in str(e.value)
    copy = pickle.loads(pickle.dumps(e.value))  # crosses process pools whole
    assert (copy.decision, copy.key, copy.limiter) == (e.value.decision, "user:ann", "api")

    async def two():
        await within(1)
        await within(2)

    t0 = clock()
    with pytest.raises(RateLimitExceeded) as e:
        asyncio.run(two())
    assert e.value.retry_after == 1.0 and clock() == t0, "refused at once, not after 0.5 s"


def test_decorator_arguments_are_checked_when_decorating(mem):
    lim = Limiter("1/1s", store=mem)
    with pytest.raises(TypeError, match="key must be a str, bytes or int key, or a function"):
        lim.limit(key=1.5)
    with pytest.raises(ValueError, match="cost must be an int >= 0 or a function"):
        lim.limit(key="k", cost=-1)
    with pytest.raises(TypeError, match="block must be True or False"):
        lim.limit(key="k", block="no")


def test_hold_follows_what_a_server_reported(mem, clock):
    lim = Limiter("10/1s", store=mem, clock=clock)  # T = 0.1 s
    assert lim.hold("a", remaining=3)
    assert [lim.allow("a") for _ in range(4)] == [True, True, True, False]
    assert lim.hold("b", remaining=0, retry_after=30)
    assert lim.peek("b").retry_after_ns == 30 * S
    t0 = clock()
    assert lim.wait("b") and clock() - t0 == 30 * S
    assert lim.peek("b").retry_after_ns == S // 10, "then it refills at its own rate"
    assert lim.hold("c", remaining=0) and lim.peek("c").retry_after_ns == S // 10
    # never loosens: a report of more than the key has changes nothing
    before = lim.peek("b")
    assert lim.hold("b", remaining=10) and lim.hold("b", remaining=0, retry_after=0.01)
    assert lim.peek("b") == before
    with pytest.raises(ValueError, match="remaining must be an int >= 0, got -1"):
        lim.hold("a", remaining=-1)
    with pytest.raises(ValueError, match="retry_after must be a number of seconds >= 0"):
        lim.hold("a", retry_after=-2)


def test_store_without_bookings_retries(redis_server):
    backend = fastlimit.RedisBackend(redis_server.url, prefix="t-waiting")
    clock = FakeClock()
    try:
        lim = Limiter("2/1s", store=backend, clock=clock)
        with pytest.raises(NotImplementedError, match="cannot book hits ahead"):
            lim.reserve("k")
        assert not lim.hold("k", remaining=0, retry_after=5), "Redis cannot hold"
        t0 = clock()
        assert all(lim.wait("k") for _ in range(4)) and clock() - t0 == S
    finally:
        backend.close()


# -- progress lines ------------------------------------------------------------

def messages(caplog):
    return [r for r in caplog.records if r.name == "fastlimit"]


def test_no_progress_lines_by_default(mem, clock, caplog):
    caplog.set_level(logging.DEBUG, logger="fastlimit")
    lim = Limiter("1/1s", store=mem, clock=clock)
    for _ in range(5):
        lim.wait("k")
    assert messages(caplog) == []


def test_progress_lines_come_at_most_every_so_often(mem, clock, caplog):
    caplog.set_level(logging.INFO, logger="fastlimit")
    lim = Limiter("30/1m", store=mem, clock=clock, name="partner", progress=10)
    t0 = clock()
    for _ in range(30 + 12):  # the burst, then 12 waits of 2 s each: 24 s held back
        assert lim.wait("jobs")
    assert clock() - t0 == 24 * S
    # a line as the first wait starts (t = 0 s), then at the first wait
    # starting 10 s after the last line (t = 10 s, t = 20 s)
    lines = messages(caplog)
    assert len(lines) == 3
    first, second = lines[0], lines[1]
    assert first.getMessage() == (
        "limiter 'partner' key 'jobs' is holding work back: waited 0.0 s, 2.0 s to go "
        "(rate 30/1m, burst 30)")
    assert (first.limiter, first.key, first.waited_s, first.left_s, first.rate) == (
        "partner", "jobs", 0.0, 2.0, "30/1m")
    assert second.getMessage().endswith(
        "; 5 waits held work back 10.0 s since the previous line")


def test_a_long_wait_logs_while_it_lasts(mem, clock, caplog):
    caplog.set_level(logging.INFO, logger="fastlimit")
    lim = Limiter("1/1m", store=mem, clock=clock, progress=WaitLog(every=25))
    assert lim.wait("k")
    t0 = clock()
    assert lim.wait("k") and clock() - t0 == 60 * S
    lines = [(r.waited_s, r.left_s) for r in messages(caplog)]
    assert lines == [(0.0, 60.0), (25.0, 35.0), (50.0, 10.0)]


def test_progress_is_checked(mem):
    with pytest.raises(fastlimit.ConfigurationError, match="progress must be None, seconds"):
        Limiter("1/1s", store=mem, progress="often")
    with pytest.raises(fastlimit.ConfigurationError, match="every must be a number of seconds > 0"):
        WaitLog(every=0)
