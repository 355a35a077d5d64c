"""Clocks that misbehave: going backwards, jumping, or returning what no
clock should.  Rates on every store (the shared table, Redis, Redis with a
deny cache), and calendar quotas on a file and on Redis.

The bounds checked, for a limit of burst B and emission interval T (they
are the ones SECURITY.md states):

1. Nothing raises, and every Decision is well formed.
2. No decision is more permissive than the latest time already read: a hit
   at reading r passes only if the same hit, on the same state, would pass
   at L = the latest reading so far (L >= r).
3. Over hits whose readings all lie in [a, b], in any order, at most
   B + floor((b - a) / T) units pass: what a monotonic clock allows over
   [a, b].  (Not fewer than the clamped clock would: a clock that goes back
   and forth can pass up to that many, see
   test_a_clock_going_back_and_forth_passes_what_the_span_of_its_readings_allows.)
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastlimit import FakeClock, Limiter, Quota, RedisBackend, SharedTable

S = 10**9


class WildClock:
    """A test clock that goes wherever it is set, backwards included
    (FakeClock refuses to go back)."""

    def __init__(self, ns: int) -> None:
        self.ns = ns

    def __call__(self) -> int:
        return self.ns


steps = st.lists(
    st.tuples(
        st.sampled_from(["hit", "allow", "peek", "many"]),
        st.integers(-3 * 10 * S, 3 * 10 * S),  # clock move, ns: +-3 tolerances
        st.integers(0, 4),  # cost
    ),
    min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trace=steps)
def test_a_clock_going_backwards_never_raises_nor_passes_more_than_the_latest_time(
        store_factory, trace):
    burst, period_s = 4, 40  # T = 10 s, tau = 40 s
    T = period_s * S // burst
    start = 10**6 * S
    clock = WildClock(start)
    store = store_factory()
    lim = Limiter(f"{burst}/{period_s}s", store=store, name="wild", clock=clock)
    latest = lowest = highest = start
    units = 0
    for op, move, cost in trace:
        now = max(0, clock.ns + move)
        latest, lowest, highest = max(latest, now), min(lowest, now), max(highest, now)
        clock.ns = latest
        at_latest = lim.peek("k", cost)
        clock.ns = now
        if op == "hit":
            d = lim.hit("k", cost)
            allowed = d.allowed
            assert 0 <= d.remaining <= burst and d.reset_after_ns >= 0
            assert (d.retry_after_ns > 0) == (not allowed)
        elif op == "allow":
            allowed = lim.allow("k", cost)
        elif op == "peek":
            allowed = lim.peek("k", cost).allowed
        else:
            allowed = bool(lim.hit_many(["k"], cost)[0])
        assert not allowed or at_latest.allowed, (
            f"{op} of {cost} passed at {now} but would not at the latest time {latest}")
        if allowed and op != "peek":
            units += cost if cost else 0
        assert units <= burst + (highest - lowest) // T
    if isinstance(store, SharedTable):
        assert store.verify() == [] and store.stats(now_ns=latest).locked_slots == 0


def test_a_clock_stepping_back_an_hour_only_denies_more(store):
    clock = WildClock(10**6 * S)
    lim = Limiter("3/30s", store=store, name="step", clock=clock)  # T = 10 s
    assert [lim.allow("k") for _ in range(4)] == [True, True, True, False]
    clock.ns -= 3600 * S
    d = lim.hit("k")
    assert not d.allowed and d.retry_after_ns == 3600 * S + 10 * S, "state is a time: it waits"
    assert lim.allow("fresh"), "a key with no state is fresh at any time"
    clock.ns += 3600 * S + 10 * S
    assert lim.allow("k") and not lim.allow("k"), "back on time: as if nothing happened"


def test_a_clock_going_back_and_forth_passes_what_the_span_of_its_readings_allows(store):
    # B = 1, T = 10 s.  The latest time read is 100 s; a hit read at 0 s
    # finds the key fresh and passes; back at 100 s the key is fresh again.
    # Two passes over readings 100 s apart: within B + 100 s / T = 11, and
    # each passed where a hit at the latest time (100 s) would have too.
    clock = WildClock(100 * S)
    lim = Limiter("1/10s", store=store, name="span", clock=clock)
    assert lim.peek("k").allowed
    clock.ns = 0
    assert lim.allow("k") and not lim.allow("k")
    clock.ns = 100 * S
    assert lim.allow("k") and not lim.allow("k")


@pytest.mark.parametrize("reading, error, message", [
    (-1, ValueError, "clock returned -1 ns: expected a time in"),
    (2**62 + 1, ValueError, f"clock returned {2**62 + 1} ns"),
    (1.5e18, TypeError, "clock must return int nanoseconds, got 1.5e"),
    (None, TypeError, "clock must return int nanoseconds, got None"),
])
def test_impossible_readings_are_refused_and_count_nothing(reading, error, message):
    table = SharedTable.anonymous(capacity=64)
    clock = WildClock(10**12)
    lim = Limiter("2/1h", store=table, clock=clock)
    lim.hit("k")
    clock.ns = reading
    for call in (lim.allow, lim.hit, lim.peek, lambda k: lim.hit_many([k])):
        with pytest.raises(error, match=message):
            call("k")
    clock.ns = 10**12
    assert lim.peek("k").remaining == 1
    assert table.verify() == [] and table.stats().locked_slots == 0, \
        "a negative time was once stored as a tat that reads as a lock"


# -- calendar quotas on the wall clock -------------------------------------------


def at(text):
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()) * S


@pytest.fixture(params=["table", "redis"])
def quota_place(request, tmp_path):
    if request.param == "table":
        yield {"path": tmp_path / "quotas.tbl"}
        return
    server = request.getfixturevalue("redis_server")
    backend = RedisBackend(server.url, prefix=f"clk{uuid.uuid4().hex[:10]}", timeout=10,
                           connect_timeout=10)
    yield {"store": backend}
    assert backend.stats().errors == 0
    backend.close()


def test_a_wall_clock_stepping_back_over_a_period_boundary_never_recounts(quota_place):
    # June has started (one hit counted), then the clock steps back 2 s into
    # May: the key stays in June, the newest period anyone has counted in.
    # The table once wrote May back over June's count, so June began twice.
    clock = FakeClock(at("2024-06-01T00:00:01"))
    june = Quota("3/month", name="ai", clock=clock, **quota_place)
    lagging = Quota("3/month", name="ai", clock=FakeClock(at("2024-05-31T23:59:59")),
                    **quota_place)
    assert june.allow("acct")
    assert lagging.allow("acct"), "counted in June"
    assert june.usage("acct").used == 2
    assert june.allow("acct") and not june.allow("acct") and not lagging.allow("acct")
    assert june.usage("acct").used == 3, "3 in June, exactly"


def test_a_lagging_clock_refund_and_peek_use_the_newer_period(quota_place):
    june = Quota("3/month", name="ai", clock=FakeClock(at("2024-06-01T00:00:01")),
                 **quota_place)
    may = Quota("3/month", name="ai", clock=FakeClock(at("2024-05-31T23:59:59")),
                **quota_place)
    assert june.hit("acct", 3).allowed
    assert not may.peek("acct").allowed, "June is spent, whoever asks"
    assert may.refund("acct") and june.usage("acct").used == 2
