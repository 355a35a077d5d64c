"""fastlimit/core/gcra.py and fastlimit/core/quota.py state the arithmetic
once.  Here the statements are checked against DESIGN.md's numbers, and the
implementations against the statements: the compiled core (C) on random
and extreme traces, the C of the header fields' next-unit time, and every
store's quota counts (the C core and the Lua script).  The GCRA of the Redis
script is checked against the same statement, through tests/model.py, by
test_gcra.py's traces on every store."""

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastlimit import (
    CapacityError,
    FakeClock,
    Limiter,
    Quota,
    Rate,
    RedisBackend,
    SharedTable,
    _core,
)
from fastlimit.core import gcra, quota
from fastlimit.core.results import QuotaMode, Step

S = 10**9


# -- the statement against DESIGN.md ----------------------------------------------


def test_the_statement_says_what_design_says():
    t = gcra.emission_interval_ns(5, 10 * S)           # 5 per 10 s
    assert t == 2 * S and gcra.emission_interval_ns(3, 10 * S + 1) == 3333333334  # ceil
    tau = gcra.tolerance_ns(t, 5)
    assert tau == 10 * S
    # a fresh key allows the burst at once, then one per T
    tat, now = 0, 10**12
    for _ in range(5):
        allowed, tat = gcra.step(tat, now, t, tau)
        assert allowed
    assert gcra.step(tat, now, t, tau) == (False, tat)  # a denial stores nothing
    assert gcra.step(tat, now + t, t, tau)[0]
    # remaining within [0, B]; a fresh key has B; reset_after is max(0, tat - now)
    assert gcra.answer(True, 0, t, t, 5) == (True, 5, 5, 0, 0)
    assert gcra.answer(True, -7, t, t, 5).reset_after_ns == 0
    assert gcra.answer(True, 4 * S, t, t, 5).remaining == 3
    # retry_after: 0 when allowed, never 0 or negative when denied
    denied = gcra.answer(False, tau, t, t, 5)
    assert denied.retry_after_ns == t > 0
    # a cost above the burst can never pass; 0 asks as 1 and counts nothing
    with pytest.raises(CapacityError):
        gcra.check_cost(6, 5, "the burst of 5")
    assert gcra.increment_ns(0, t) == gcra.increment_ns(1, t) == t
    assert gcra.step(0, now, t, tau, consume=False) == (True, 0)


@pytest.mark.parametrize("interval, burst, message", [
    (0, 1, "emission interval must be >= 1 ns"),
    (1, 0, "burst must be >= 1"),
    (2**40, 2**30, "burst x emission interval must be <="),
])
def test_parameters_no_store_can_run_are_refused_by_one_rule(interval, burst, message):
    with pytest.raises(ValueError, match=message):
        gcra.check_params(interval, burst)
    with pytest.raises(ValueError, match=message):  # the core says the same
        _core.Gcra(SharedTable.anonymous(16)._view, "x", interval, burst)


# -- the compiled core against the statement ------------------------------------------


def statement_trace(interval, burst, start, steps):
    """What the statement answers for ``steps`` of (advance, cost, consume)."""
    tau, tat, now, out = gcra.tolerance_ns(interval, burst), 0, start, []
    for advance, cost, consume in steps:
        now += advance
        inc = gcra.increment_ns(cost, interval)
        allowed, after = gcra.step(max(tat, 0), now, inc, tau, consume and cost != 0)
        if allowed and consume and cost:
            tat = after
        out.append(tuple(gcra.answer(allowed, after - now, inc, interval, burst)))
    return out


extreme_ns = st.one_of(st.integers(1, 10**6), st.integers(1, 10**12), st.just(2**40),
                       st.integers(2**55, 2**60))


@settings(max_examples=300, deadline=None)
@given(interval=extreme_ns, burst=st.integers(1, 2**20),
       start=st.one_of(st.just(0), st.integers(0, 2**61), st.just(2**61)),
       steps=st.lists(st.tuples(st.one_of(st.just(0), st.integers(0, 2**45)),
                                st.integers(0, 5), st.booleans()), max_size=30))
