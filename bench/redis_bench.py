"""Checks per second against one real redis-server, for fastlimit and peers.

Starts ``redis-server`` on a free 127.0.0.1 port (no persistence), runs every
contender against it in one process, one check at a time, and stops the
server by PID.  Prints checks per second (median of ``--repeat`` runs) and
ratios; ratios hold on a noisy machine, absolute figures do not.  Measured:

* the floor: redis-py ``PING`` and ``INCR`` round trips;
* fastlimit ``RedisBackend``: ``Limiter.allow`` and ``Limiter.hit`` (one
  EVALSHA each, server TIME), and ``hit_many`` over 1,000 keys per call, all with ``batch=False``;
  ``allow`` on ``RedisBackend(url, batch=True)`` too, whose lone calls go
  one EVALSHA per round trip, packed and parsed by the batcher;
* `limits` 5.x ``RedisStorage`` with its fixed-window and moving-window
  strategies (``hit``);
* `throttled-py` ``RedisStore`` with its GCRA (``Throttled.limit``);
* a hot key over its limit, hammered: fastlimit without and with the local
  deny cache (two tiers), against the peers on the same denied key;
* fastlimit on a ``SharedTable``, no Redis, for scale.

The allowed workloads spread checks over 1,000 keys at 1000/hour, so every
check passes and writes.  Usage::

    python bench/redis_bench.py [--checks N] [--repeat R] [--redis-server PATH]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

import fastlimit

KEYS = [f"user:{i}" for i in range(1000)]


@contextmanager
def redis_server(binary: str) -> Iterator[str]:
    """A redis-server on a free loopback port; yields its URL, then stops it by PID."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            client = redis.Redis(host="127.0.0.1", port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.01)
            client.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


