"""pytest-benchmark micro-benchmarks of the hot paths (not part of the test
run).  Run: python -m pytest bench/ --benchmark-only"""

import numpy as np
import pytest

import fastlimit


@pytest.fixture(scope="module")
def lim():
    table = fastlimit.SharedTable.anonymous(capacity=100_000)
    lim = fastlimit.Limiter("1000000000/1s", store=table, name="bench")
    yield lim
    table.close()


def test_allow_hot_key(benchmark, lim):
    benchmark(lim.allow, "user:42")


def test_hit_hot_key(benchmark, lim):
    benchmark(lim.hit, "user:42")


def test_peek_hot_key(benchmark, lim):
    benchmark(lim.peek, "user:42")


def test_allow_int_key(benchmark, lim):
    benchmark(lim.allow, 42)


def test_hit_many_10k(benchmark, lim):
    keys = np.arange(10_000, dtype=np.uint64)
    benchmark(lim.hit_many, keys)


def test_limits_memory_fixed_window(benchmark):
    limits = pytest.importorskip("limits")
    strategy = limits.strategies.FixedWindowRateLimiter(limits.storage.MemoryStorage())
    item = limits.parse("1000000000/second")
    benchmark(strategy.hit, item, "user:42")