def test_the_core_answers_as_the_statement_on_random_and_extreme_traces(
        interval, burst, start, steps):
    burst = min(burst, gcra.MAX_TOLERANCE_NS // interval)
    if burst < 1:
        return
    clock = FakeClock(start)
    state = _core.Gcra(SharedTable.anonymous(64)._view, "trace", interval, burst, clock)
    want = statement_trace(interval, burst, start, steps)
    got = []
    for (advance, cost, consume), _ in zip(steps, want, strict=True):
        clock.set(min(clock() + advance, gcra.MAX_CLOCK_NS))
        if cost > burst:
            with pytest.raises(CapacityError):
                state.hit("k", cost)
            return  # the statement refuses it too (check_cost); the rest is not comparable
        d = state.hit("k", cost) if consume else state.peek("k", cost)
        got.append((d.allowed, d.limit, d.remaining, d.reset_after_ns, d.retry_after_ns))
        if clock() == gcra.MAX_CLOCK_NS:
            return
    assert got == want[:len(got)]


@given(limit=st.integers(1, 2**20), after=st.integers(-2**40, 2**61),
       interval=st.integers(1, 2**40))
def test_the_cores_next_unit_time_is_the_statements(limit, after, interval):
    if limit * interval > gcra.MAX_TOLERANCE_NS:
        return
    assert _core.next_unit_ns(limit, after, interval) == gcra.next_unit_ns(
        limit, after, interval)


# -- quotas: the compiled counter against the statement --------------------------------


@pytest.fixture(params=["table", "redis"])
def quota_store(request):
    """Makes quota stores: the compiled core's quota table, or Redis (Lua)."""
    made = []

    def make():
        if request.param == "table":
            made.append(SharedTable.anonymous(64, kind="quotas"))
        else:
            server = request.getfixturevalue("redis_server")
            made.append(RedisBackend(server.url, prefix=f"q{uuid.uuid4().hex[:10]}", timeout=10,
                                     connect_timeout=10))
        return made[-1]

    yield make
    for s in made:
        s.close()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(1, 20), allow_on_full=st.booleans(),
       steps=st.lists(st.tuples(st.sampled_from([QuotaMode.PEEK, QuotaMode.CONSUME,
                                                 QuotaMode.REFUND]),
                                st.integers(0, 25)), max_size=30))
def test_every_stores_quota_answers_are_the_statements(quota_store, limit, allow_on_full,
                                                      steps):
    counter = quota_store().quota_counts("q", limit,
                                         on_full="allow" if allow_on_full else "deny")
    count = 0
    for mode, cost in steps:
        if mode == QuotaMode.REFUND:
            result, after = counter.step("acct", 7, cost, mode, 10)
            count = max(0, count - cost)
            assert (result, after) == (Step.ALLOWED, count)
            continue
        passed, new = quota.step(count, cost, limit, mode == QuotaMode.CONSUME)
        want = quota.answer(Step.ALLOWED if passed else Step.DENIED, new, cost, 10, limit,
                            allow_on_full)
        got = counter.answer("acct", 7, cost, mode, 10)
        assert tuple(want) == (got.allowed, got.limit, got.remaining, got.reset_after_ns,
                               got.retry_after_ns)
        count = new


def test_a_quota_that_cannot_count_answers_by_its_on_full_as_stated():
    full = SharedTable.anonymous(1, kind="quotas")  # room for a handful of keys
    for allow in (False, True):
        q = Quota("5/day", store=full, name=f"q{allow}", on_full="allow" if allow else "deny",
                  clock=lambda: 1716163200 * S)
        answers = [q.hit(f"acct{i}") for i in range(40)]
        no_slot = [d for d in answers if d.remaining in (0, 4) and d.allowed == allow]
        assert no_slot, "the table ran out of slots"
        left = answers[-1].reset_after_ns
        assert (answers[-1].allowed, answers[-1].limit, answers[-1].remaining) == tuple(
            quota.answer(Step.NO_SLOT, 0, 1, left, 5, allow)[:3])


def test_rates_headers_and_holds_use_the_statement():
    r = Rate.parse("10/1m")
    assert r.emission_interval_ns == gcra.emission_interval_ns(10, 60 * S)
    lim = Limiter("10/1s", clock=FakeClock())
    assert lim.hold("k", remaining=0, retry_after=30)
    assert lim.peek("k").retry_after_ns == 30 * S
    assert gcra.hold_ahead_ns(0, 30 * S, lim.rate.emission_interval_ns, 10) - (
        10 * lim.rate.emission_interval_ns) + lim.rate.emission_interval_ns == 30 * S