class Contender:
    """One thing to measure: ``fn()`` handles ``per_call`` checks; a run is
    ``checks // per_call`` calls."""

    def __init__(self, name: str, fn: Callable[[], Any], checks: int, per_call: int = 1):
        self.name, self.fn, self.per_call = name, fn, per_call
        self.calls = max(1, checks // per_call)
        self.runs: list[float] = []

    def run(self) -> None:
        fn = self.fn
        t0 = time.perf_counter()
        for _ in range(self.calls):
            fn()
        self.runs.append(self.calls * self.per_call / (time.perf_counter() - t0))

    @property
    def rate(self) -> float:
        """Median checks per second."""
        return statistics.median(self.runs)


def measure(contenders: list[Contender], repeat: int) -> dict[str, float]:
    """Checks per second of each, its runs interleaved with the others' so
    that a change in the machine's load hits them all alike."""
    for c in contenders:
        for _ in range(min(200, c.calls)):  # warm up: connections, script loads
            c.fn()
    for _ in range(repeat):
        for c in contenders:
            c.run()
    return {c.name: c.rate for c in contenders}


def cycling(fn: Callable[[str], Any]) -> Callable[[], Any]:
    """``fn`` over KEYS in turn, as a no-argument call."""
    it = iter(range(1 << 62))
    n = len(KEYS)
    return lambda: fn(KEYS[next(it) % n])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checks", type=int, default=4000, help="checks per run (default 4000)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per figure (median)")
    ap.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    args = ap.parse_args(argv)

    import limits
    import limits.storage
    import limits.strategies
    import throttled

    n, r = args.checks, args.repeat
    with redis_server(args.redis_server) as url:
        raw = redis.Redis.from_url(url)
        version = raw.info("server")["redis_version"]
        backend = fastlimit.RedisBackend(url, prefix="bench", timeout=5, batch=False)
        allow = fastlimit.Limiter("1000/1h", store=backend, name="allow").allow
        batched = fastlimit.RedisBackend(url, prefix="bench-b", timeout=5, batch=True)
        allow_b = fastlimit.Limiter("1000/1h", store=batched, name="allow").allow
        hit = fastlimit.Limiter("1000/1h", store=backend, name="hit").hit
        many = fastlimit.Limiter("1000000/1h", store=backend, name="many").hit_many
        storage = limits.storage.RedisStorage(url)
        item = limits.parse("1000/hour")
        fixed = limits.strategies.FixedWindowRateLimiter(storage)
        moving = limits.strategies.MovingWindowRateLimiter(storage)
        store = throttled.RedisStore(server=url)
        gcra = throttled.Throttled(using="gcra", quota=throttled.per_hour(1000), store=store)
        rows = measure([
            Contender("redis-py PING (round-trip floor)", raw.ping, n),
            Contender("redis-py INCR", cycling(raw.incr), n),
            Contender("fastlimit RedisBackend allow()", cycling(allow), n),
            Contender("fastlimit RedisBackend(batch=True) allow()", cycling(allow_b), n),
            Contender("fastlimit RedisBackend hit()", cycling(hit), n),
            Contender("fastlimit RedisBackend hit_many(1000 keys)", lambda: many(KEYS), n * 10,
                      per_call=len(KEYS)),
            Contender("limits RedisStorage fixed window",
                      cycling(lambda k: fixed.hit(item, "fixed", k)), n),
            Contender("limits RedisStorage moving window",
                      cycling(lambda k: moving.hit(item, "moving", k)), n),
            Contender("throttled-py RedisStore GCRA", cycling(gcra.limit), n),
        ], r)

        # one key over its limit, hammered: every check is a denial
        hot = fastlimit.Limiter("10/1h", store=backend, name="hot")
        while hot.allow("hot"):
            pass
        cache = fastlimit.SharedTable.anonymous(capacity=1024)
        two_tier = fastlimit.RedisBackend(url, prefix="bench", timeout=5, deny_cache=cache)
        hot2 = fastlimit.Limiter("10/1h", store=two_tier, name="hot")
        few = limits.parse("10/hour")
        gcra_few = throttled.Throttled(using="gcra", quota=throttled.per_hour(10), store=store)
        denied_rows = measure([
            Contender("fastlimit RedisBackend, denied key", lambda: hot.allow("hot"), n),
            Contender("fastlimit RedisBackend + deny cache, denied key",
                      lambda: hot2.allow("hot"), n * 50),
            Contender("limits fixed window, denied key", lambda: fixed.hit(few, "hot", "hot"), n),
            Contender("throttled-py GCRA, denied key", lambda: gcra_few.limit("hot"), n),
        ], r)
        assert two_tier.stats().calls <= 1, "the deny cache should answer every check"
        raw.close()

    table = fastlimit.SharedTable.anonymous(capacity=4096)
    local = fastlimit.Limiter("1000/1h", store=table, name="local")
    local_rate = measure([Contender("local", cycling(local.allow), n * 100)], r)["local"]

    print(f"# fastlimit Redis benchmark, {datetime.date.today().isoformat()}")
    print(f"# redis-server {version} on 127.0.0.1, Python {platform.python_version()}, "
          f"redis-py {redis.__version__}, limits {limits.__version__}, "
          f"throttled-py {'.'.join(map(str, throttled.VERSION))}, {os.cpu_count()} CPUs")
    print(f"# command: python bench/redis_bench.py --checks {n} --repeat {r}")
    ref = rows["limits RedisStorage fixed window"]
    tref = rows["throttled-py RedisStore GCRA"]
    print()
    print("| allowed checks, 1,000 keys | checks/s | µs/check | vs limits fixed | "
          "vs throttled GCRA |")
    print("|---|---:|---:|---:|---:|")
    for name, v in rows.items():
        print(f"| {name} | {v:,.0f} | {1e6 / v:.1f} | {v / ref:.2f}x | {v / tref:.2f}x |")
    dref = denied_rows["fastlimit RedisBackend, denied key"]
    print()
    print("| one key over its limit | checks/s | µs/check | vs fastlimit without cache |")
    print("|---|---:|---:|---:|")
    for name, v in denied_rows.items():
        print(f"| {name} | {v:,.0f} | {1e6 / v:.2f} | {v / dref:.2f}x |")
    print()
    print(f"For scale: fastlimit SharedTable allow(), no Redis: {local_rate:,.0f} checks/s "
          f"({1e9 / local_rate:.0f} ns/check).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
