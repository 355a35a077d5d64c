"""Random decision traces played on a Limiter: against the oracle in
model.py, and on several stores against each other."""

import pytest
from hypothesis import strategies as st

from fastlimit import CapacityError

S = 10**9


def numbers(d):
    return (d.allowed, d.limit, d.remaining, d.reset_after_ns, d.retry_after_ns)


CAP = 2**62  # the core keeps time + tolerance (<= 2**61) inside int64


def trace_strategy():
    return st.lists(
        st.tuples(
            st.sampled_from(["hit", "hit", "hit", "peek", "reset", "refund", "many"]),
            st.sampled_from(["a", "b", 7, b"\xff"]),
            st.integers(0, 4),  # cost
            st.integers(0, 3000),  # clock advance, in thousandths of T
            st.integers(0, 10**6),  # plus some nanoseconds, so times are ragged
        ),
        max_size=40,
    )


config = dict(
    limit=st.integers(1, 7),
    # whole periods from 10 s (T >= 1.4 s: Redis expires keys in real time,
    # which must stay far behind the fake clock) to 3660 days (tolerance
    # close to 2**61), with ragged nanoseconds
    period_ns=st.one_of(st.integers(10 * S, 3600 * S), st.integers(10 * S, 3000 * 86400 * S)),
    burst=st.integers(1, 8),
    start=st.one_of(st.just(10**12), st.integers(0, CAP), st.just(1_763_900_000_123_456_789)),
    trace=trace_strategy(),
)


def run_trace(lim, clock, trace, model=None):
    """Play ``trace``; returns what each step answered."""
    out = []
    t = lim.rate.emission_interval_ns
    for op, key, cost, advance, jitter in trace:
        clock.advance(ns=min(t * advance // 1000 + jitter, CAP - clock()))
        if op == "reset":
            lim.reset(key)
            if model is not None:
                model.reset(key)
            out.append(None)
            continue
        if cost > lim.burst:
            with pytest.raises(CapacityError):
                getattr(lim, "hit" if op == "many" else op)(key, cost)
            out.append("capacity")
            continue
        if op == "refund":
            # True for a key with live state; for one already replenished the
            # stores may differ (the table keeps its slot, Redis drops the key)
            live = model is not None and cost and model.tat.get(key, 0) > clock()
            refunded = lim.refund(key, cost)
            assert refunded or not live
            out.append("refund")
            if model is not None and cost and key in model.tat:
                model.tat[key] -= cost * model.t
            continue
        if op == "many":
            out.append(("many", lim.hit_many([key, key], cost).tolist()))
            if model is not None:
                want = [model.hit(key, clock(), cost).allowed for _ in range(2)]
                assert out[-1][1] == want
            continue
        got = getattr(lim, op)(key, cost)
        out.append(numbers(got))
        assert got.limit == lim.burst and 0 <= got.remaining <= lim.burst
        assert got.allowed or got.retry_after_ns > 0
        if model is not None:
            want = model.hit(key, clock(), cost, consume=(op == "hit"))
            assert (got.allowed, got.remaining, got.reset_after_ns, got.retry_after_ns) == (
                want.allowed, want.remaining, want.reset_after_ns, want.retry_after_ns), (op, key)
    return out
