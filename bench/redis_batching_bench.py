"""Auto-batching: checks/s and round trips per check at 1, 16 and 64 threads.

Starts ``redis-server`` on a free 127.0.0.1 port (no persistence; stopped by
PID) and, in one process, runs T threads sharing one backend, each calling
``Limiter.allow`` over 1,000 keys at 1,000,000/hour (every check passes and
writes), for:

* fastlimit ``RedisBackend(url)``: one EVALSHA round trip per check;
* fastlimit ``RedisBackend(url, batch=True)``: concurrent checks coalesced
  into pipelines (:mod:`fastlimit.stores.redis.batching`);
* `limits` ``RedisStorage`` with its fixed window (``hit``), for scale.

Each figure is the median of ``--repeat`` runs; the contenders' runs are
interleaved, so a change in load hits them all alike: read the ratios.
Round trips per check are the backend's own counts (``stats().calls`` for
one round trip per call, ``stats().batches`` batched), over the measured
runs only.  Usage::

    python bench/redis_batching_bench.py [--checks N] [--repeat R] [--threads 1,16,64]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from redis_bench import redis_server

import fastlimit

KEYS = [f"user:{i}" for i in range(1000)]


class Contender:
    """``check(key)`` run by T threads; ``trips()``: round trips so far (or None)."""

    def __init__(self, name: str, check: Callable[[str], Any],
                 trips: Callable[[], int] | None = None) -> None:
        self.name, self.check, self.trips = name, check, trips
        self.rates: dict[int, list[float]] = {}
        self.trip_counts: dict[int, list[float]] = {}

    def run(self, threads: int, checks: int) -> None:
        per = checks // threads
        barrier = threading.Barrier(threads + 1)
        check = self.check

        def work(i: int) -> None:
            keys = KEYS[i % len(KEYS):] + KEYS[:i % len(KEYS)]
            barrier.wait()
            for j in range(per):
                check(keys[j % len(keys)])

        ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        before = self.trips() if self.trips else 0
        barrier.wait()
        t0 = time.perf_counter()
        for t in ts:
            t.join()
        elapsed = time.perf_counter() - t0
        self.rates.setdefault(threads, []).append(per * threads / elapsed)
        if self.trips:
            self.trip_counts.setdefault(threads, []).append(
                (self.trips() - before) / (per * threads))

    def rate(self, threads: int) -> float:
        return statistics.median(self.rates[threads])

    def trips_per_check(self, threads: int) -> float | None:
        if threads not in self.trip_counts:
            return None
        return statistics.median(self.trip_counts[threads])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checks", type=int, default=6000, help="checks per run")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", default="1,16,64")
    ap.add_argument("--redis-server", default=shutil.which("redis-server"))
    a = ap.parse_args()
    if not a.redis_server:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    counts = [int(x) for x in a.threads.split(",")]

    import limits
    import limits.storage
    import limits.strategies

    with redis_server(a.redis_server) as url:
        rate = "1000000/1h"
        # max_connections above the most threads: the unbatched backend is
        # measured for its round trips, not for waiting on its pool
        opts: dict[str, Any] = dict(timeout=10, connect_timeout=10, max_connections=128)
        plain = fastlimit.RedisBackend(url, prefix=f"p{uuid.uuid4().hex[:8]}", **opts)
        batched = fastlimit.RedisBackend(url, prefix=f"b{uuid.uuid4().hex[:8]}", batch=True,
                                         **opts)
        lp = fastlimit.Limiter(rate, store=plain, name="api")
        lb = fastlimit.Limiter(rate, store=batched, name="api")
        storage = limits.storage.RedisStorage(url, max_connections=128)
        fixed = limits.strategies.FixedWindowRateLimiter(storage)
        item = limits.parse("1000000/hour")
        contenders = [
            Contender("fastlimit, one round trip per check", lp.allow,
                      lambda: plain.stats().calls),
            Contender("fastlimit, batch=True", lb.allow, lambda: batched.stats().batches),
            Contender("limits RedisStorage fixed window",
                      lambda k: fixed.hit(item, "api", k)),
        ]
        for c in contenders:  # warm up: connections, script loads
            for n in counts:
                c.run(n, min(a.checks, 640))
            c.rates.clear()
            c.trip_counts.clear()
        for _ in range(a.repeat):
            for n in counts:
                for c in contenders:
                    c.run(n, a.checks)
        for b in (plain, batched):
            assert b.stats().errors == 0, b.stats()

    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"Python {platform.python_version()}, redis-py {redis.__version__}, "
          f"limits {limits.__version__}, {os.cpu_count()} CPUs; "
          f"{a.checks} checks per run, median of {a.repeat}")
    print()
    print("| threads | contender | checks/s | round trips/check | vs one round trip per check "
          "| vs limits fixed |")
    print("|---:|---|---:|---:|---:|---:|")
    for n in counts:
        ref = contenders[0].rate(n)
        lim = contenders[2].rate(n)
        for c in contenders:
            t = c.trips_per_check(n)
            print(f"| {n} | {c.name} | {c.rate(n):,.0f} | "
                  f"{'-' if t is None else f'{t:.3f}'} | {c.rate(n) / ref:.2f}x | "
                  f"{c.rate(n) / lim:.2f}x |")


if __name__ == "__main__":
    main()
