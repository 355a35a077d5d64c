"""Auto-batching: checks/s and round trips per check at 1, 16 and 64 clients,
threads and coroutines, against limits and throttled-py in the same run.

Starts ``redis-server`` on a free 127.0.0.1 port (no persistence; stopped by
PID) and, in one process, runs C clients sharing one backend, each checking
keys over 1,000 at 1,000,000/hour (every check passes and writes):

* threads: fastlimit ``RedisBackend(url, batch=False)`` (one EVALSHA round trip per
  check) and ``RedisBackend(url, batch=True)``
  (:mod:`fastlimit.stores.redis.batching`), `limits` ``RedisStorage`` with
  its fixed window (``hit``) and `throttled-py` ``RedisStore`` with its GCRA
  (``Throttled.limit``);
* coroutines on one event loop: fastlimit ``AsyncRedisBackend(url, batch=False)`` and
  ``AsyncRedisBackend(url, batch=True)``, `limits` ``limits.aio``
  ``RedisStorage`` (redis.asyncio) fixed window, `throttled-py`
  ``throttled.asyncio`` ``RedisStore`` GCRA.

Each figure is the median of ``--repeat`` runs; the contenders' runs are
interleaved, so a change in load hits them all alike: read the ratios.
Round trips per check are fastlimit's own counts (``stats().calls`` for one
round trip per call, ``stats().batches`` batched) over the measured runs
only; every pool holds more connections than there are clients.  Usage::

    python bench/redis_batching_bench.py [--checks N] [--repeat R] [--clients 1,16,64]
        [--modes threads,coroutines]

With hiredis importable, redis-py parses with it (limits, throttled-py and
unbatched fastlimit use redis-py's parser; batched fastlimit parses its
replies itself): the header says which.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import shutil
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.utils
from redis_bench import redis_server

import fastlimit
from fastlimit.stores.redis import AsyncRedisBackend

KEYS = [f"user:{i}" for i in range(1000)]
RATE = "1000000/1h"
POOL = 128  # connections per pool: more than the most clients


class Contender:
    """``check(key)`` run by C clients; ``trips()``: round trips so far (or None)."""

    def __init__(self, name: str, check: Callable[[str], Any],
                 trips: Callable[[], int] | None = None) -> None:
        self.name, self.check, self.trips = name, check, trips
        self.rates: dict[int, list[float]] = {}
        self.trip_counts: dict[int, list[float]] = {}

    def record(self, clients: int, checks: int, elapsed: float, before: int) -> None:
        self.rates.setdefault(clients, []).append(checks / elapsed)
        if self.trips:
            self.trip_counts.setdefault(clients, []).append((self.trips() - before) / checks)

    def rate(self, clients: int) -> float:
        return statistics.median(self.rates[clients])

    def trips_per_check(self, clients: int) -> float | None:
        if clients not in self.trip_counts:
            return None
        return statistics.median(self.trip_counts[clients])

    def clear(self) -> None:
        self.rates.clear()
        self.trip_counts.clear()

    def run(self, clients: int, checks: int, loop: asyncio.AbstractEventLoop) -> None:
        raise NotImplementedError


class Threads(Contender):
    def run(self, clients: int, checks: int, loop: asyncio.AbstractEventLoop) -> None:
        per = checks // clients
        barrier = threading.Barrier(clients + 1)
        check = self.check

        def work(i: int) -> None:
            keys = KEYS[i % len(KEYS):] + KEYS[:i % len(KEYS)]
            barrier.wait()
            for j in range(per):
                check(keys[j % len(keys)])

        ts = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
        for t in ts:
            t.start()
        before = self.trips() if self.trips else 0
        barrier.wait()
        t0 = time.perf_counter()
        for t in ts:
            t.join()
        self.record(clients, per * clients, time.perf_counter() - t0, before)


class Coroutines(Contender):
    check: Callable[[str], Awaitable[Any]]  # type: ignore[assignment]

    def run(self, clients: int, checks: int, loop: asyncio.AbstractEventLoop) -> None:
        per = checks // clients
        check = self.check

        async def work(i: int) -> None:
            keys = KEYS[i % len(KEYS):] + KEYS[:i % len(KEYS)]
            for j in range(per):
                await check(keys[j % len(keys)])

        async def all_of_them() -> None:
            before = self.trips() if self.trips else 0
            t0 = time.perf_counter()
            await asyncio.gather(*[work(i) for i in range(clients)])
            self.record(clients, per * clients, time.perf_counter() - t0, before)

        loop.run_until_complete(all_of_them())


def thread_contenders(url: str) -> tuple[list[Contender], list[Any]]:
    import limits
    import limits.storage
    import limits.strategies
    import throttled

    opts: dict[str, Any] = dict(timeout=10, connect_timeout=10, max_connections=POOL)
    plain = fastlimit.RedisBackend(url, prefix=f"p{uuid.uuid4().hex[:8]}", batch=False, **opts)
    batched = fastlimit.RedisBackend(url, prefix=f"b{uuid.uuid4().hex[:8]}", batch=True, **opts)
    lp = fastlimit.Limiter(RATE, store=plain, name="api")
    lb = fastlimit.Limiter(RATE, store=batched, name="api")
    storage = limits.storage.RedisStorage(url, max_connections=POOL)
    fixed = limits.strategies.FixedWindowRateLimiter(storage)
    item = limits.parse("1000000/hour")
    store = throttled.RedisStore(
        server=url, options={"CONNECTION_POOL_KWARGS": {"max_connections": POOL}})
    gcra = throttled.Throttled(using="gcra", quota=throttled.per_hour(1_000_000), store=store)
    return [
        Threads("fastlimit, one round trip per check", lp.allow, lambda: plain.stats().calls),
        Threads("fastlimit, batch=True", lb.allow, lambda: batched.stats().batches),
        Threads("limits RedisStorage fixed window", lambda k: fixed.hit(item, "api", k)),
        Threads("throttled-py RedisStore GCRA", lambda k: gcra.limit(k)),
    ], [plain, batched]


def coroutine_contenders(url: str, loop: asyncio.AbstractEventLoop
                         ) -> tuple[list[Contender], list[Any]]:
    import limits
    import limits.aio.storage
    import limits.aio.strategies
    import throttled.asyncio as athrottled

    async def make() -> tuple[list[Contender], list[Any]]:
        opts: dict[str, Any] = dict(timeout=10, connect_timeout=10, max_connections=POOL)
        plain = AsyncRedisBackend(url, prefix=f"ap{uuid.uuid4().hex[:8]}", batch=False, **opts)
        batched = AsyncRedisBackend(url, prefix=f"ab{uuid.uuid4().hex[:8]}", batch=True, **opts)
        lp = plain.limiter(RATE, name="api")
        lb = batched.limiter(RATE, name="api")
        storage = limits.aio.storage.RedisStorage(
            "async+" + url, implementation="redispy", max_connections=POOL)
        fixed = limits.aio.strategies.FixedWindowRateLimiter(storage)
        item = limits.parse("1000000/hour")
        store = athrottled.RedisStore(
            server=url, options={"CONNECTION_POOL_KWARGS": {"max_connections": POOL}})
        gcra = athrottled.Throttled(using="gcra", quota=athrottled.per_hour(1_000_000),
                                    store=store)
        return [
            Coroutines("fastlimit async, one round trip per check", lp.allow,
                       lambda: plain.stats().calls),
            Coroutines("fastlimit async, batch=True", lb.allow, lambda: batched.stats().batches),
            Coroutines("limits aio RedisStorage fixed window",
                       lambda k: fixed.hit(item, "api", k)),
            Coroutines("throttled-py asyncio RedisStore GCRA", lambda k: gcra.limit(k)),
        ], [plain, batched]

    return loop.run_until_complete(make())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checks", type=int, default=6000, help="checks per run")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--clients", default="1,16,64")
    ap.add_argument("--modes", default="threads,coroutines")
    ap.add_argument("--redis-server", default=shutil.which("redis-server"))
    a = ap.parse_args()
    if not a.redis_server:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    counts = [int(x) for x in a.clients.split(",")]
    modes = a.modes.split(",")

    import limits
    import throttled

    loop = asyncio.new_event_loop()
    tables: list[tuple[str, list[Contender]]] = []
    with redis_server(a.redis_server) as url:
        backends: list[Any] = []
        if "threads" in modes:
            cs, bs = thread_contenders(url)
            tables.append(("threads", cs))
            backends += bs
        if "coroutines" in modes:
            cs, bs = coroutine_contenders(url, loop)
            tables.append(("coroutines", cs))
            backends += bs
        everyone = [c for _m, cs in tables for c in cs]
        for c in everyone:  # warm up: connections, script loads
            for n in counts:
                c.run(n, min(a.checks, 640), loop)
            c.clear()
        for _ in range(a.repeat):
            for n in counts:
                for c in everyone:
                    c.run(n, a.checks, loop)
        for b in backends:
            assert b.stats().errors == 0, b.stats()
        version = redis.Redis.from_url(url).info("server")["redis_version"]
    loop.close()

    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"redis-server {version}, Python {platform.python_version()}, "
          f"redis-py {redis.__version__} "
          f"({'with' if redis.utils.HIREDIS_AVAILABLE else 'without'} hiredis), "
          f"limits {limits.__version__}, throttled-py {'.'.join(map(str, throttled.VERSION))}, "
          f"{os.cpu_count()} CPUs; {a.checks} checks per run, median of {a.repeat}")
    for mode, cs in tables:
        print()
        print(f"| {mode} | contender | checks/s | round trips/check | "
              "vs one round trip per check | vs limits fixed |")
        print("|---:|---|---:|---:|---:|---:|")
        for n in counts:
            ref = cs[0].rate(n)
            lim = cs[2].rate(n)
            for c in cs:
                t = c.trips_per_check(n)
                print(f"| {n} | {c.name} | {c.rate(n):,.0f} | "
                      f"{'-' if t is None else f'{t:.3f}'} | {c.rate(n) / ref:.2f}x | "
                      f"{c.rate(n) / lim:.2f}x |")


if __name__ == "__main__":
    main()
