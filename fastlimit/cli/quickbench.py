"""``fastlimit bench``: a few seconds of measurement on this machine.

Figures are medians of five passes; the reference is an in-process GCRA in
pure Python over a dict (what one would write by hand, shared with no other
process), and ``limits``' in-memory fixed window when it is installed.  The
full benchmark, with the C baseline and process scaling, is bench/core_bench.py.
"""

from __future__ import annotations

import collections
import statistics
import time
from collections.abc import Callable
from typing import Any, TextIO

import numpy as np

from fastlimit.limiters.limiter import Limiter
from fastlimit.stores.table import SharedTable

__all__ = ["print_results", "run"]


def _ns_per_call(fn: Callable[[Any], Any], keys: list[Any], repeat: int = 5) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        collections.deque(map(fn, keys), maxlen=0)  # drives the calls from C
        runs.append((time.perf_counter_ns() - t0) / len(keys))
    return statistics.median(runs)


class _DictGcra:
    """GCRA over a dict, in Python: the reference."""

    def __init__(self, emission_interval_ns: int, burst: int) -> None:
        self.t, self.tau = emission_interval_ns, emission_interval_ns * burst
        self.state: dict[Any, int] = {}

    def allow(self, key: Any) -> bool:
        now = time.monotonic_ns()
        tat = max(self.state.get(key, now), now) + self.t
        if tat - now > self.tau:
            return False
        self.state[key] = tat
        return True


def run(nkeys: int = 1_000_000) -> dict[str, Any]:
    """Measure; returns plain data (ns per call, ratios)."""
    rate = "1000000000/1s"  # never denies: every call does the full update
    hot = ["alice", "bob", "carol", "dave"] * 25_000
    rng = np.random.default_rng(1)
    ints = rng.permutation(nkeys).astype(np.int64)
    out: dict[str, Any] = {"keys": nkeys}
    with SharedTable.anonymous(capacity=nkeys) as table:
        lim = Limiter(rate, table, name="bench")
        out["allow_hot_ns"] = _ns_per_call(lim.allow, hot)
        out["hit_hot_ns"] = _ns_per_call(lim.hit, hot)
        lim.hit_many(ints)
        sample = ints[: min(nkeys, 200_000)].tolist()
        out["allow_live_keys_ns"] = _ns_per_call(lim.allow, sample)
        runs = []
        for _ in range(5):
            t0 = time.perf_counter_ns()
            lim.hit_many(ints)
            runs.append((time.perf_counter_ns() - t0) / nkeys)
        out["hit_many_ns_per_key"] = statistics.median(runs)
        out["table_bytes_per_key"] = table.stats().bytes_per_key
    ref = _DictGcra(1, 1_000_000_000)
    out["python_dict_gcra_hot_ns"] = _ns_per_call(ref.allow, hot)
    out["vs_python_dict_gcra"] = out["python_dict_gcra_hot_ns"] / out["allow_hot_ns"]
    try:
        from limits import parse, storage, strategies
    except ImportError:
        out["limits_fixed_window_hot_ns"] = None
    else:
        item = parse("1000000000/second")
        hit = strategies.FixedWindowRateLimiter(storage.MemoryStorage()).hit
        out["limits_fixed_window_hot_ns"] = _ns_per_call(lambda k: hit(item, k), hot)
        out["vs_limits_fixed_window"] = out["limits_fixed_window_hot_ns"] / out["allow_hot_ns"]
    return out


def print_results(r: dict[str, Any], out: TextIO) -> None:
    rows = [
        ("allow, 4 hot keys", f"{r['allow_hot_ns']:.0f} ns"),
        ("hit (a Decision), 4 hot keys", f"{r['hit_hot_ns']:.0f} ns"),
        (f"allow, {r['keys']:,} live keys", f"{r['allow_live_keys_ns']:.0f} ns"),
        (f"hit_many, {r['keys']:,} keys", f"{r['hit_many_ns_per_key']:.1f} ns per key"),
        ("table memory", f"{r['table_bytes_per_key']:.1f} bytes per key"),
        ("GCRA over a dict in Python (one process only)",
         f"{r['python_dict_gcra_hot_ns']:.0f} ns: allow is {r['vs_python_dict_gcra']:.1f}x faster"),
    ]
    if r.get("limits_fixed_window_hot_ns"):
        rows.append(("`limits` in-memory fixed window",
                     f"{r['limits_fixed_window_hot_ns']:.0f} ns: allow is "
                     f"{r['vs_limits_fixed_window']:.1f}x faster"))
    width = max(len(a) for a, _ in rows)
    print("fastlimit quick benchmark (medians of 5 passes; full one: bench/core_bench.py)",
          file=out)
    for a, b in rows:
        print(f"  {a:<{width}}  {b}", file=out)
