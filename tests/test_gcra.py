"""GCRA decisions through Limiter, on every store (the shared table, Redis,
Redis with a deny cache: the ``store`` fixture), checked against the oracle
in tests/model.py."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from model import Model
from traces import config, run_trace

import fastlimit
from fastlimit import (
    CapacityError,
    ConfigurationError,
    Decision,
    FakeClock,
    Limiter,
    Rate,
    SharedTable,
)

S = 10**9


@pytest.fixture
def mem():
    t = SharedTable.anonymous(capacity=1024)
    yield t
    t.close()


def test_denied_hit_consumes_nothing(store, clock):
    lim = Limiter("2/1s", store=store, clock=clock)
    lim.hit("k", cost=2)
    for _ in range(10):
        assert not lim.allow("k")
    clock.advance(0.5)
    assert lim.allow("k")


def test_burst_differs_from_limit(store, clock):
    lim = Limiter("60/1m", store=store, clock=clock, burst=1)
    assert lim.hit("k") == Decision(True, 1, 0, S, 0)
    assert not lim.allow("k")
    clock.advance(1)
    assert lim.allow("k")


def test_fresh_key_allows_burst_then_one_per_interval(store, clock):
    lim = Limiter("5/10s", store=store, clock=clock)  # T = 2 s
    assert [lim.allow("k") for _ in range(6)] == [True] * 5 + [False]
    clock.advance(1.999)
    assert not lim.allow("k")
    clock.advance(0.001)
    assert lim.allow("k")
    assert not lim.allow("k")


def test_decision_numbers(store, clock):
    lim = Limiter("5/10s", store=store, clock=clock)
    assert lim.hit("k") == Decision(True, 5, 4, 2 * S, 0)
    for expected_remaining in (3, 2, 1, 0):
        assert lim.hit("k").remaining == expected_remaining
    assert lim.hit("k") == Decision(False, 5, 0, 10 * S, 2 * S)
    clock.advance(0.5)
    assert lim.hit("k", cost=2) == Decision(False, 5, 0, int(9.5 * S), int(3.5 * S))
    peeked = Decision(False, 5, 0, int(9.5 * S), int(1.5 * S))
    assert lim.hit("k", cost=0) == lim.peek("k") == peeked


def test_retry_after_is_exactly_when_it_passes(store, clock):
    lim = Limiter(Rate(3, 10 * S + 1), store=store, clock=clock)  # T = 3333333334 ns
    lim.hit("k", cost=3)
    d = lim.hit("k", cost=2)
    assert not d.allowed and d.retry_after_ns == 2 * 3333333334
    clock.advance(ns=d.retry_after_ns - 1)
    assert not lim.peek("k", cost=2).allowed
    assert lim.peek("k", cost=2).retry_after_ns == 1
    clock.advance(ns=1)
    assert lim.hit("k", cost=2) == Decision(True, 3, 0, 3 * 3333333334, 0)


def test_peek_and_cost_zero_count_nothing(store, clock):
    lim = Limiter("2/2s", store=store, clock=clock)
    assert lim.peek("k") == Decision(True, 2, 2, 0, 0)
    lim.hit("k")
    assert lim.peek("k", cost=2) == Decision(False, 2, 1, S, S)
    assert lim.hit("k", cost=0) == lim.peek("k") == Decision(True, 2, 1, S, 0)
    assert lim.hit_many(["k", "k"], cost=0).tolist() == [True, True]
    assert lim.peek("k").remaining == 1


def test_misuse_raises_the_same_errors(store):
    lim = Limiter("10/1m", store=store, burst=3)
    with pytest.raises(CapacityError, match="cost 4 exceeds the burst of 3"):
        lim.hit("k", cost=4)
    with pytest.raises(CapacityError):
        lim.allow("k", 4)
    with pytest.raises(CapacityError):
        lim.hit_many([], cost=4)
    with pytest.raises(ValueError, match="cost must be >= 0"):
        lim.hit("k", cost=-1)
    for bad in (2**64, -(2**63) - 1):
        with pytest.raises(ValueError, match="must fit in 64 bits"):
            lim.allow(bad)
    for bad in (1.5, None, ("a",), bytearray(b"a")):
        with pytest.raises(TypeError, match="keys must be str, bytes or int"):
            lim.allow(bad)
    with pytest.raises(TypeError, match="must hold integers"):
        lim.hit_many(np.array([1.0]))
    with pytest.raises(ConfigurationError, match="burst x emission interval"):
        Limiter("1/3650d", store=store, burst=10**9)


def test_key_types(store, clock):
    lim = Limiter("1/1h", store=store, clock=clock)
    assert lim.allow("a")
    assert not lim.allow(b"a"), "str keys are their UTF-8 bytes"
    assert lim.allow("é") and not lim.allow("é".encode())
    assert lim.allow(7) and not lim.allow(7)
    assert lim.allow("7"), "ints and strs are different keys"
    assert lim.allow(-1) and not lim.allow(2**64 - 1), "ints are 64-bit two's complement"
    assert lim.allow(2**63) and lim.allow(-(2**63) + 1)
    assert lim.allow(True) and not lim.allow(1)
    assert lim.allow("{x}") and lim.allow("x") and not lim.allow("{x}"), "braces are key bytes"
    assert lim.allow(b"\x00\xff}") and not lim.allow(b"\x00\xff}")


def test_limiter_names_separate_state(store, clock):
    a = Limiter("1/1h", store=store, name="a", clock=clock)
    a2 = Limiter("1/1h", store=store, name="a", clock=clock)
    b = Limiter("1/1h", store=store, name="b", clock=clock)
    assert a.allow("k")
    assert not a2.allow("k"), "same name, same store: same state"
    assert b.allow("k"), "another name never shares state"


def test_reset_and_refund(store, clock):
    lim = Limiter("3/3s", store=store, clock=clock)
    lim.hit("k")
    before = lim.peek("k")
    lim.hit("k", cost=2)
    assert not lim.allow("k")
    assert lim.refund("k", cost=2)
    assert lim.peek("k") == before
    assert lim.refund("k") and lim.peek("k") == Decision(True, 3, 3, 0, 0)
    assert not lim.refund("never-seen")
    assert not lim.refund("k", cost=0)
    lim.hit("k", cost=3)
    lim.reset("k")
    assert lim.peek("k").remaining == 3
    lim.reset("never-seen")
    assert lim.allow("k", 3)


def test_changed_rate_applies_at_once(store, clock):
    strict = Limiter("10/1m", store=store, name="api", clock=clock)
    for _ in range(10):
        assert strict.allow("k")
    assert strict.hit("k").retry_after_ns == 6 * S
    generous = Limiter("100/1m", store=store, name="api", clock=clock)
    assert generous.hit("k").retry_after_ns == 6 * S // 10
    clock.advance(0.6)
    assert generous.allow("k") and not strict.allow("k")


def test_hit_many_matches_sequential_hits(store, clock):
    keys = ["a", "b", "a", 3, b"b", "c", 3, "a"] * 3
    batch = Limiter("3/1m", store=store, name="batch", clock=clock)
    single = Limiter("3/1m", store=store, name="single", clock=clock)
    out = batch.hit_many(keys)
    assert out.dtype == np.bool_
    assert out.tolist() == [single.allow(k) for k in keys]
    assert batch.hit_many([]).tolist() == []
    assert batch.hit_many(iter(["z"] * 4)).tolist() == [True] * 3 + [False]
    ints = np.array([1, 2, 1, 1, 5, 2**63, 2, 1], dtype=np.uint64)
    assert batch.hit_many(ints).tolist() == [single.allow(int(k)) for k in ints]
    assert batch.hit_many(np.array([-1, -1, -1, -1], dtype=np.int64)).tolist() == [True] * 3 + [
        False]
    assert not batch.allow(2**64 - 1), "-1 in an int64 array is the key 2**64-1"
    small = np.array([9, 9, 9], dtype=np.int32)
    assert batch.hit_many(small, cost=2).tolist() == [True, False, False]


def test_hit_many_over_several_script_calls(store, clock):
    # 3300 checks: Redis runs them as several scripts; a key's checks straddle them
    lim = Limiter("2/1m", store=store, clock=clock)
    keys = np.tile(np.arange(1100, dtype=np.uint64), 3)
    assert lim.hit_many(keys).tolist() == [True] * 2200 + [False] * 1100
    assert lim.peek(1099).remaining == 0 and lim.peek(1100).remaining == 2


# -- every step against the oracle, on every store --------------------------------


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**config)
def test_every_step_matches_the_model(store_factory, limit, period_ns, burst, start, trace):
    clock = FakeClock(start)
    lim = Limiter(Rate(limit, period_ns), store=store_factory(), name="model", clock=clock,
                  burst=burst)
    run_trace(lim, clock, trace, Model(lim.rate.emission_interval_ns, burst))


def test_decision_value_semantics():
    d = Decision(False, 10, 0, 5 * S, 3 * S)
    assert d == Decision(False, 10, 0, 5 * S, 3 * S)
    assert d != Decision(False, 10, 1, 5 * S, 3 * S)
    assert len({d, Decision(False, 10, 0, 5 * S, 3 * S)}) == 1
    assert repr(d) == "Decision(allowed=False, limit=10, remaining=0, reset_after=5, retry_after=3)"
    assert not d and Decision(True, 1, 0)
    import pickle
    assert pickle.loads(pickle.dumps(d)) == d


def test_limiter_validates_configuration(store):
    with pytest.raises(ConfigurationError, match="burst must be an int >= 1"):
        Limiter("1/1s", store=store, burst=0)
    with pytest.raises(ConfigurationError, match="burst must be an int >= 1"):
        Limiter("1/1s", store=store, burst=2.5)
    with pytest.raises(ConfigurationError, match="name must be a non-empty str"):
        Limiter("1/1s", store=store, name="")
    with pytest.raises(ConfigurationError, match="cannot parse rate"):
        Limiter("fast", store=store)
    with pytest.raises(ConfigurationError, match="burst x emission interval"):
        Limiter("1/3650d", store=store, burst=10**9)
    with pytest.raises(ConfigurationError, match="on_full must be one of"):
        Limiter("1/1s", store=store, on_full="maybe")
    with pytest.raises(TypeError, match="clock must be callable"):
        Limiter("1/1s", store=store, clock=5)


def test_wait_sleeps_on_the_clock(store, clock):
    lim = Limiter("2/1s", store=store, clock=clock)
    start = clock()
    assert all(lim.wait("k") for _ in range(5))
    assert clock() - start == 1_500_000_000  # 2 at once, then 0.5 s apart
    assert not lim.wait("k", cost=2, timeout=0.5)
    assert clock() - start == 1_500_000_000, "a hopeless wait returns at once"
    assert lim.wait("k", cost=2, timeout=1.0)


def test_acquire_is_the_async_wait(store, clock):
    import asyncio

    lim = Limiter("1/1s", store=store, clock=clock)

    async def main():
        return [await lim.acquire("k") for _ in range(3)], await lim.acquire("k", timeout=0.5)

    assert asyncio.run(main()) == ([True, True, True], False)


def test_hot_methods_are_the_compiled_ones(mem):
    lim = Limiter("1/1s", store=mem)
    assert type(lim.allow).__name__ == "builtin_function_or_method"
    assert Limiter.allow.__doc__ and "hot path" in Limiter.allow.__doc__


def test_a_subclass_that_overrides_the_hot_methods_is_called(mem):
    # The compiled methods are bound on the instance only where the class
    # does not override them: a subclass's allow and hit run, and the rest
    # stay compiled.
    seen: list[tuple[str, object]] = []

    class Audited(Limiter):
        def allow(self, key, cost=1):
            seen.append(("allow", key))
            return super().allow(key, cost)

        def hit(self, key, cost=1):
            seen.append(("hit", key))
            return super().hit(key, cost)

    lim = Audited("2/1s", store=mem, clock=FakeClock())
    assert [lim.allow("a"), lim.hit("a").allowed, lim.allow("a")] == [True, True, False]
    assert seen == [("allow", "a"), ("hit", "a"), ("allow", "a")]
    assert type(lim.peek).__name__ == "builtin_function_or_method"


def test_package_exports():
    for name in ("Rate", "SharedTable", "Limiter", "Decision", "FakeClock", "CapacityError",
                 "ConfigurationError", "TableFullError", "TableError", "FastLimitError"):
        assert name in fastlimit.__all__ and hasattr(fastlimit, name)
