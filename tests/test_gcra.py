"""GCRA decisions through Limiter, checked against tests/model.py."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from model import Model

import fastlimit
from fastlimit import CapacityError, ConfigurationError, Decision, FakeClock, Limiter, SharedTable

S = 10**9


@pytest.fixture
def mem():
    t = SharedTable.anonymous(capacity=1024)
    yield t
    t.close()


def test_fresh_key_allows_burst_then_one_per_interval(mem, clock):
    lim = Limiter("5/10s", store=mem, clock=clock)  # T = 2 s
    assert [lim.allow("k") for _ in range(6)] == [True] * 5 + [False]
    clock.advance(1.999)
    assert not lim.allow("k")
    clock.advance(0.001)
    assert lim.allow("k")
    assert not lim.allow("k")


def test_decision_numbers(mem, clock):
    lim = Limiter("5/10s", store=mem, clock=clock)
    d = lim.hit("k")
    assert d == Decision(True, 5, 4, 2 * S, 0)
    assert (d.allowed, d.limit, d.remaining, d.reset_after, d.retry_after) == (True, 5, 4, 2.0, 0.0)
    for expected_remaining in (3, 2, 1, 0):
        assert lim.hit("k").remaining == expected_remaining
    denied = lim.hit("k")
    assert denied == Decision(False, 5, 0, 10 * S, 2 * S)
    assert not denied
    clock.advance(0.5)
    denied = lim.hit("k", cost=2)
    assert (denied.retry_after_ns, denied.reset_after_ns) == (int(3.5 * S), int(9.5 * S))


def test_denied_hit_consumes_nothing(mem, clock):
    lim = Limiter("2/1s", store=mem, clock=clock)
    lim.hit("k", cost=2)
    for _ in range(10):
        assert not lim.allow("k")
    clock.advance(0.5)
    assert lim.allow("k")


def test_retry_after_is_exactly_when_it_passes(mem, clock):
    lim = Limiter("3/1s", store=mem, clock=clock, burst=3)
    lim.hit("k", cost=3)
    d = lim.hit("k", cost=2)
    assert not d.allowed and d.retry_after_ns > 0
    clock.advance(ns=d.retry_after_ns - 1)
    assert not lim.peek("k", cost=2).allowed
    clock.advance(ns=1)
    assert lim.hit("k", cost=2).allowed


def test_peek_and_cost_zero_count_nothing(mem, clock):
    lim = Limiter("2/1s", store=mem, clock=clock)
    assert lim.peek("k") == Decision(True, 2, 2, 0, 0)
    assert lim.hit("k", cost=0) == lim.peek("k")
    lim.hit("k")
    assert lim.peek("k").remaining == 1
    assert lim.peek("k", cost=2) == Decision(False, 2, 1, S // 2, S // 2)
    assert lim.hit("k", cost=0) == lim.peek("k")
    assert lim.peek("k").remaining == 1


def test_cost_above_burst_raises_capacity_error(mem):
    lim = Limiter("10/1m", store=mem, burst=3)
    with pytest.raises(CapacityError, match="cost 4 exceeds the burst of 3"):
        lim.hit("k", cost=4)
    with pytest.raises(CapacityError):
        lim.allow("k", 4)
    with pytest.raises(CapacityError):
        lim.hit_many(["a"], cost=4)
    assert isinstance(CapacityError("x"), ValueError)
    assert lim.allow("k", 3)


def test_negative_cost_rejected(mem):
    lim = Limiter("10/1m", store=mem)
    with pytest.raises(ValueError, match="cost must be >= 0"):
        lim.hit("k", cost=-1)


def test_burst_differs_from_limit(mem, clock):
    lim = Limiter("60/1m", store=mem, clock=clock, burst=1)
    assert lim.hit("k") == Decision(True, 1, 0, S, 0)
    assert not lim.allow("k")
    clock.advance(1)
    assert lim.allow("k")


def test_reset_restores_full_burst(mem, clock):
    lim = Limiter("2/1h", store=mem, clock=clock)
    lim.hit("k", cost=2)
    assert not lim.allow("k")
    lim.reset("k")
    assert lim.peek("k").remaining == 2
    lim.reset("never-seen")
    assert lim.allow("k", 2)


def test_refund_undoes_a_hit(mem, clock):
    lim = Limiter("3/3s", store=mem, clock=clock)
    lim.hit("k")
    before = lim.peek("k")
    lim.hit("k", cost=2)
    assert lim.refund("k", cost=2)
    assert lim.peek("k") == before
    assert lim.refund("k") and lim.peek("k").remaining == 3
    assert lim.refund("k"), "refunding past fresh leaves it fresh"
    assert lim.peek("k") == Decision(True, 3, 3, 0, 0)
    assert not lim.refund("never-seen")
    assert not lim.refund("k", cost=0)


def test_key_types(mem, clock):
    lim = Limiter("1/1h", store=mem, clock=clock)
    assert lim.allow("a")
    assert not lim.allow(b"a"), "str keys are their UTF-8 bytes"
    assert lim.allow("é") and not lim.allow("é".encode())
    assert lim.allow(7) and not lim.allow(7)
    assert lim.allow("7"), "ints and strs are different keys"
    assert lim.allow(-1) and not lim.allow(2**64 - 1), "ints are 64-bit two's complement"
    assert lim.allow(2**63) and lim.allow(-(2**63) + 1)
    assert lim.allow(True) and not lim.allow(1)
    for bad in (2**64, -(2**63) - 1):
        with pytest.raises(ValueError, match="must fit in 64 bits"):
            lim.allow(bad)
    for bad in (1.5, None, ("a",), bytearray(b"a")):
        with pytest.raises(TypeError, match="keys must be str, bytes or int"):
            lim.allow(bad)


def test_limiter_names_separate_state(mem, clock):
    a = Limiter("1/1h", store=mem, name="a", clock=clock)
    a2 = Limiter("1/1h", store=mem, name="a", clock=clock)
    b = Limiter("1/1h", store=mem, name="b", clock=clock)
    assert a.allow("k")
    assert not a2.allow("k"), "same name, same table: same state"
    assert b.allow("k"), "another name never shares state"


def test_changed_rate_applies_at_once(mem, clock):
    strict = Limiter("10/1m", store=mem, name="api", clock=clock)
    for _ in range(10):
        assert strict.allow("k")
    assert strict.hit("k").retry_after == 6.0
    generous = Limiter("100/1m", store=mem, name="api", clock=clock)
    # the stored tat is a time (60 s of tolerance used), so the new rate
    # takes over at once: its own interval, 0.6 s, is the wait
    assert generous.hit("k").retry_after == pytest.approx(0.6)
    clock.advance(0.6)
    assert generous.allow("k") and not strict.allow("k")


def test_hit_many_matches_sequential_hits(clock):
    keys = ["a", "b", "a", 3, b"b", "c", 3, "a"] * 3
    batch = Limiter("3/1m", store=SharedTable.anonymous(capacity=256), clock=clock)
    single = Limiter("3/1m", store=SharedTable.anonymous(capacity=256), clock=clock)
    out = batch.hit_many(keys)
    assert out.dtype == np.bool_
    assert out.tolist() == [single.allow(k) for k in keys]
    assert batch.hit_many([]).tolist() == []
    assert batch.hit_many(iter(["z", "z", "z", "z"])).tolist() == [True] * 3 + [False]


def test_hit_many_integer_arrays_are_int_keys(clock):
    ints = np.array([1, 2, 1, 1, 5, 2**63, 2, 1], dtype=np.uint64)
    a = Limiter("2/1m", store=SharedTable.anonymous(capacity=256), clock=clock)
    b = Limiter("2/1m", store=SharedTable.anonymous(capacity=256), clock=clock)
    assert a.hit_many(ints).tolist() == [b.allow(int(k)) for k in ints]
    signed = np.array([-1, -1, -1], dtype=np.int64)
    assert a.hit_many(signed).tolist() == [True, True, False]
    assert not a.allow(2**64 - 1), "-1 in an int64 array is the key 2**64-1"
    assert a.hit_many(np.array([9, 9, 9], dtype=np.int32), cost=2).tolist() == [True, False, False]
    with pytest.raises(TypeError, match="must hold integers"):
        a.hit_many(np.array([1.0]))


def test_hit_many_cost_zero_peeks(mem, clock):
    lim = Limiter("1/1m", store=mem, clock=clock)
    assert lim.hit_many(["k", "k"], cost=0).tolist() == [True, True]
    assert lim.allow("k")


def test_decision_value_semantics():
    d = Decision(False, 10, 0, 5 * S, 3 * S)
    assert d == Decision(False, 10, 0, 5 * S, 3 * S)
    assert d != Decision(False, 10, 1, 5 * S, 3 * S)
    assert len({d, Decision(False, 10, 0, 5 * S, 3 * S)}) == 1
    assert repr(d) == "Decision(allowed=False, limit=10, remaining=0, reset_after=5, retry_after=3)"
    assert not d and Decision(True, 1, 0)
    import pickle
    assert pickle.loads(pickle.dumps(d)) == d


def test_limiter_validates_configuration(mem):
    with pytest.raises(ConfigurationError, match="burst must be an int >= 1"):
        Limiter("1/1s", store=mem, burst=0)
    with pytest.raises(ConfigurationError, match="burst must be an int >= 1"):
        Limiter("1/1s", store=mem, burst=2.5)
    with pytest.raises(ConfigurationError, match="name must be a non-empty str"):
        Limiter("1/1s", store=mem, name="")
    with pytest.raises(ConfigurationError, match="cannot parse rate"):
        Limiter("fast", store=mem)
    with pytest.raises(ConfigurationError, match="burst x emission interval"):
        Limiter("1/3650d", store=mem, burst=10**9)
    with pytest.raises(ConfigurationError, match="on_full must be one of"):
        Limiter("1/1s", store=mem, on_full="maybe")
    with pytest.raises(TypeError, match="clock must be callable"):
        Limiter("1/1s", store=mem, clock=5)


def test_wait_sleeps_on_the_clock(mem, clock):
    lim = Limiter("2/1s", store=mem, clock=clock)
    start = clock()
    assert all(lim.wait("k") for _ in range(5))
    assert clock() - start == 1_500_000_000  # 2 at once, then 0.5 s apart
    assert not lim.wait("k", cost=2, timeout=0.5)
    assert clock() - start == 1_500_000_000, "a hopeless wait returns at once"
    assert lim.wait("k", cost=2, timeout=1.0)


def test_acquire_is_the_async_wait(mem, clock):
    import asyncio

    lim = Limiter("1/1s", store=mem, clock=clock)

    async def main():
        return [await lim.acquire("k") for _ in range(3)], await lim.acquire("k", timeout=0.5)

    assert asyncio.run(main()) == ([True, True, True], False)


def test_hot_methods_are_the_compiled_ones(mem):
    lim = Limiter("1/1s", store=mem)
    assert type(lim.allow).__name__ == "builtin_function_or_method"
    assert Limiter.allow.__doc__ and "hot path" in Limiter.allow.__doc__


# -- against the oracle ------------------------------------------------------

ops = st.lists(
    st.tuples(
        st.sampled_from(["hit", "hit", "hit", "peek", "reset"]),
        st.sampled_from(["a", "b", 7]),
        st.integers(0, 4),  # cost
        st.integers(0, 3 * S),  # clock advance in ns
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 5),
    period_s=st.integers(1, 5),
    burst=st.integers(1, 6),
    trace=ops,
)
def test_every_step_matches_the_model(limit, period_s, burst, trace):
    clock = FakeClock()
    lim = Limiter(f"{limit}/{period_s}s", store=SharedTable.anonymous(capacity=64),
                  clock=clock, burst=burst)
    model = Model(lim.rate.emission_interval_ns, burst)
    for op, key, cost, advance in trace:
        clock.advance(ns=advance)
        if op == "reset":
            lim.reset(key)
            model.reset(key)
            continue
        if cost > burst:
            with pytest.raises(CapacityError):
                getattr(lim, op)(key, cost)
            continue
        got = getattr(lim, op)(key, cost)
        want = model.hit(key, clock(), cost, consume=(op == "hit"))
        assert (got.allowed, got.remaining, got.reset_after_ns, got.retry_after_ns) == (
            want.allowed, want.remaining, want.reset_after_ns, want.retry_after_ns), (op, key, cost)
        assert got.limit == burst
        assert 0 <= got.remaining <= burst
        assert got.allowed or got.retry_after_ns > 0


def test_package_exports():
    for name in ("Rate", "SharedTable", "Limiter", "Decision", "FakeClock", "CapacityError",
                 "ConfigurationError", "TableFullError", "TableError", "FastLimitError"):
        assert name in fastlimit.__all__ and hasattr(fastlimit, name)
