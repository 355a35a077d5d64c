"""Fleet mode on one hot key: a global limit of 20,000/s, 4 hosts.

Starts ``redis-server`` on a free 127.0.0.1 port (no persistence, stopped by
PID), then runs each contender on the same load: 4 host processes, each with
a ``SharedTable`` of its own and ``--workers`` worker processes (fork) that
call ``allow("hot")`` as fast as they can for ``--seconds`` (demand far above
the limit).  Real clocks: every process reads CLOCK_MONOTONIC; Redis its
TIME.  Measured, per contender:

* admitted, and the share of the budget served: admitted / (B + run / T),
  one global GCRA's bound over the run (first to last check, host clock;
  it counts the start, while hosts find the key hot and size their
  leases, and the end: the leases held when the workers stop, and what
  the global bucket gained after the last takes, printed below the
  table for the global contenders); and the steady state: admitted
  from 0.5 s after the start to 0.5 s before the end, over the limit's
  rate for that time;
* Redis round trips per admitted request (client-side counts: the
  backends' ``stats().calls``; one per check for `limits`);
* a check's median and 99th percentile cost, sampled (every 8th call timed
  alone with perf_counter_ns, which adds its own ~60 ns to every figure);
  against the plain ``SharedTable`` check (each host limited on its own
  table: not a global limit, the floor), in the same run.

Contenders: ``FleetBackend`` (default lease = burst / 10), plain
``RedisBackend`` (one EVALSHA per check), `limits` 5.x ``RedisStorage``
with its fixed window (``hit``), and the plain shared table.  Usage::

    python bench/fleet_bench.py [--seconds S] [--workers W] [--burst B]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
import uuid
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _util import redis_server, table  # noqa: E402

LIMIT = 20_000
HOSTS = 4
WARM = 0.5  # seconds: the steady-state share leaves out this much at each end


def make_check(kind: str, url: str, prefix: str, table_name: str, burst: int,
               lease: int | None) -> tuple[Any, Any]:
    """(check function, the object whose stats count round trips)."""
    import fastlimit

    rate = f"{LIMIT}/1s"
    if kind == "fleet":
        t = fastlimit.SharedTable.open(table_name, capacity=4096)
        fleet = fastlimit.FleetBackend(fastlimit.RedisBackend(url, prefix=prefix), t,
                                       lease=lease)
        lim = fastlimit.Limiter(rate, store=fleet, name="global", burst=burst)
        return lim.allow, fleet.redis
    if kind == "redis":
        backend = fastlimit.RedisBackend(url, prefix=prefix)
        lim = fastlimit.Limiter(rate, store=backend, name="global", burst=burst)
        return lim.allow, backend
    if kind == "table":
        t = fastlimit.SharedTable.open(table_name, capacity=4096)
        lim = fastlimit.Limiter(rate, store=t, name="global", burst=burst)
        return lim.allow, None
    if kind == "limits":
        import limits
        import limits.storage
        import limits.strategies

        storage = limits.storage.RedisStorage(url)
        strategy = limits.strategies.FixedWindowRateLimiter(storage)
        item = limits.parse(f"{LIMIT}/second")

        def check(key: str) -> bool:
            return strategy.hit(item, prefix, key)

        return check, None
    raise ValueError(kind)


def worker(kind: str, url: str, prefix: str, table_name: str, burst: int, lease: int | None,
           start: float, seconds: float, out: Any) -> None:
    check, stats_of = make_check(kind, url, prefix, table_name, burst, lease)
    check("warm")  # connections and scripts before the clock starts
    calls0 = stats_of.stats().calls if stats_of is not None else 0
    samples: list[int] = []
    admitted = checks = 0
    clock = time.perf_counter_ns
    while time.monotonic() < start:
        pass
    first = time.monotonic_ns()
    end = start + seconds
    warm, cool = start + WARM, end - WARM
    at_warm = at_cool = None
    while True:
        for _ in range(7):
            admitted += check("hot")
        t0 = clock()
        ok = check("hot")
        samples.append(clock() - t0)
        admitted += ok
        checks += 8
        now = time.monotonic()
        if at_warm is None and now >= warm:
            at_warm = admitted
        if at_cool is None and now >= cool:
            at_cool = admitted
        if now >= end:
            break
    last = time.monotonic_ns()
    calls = (stats_of.stats().calls - calls0) if stats_of is not None else checks
    fleet = getattr(getattr(check, "__self__", None), "fleet", None)
    counts = fleet.stats().__dict__ if fleet is not None else {}
    bucket = None
    if kind in ("fleet", "redis"):
        # the global bucket right after this worker's last check (one peek,
        # after the counts): what it held at the run's end, if this worker
        # made the run's last check, is what accrued after the last takes
        import fastlimit

        peek = fastlimit.Limiter(f"{LIMIT}/1s", store=stats_of, name="global",
                                 burst=burst).peek("hot")
        bucket = (time.monotonic_ns(), peek.remaining)
    out.put((admitted, checks, calls, first, last, samples, counts,
             (at_cool or admitted) - (at_warm or 0), bucket))


def host(kind: str, url: str, prefix: str, index: int, workers: int, burst: int,
         lease: int | None, start: float, seconds: float, out: Any) -> None:
    import fastlimit

    name = f"fleet-bench-{prefix}-{index}"
    t = fastlimit.SharedTable.open(name, capacity=4096) if kind in ("fleet", "table") else None
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=worker, args=(kind, url, prefix, name, burst, lease, start,
                                              seconds, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if t is not None:
        t.close()
        t.unlink()


def run(kind: str, url: str, workers: int, burst: int, lease: int | None,
        seconds: float) -> dict[str, Any]:
    T = -(-10**9 // LIMIT)
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    prefix = f"b{uuid.uuid4().hex[:8]}"
    start = time.monotonic() + 2.0 + 0.3 * workers * HOSTS  # every worker connected by then
    hosts = [ctx.Process(target=host, args=(kind, url, prefix, i, workers, burst, lease,
                                            start, seconds, out)) for i in range(HOSTS)]
    for h in hosts:
        h.start()
    results = [out.get(timeout=120 + seconds) for _ in range(HOSTS * workers)]
    for h in hosts:
        h.join()
    final = max(results, key=lambda r: r[4])  # the run's last check: its worker's reading
    left = None if final[8] is None else max(0, final[8][1] - (final[8][0] - final[4]) // T)
    admitted = sum(r[0] for r in results)
    checks = sum(r[1] for r in results)
    calls = sum(r[2] for r in results)
    first = min(r[3] for r in results)
    last = max(r[4] for r in results)
    samples = sorted(s for r in results for s in r[5])
    bound = burst + (last - first) // T
    steady = sum(r[7] for r in results) / ((seconds - 2 * WARM) * 1e9 / T)
    counts: dict[str, int] = {}
    for r in results:
        for k, v in r[6].items():
            counts[k] = counts.get(k, 0) + v
    return dict(kind=kind, counts=counts, admitted=admitted, steady=steady, checks=checks,
                left=left,
                calls=calls, bound=bound,
                share=admitted / bound, per_admitted=calls / max(admitted, 1),
                median=statistics.median(samples), p99=samples[int(0.99 * len(samples))],
                seconds=(last - first) / 1e9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--workers", type=int, default=2, help="worker processes per host")
    ap.add_argument("--burst", type=int, default=2000)
    ap.add_argument("--lease", type=int, default=None, help="FleetBackend lease (default B/10)")
    ap.add_argument("--only", nargs="*", default=["table", "fleet", "redis", "limits"])
    args = ap.parse_args()
    print(f"# {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs; {HOSTS} hosts x {args.workers} workers, {args.seconds} s "
          f"each; hot key {LIMIT}/s, burst {args.burst}")
    rows = []
    with redis_server() as server:
        res = {kind: run(kind, server.url, args.workers, args.burst, args.lease, args.seconds)
               for kind in args.only}
    base = res.get("table", {}).get("median")
    names = {"table": "SharedTable (per host, no global limit)",
             "fleet": "FleetBackend (global)", "redis": "RedisBackend (global)",
             "limits": "limits RedisStorage fixed window (global)"}
    for kind, r in res.items():
        global_limit = kind != "table"
        rows.append((
            names[kind], f"{r['checks']:,}", f"{r['admitted']:,}",
            f"{r['share']:.1%}" if global_limit else f"({r['share']:.0%}: per host)",
            f"{r['steady']:.1%}" if global_limit else "-",
            f"{r['per_admitted']:.4f}" if kind != "table" else "0",
            f"{r['median']:,.0f}", f"{r['p99']:,.0f}",
            f"{r['median'] / base:.2f}x" if base else "-"))
    print(table(rows, ("contender", "checks", "admitted", "share of budget (run)",
                       f"served / limit, middle (-{WARM} s each end)",
                       "Redis round trips / admitted", "median ns", "p99 ns",
                       "median vs table")))
    for kind, r in res.items():
        if kind != "table":
            print(f"# {kind}: admitted {r['admitted']:,} <= bound {r['bound']:,} over "
                  f"{r['seconds']:.3f} s: {r['admitted'] <= r['bound']}")
            if r["counts"]:
                print(f"#   its counters, all processes: {r['counts']}")
            c = r["counts"]
            if r["left"] is not None and c:
                held = c["taken"] - c["returned"] - (r["admitted"] - c["direct"] - c["cold"])
                print(f"#   the bound's units: admitted {r['admitted']:,}; taken by leases, "
                      f"not served (held at the end) {held:,}; left in Redis at the last "
                      f"check {r['left']:,}; the rest, never taken (the bucket was full) "
                      f"{r['bound'] - r['admitted'] - held - r['left']:,}")


if __name__ == "__main__":
    main()
