"""A Policy's requests on Redis: one script call per request against the
limit-by-limit path (a call per rate, quota and lease, and the refunds and
releases a denial needs), in the same run.

Starts its own redis-server on a free 127.0.0.1 port (stopped by PID).
Both contenders are the same policy on the same backend; the limit-by-limit
one has the one-call path switched off (``policy._plan.remote = None``),
which is how every request was counted before.  (A request of one limit
and no lease takes its limit's own script on both: it is one call either
way.)  Requests/s is the median
of ``--repeat`` interleaved runs; calls per request are the backend's own
count (``stats().calls``).

    .venv/bin/python bench/redis_policy_bench.py --requests 2000 --repeat 7
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable

from _util import redis_server, table

from fastlimit import Identity, Policy, RedisBackend

POLICY = {
    "policy": {"name": "bench"},
    "identities": {"api_key": {"name": "api", "rate": "tier"},
                   "session": {"rate": "1000000/1h"},
                   "anonymous": {"rate": "900000/1h"}},
    "tiers": {"PRO": {"requests_per_minute": 10_000_000, "concurrency": {"uploads": 1000},
                      "quotas": {"ai": "1/month"}}},
    "quotas": {"ai": {"match": "POST /ai"}},
    "concurrency": {"uploads": {"match": "POST /upload"}},
    "routes": {"login": {"match": "POST /login", "rate": "1000000/1h", "per": "ip"}},
}

KEY = Identity("api_key", "k1", "PRO")
SESSION = Identity("session", "s1")
# (what, method, path, identity): every one passes, but the quota one,
# which the first request uses up: each later one is a quota denial
REQUESTS = [
    ("one limit (GET /, session)", "GET", "/", SESSION),
    ("two limits (POST /login: session + per-IP login)", "POST", "/login", SESSION),
    ("rate + lease, then release (POST /upload)", "POST", "/upload", KEY),
    ("quota denial (POST /ai, quota used up)", "POST", "/ai", KEY),
]


def run(policy: Policy, backend: RedisBackend, method: str, path: str, who: Identity,
        n: int, ips: list[str]) -> tuple[float, float]:
    calls = backend.stats().calls
    start = time.perf_counter()
    for i in range(n):
        d = policy.hit(method, path, who, ips[i % len(ips)])
        if d.holding:
            d.release()
    elapsed = time.perf_counter() - start
    return n / elapsed, (backend.stats().calls - calls) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    ips = [f"203.0.113.{i}" for i in range(1, 200)]
    with redis_server() as server:
        backend = RedisBackend(server.url, prefix=f"b{uuid.uuid4().hex[:8]}")
        one_call = Policy.from_dict(POLICY, store=backend)
        by_limit = Policy.from_dict(POLICY, store=backend)
        by_limit._plan.remote = None  # the limit-by-limit path
        one_call.hit("POST", "/ai", KEY, ips[0])  # the quota used up
        contenders: list[tuple[str, Policy]] = [("one call", one_call),
                                                ("limit by limit", by_limit)]
        rows = []
        for what, method, path, who in REQUESTS:
            rates: dict[str, list[float]] = {name: [] for name, _ in contenders}
            calls: dict[str, float] = {}
            for turn in range(args.repeat):
                # taking turns at going first: the machine's drift hits both alike
                for name, policy in contenders[turn % 2:] + contenders[:turn % 2]:
                    r, c = run(policy, backend, method, path, who, args.requests, ips)
                    rates[name].append(r)
                    calls[name] = c
            base = statistics.median(rates["limit by limit"])
            for name, _ in contenders:
                med = statistics.median(rates[name])
                rows.append((what, name, f"{med:,.0f}", f"{calls[name]:.2f}",
                             f"{med / base:.2f}x"))
        backend.close()
    show: Callable[..., str] = table
    print(show(rows, ("request", "path", "requests/s", "calls/request", "vs limit by limit")))


if __name__ == "__main__":
    main()
